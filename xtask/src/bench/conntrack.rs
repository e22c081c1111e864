//! A big node's conntrack table for the bench: a network namespace of its own whose table is
//! filled with `entries` entries through ctnetlink (`IPCTNL_MSG_CT_NEW`), `nf_conntrack_max`
//! raised to hold them (the host's limit, put back afterwards). tcptrace finds the namespace
//! at start and looks every flow that ends up in it (misses, as on a node whose table does
//! not hold the flow): what those lookups cost with a table of that size.
use std::{
    fs::{self, File},
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const NETNS: &str = "tcptrace-bench-ct";
const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

pub struct FilledTable {
    max_before: String,
}

impl FilledTable {
    pub fn new(entries: u32) -> Result<FilledTable> {
        let max_before = fs::read_to_string(MAX).context("reading nf_conntrack_max")?;
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(std::process::Stdio::null())
            .status();
        let status = Command::new("ip").args(["netns", "add", NETNS]).status()?;
        if !status.success() {
            bail!("ip netns add {NETNS} failed");
        }
        let table = FilledTable { max_before };
        let wanted = u64::from(entries) + 100_000;
        let current: u64 = table.max_before.trim().parse().unwrap_or(0);
        if current < wanted {
            fs::write(MAX, wanted.to_string()).context("raising nf_conntrack_max")?;
        }
        let path = format!("/run/netns/{NETNS}");
        let inserted = std::thread::spawn(move || -> Result<u32> {
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("entering the namespace");
            }
            fill(entries)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the filling thread panicked"))??;
        eprintln!("xtask bench: conntrack table of netns {NETNS} holds {inserted} entries");
        Ok(table)
    }
}

impl Drop for FilledTable {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
        let _ = fs::write(MAX, &self.max_before);
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let mut members = Vec::new();
    inner(&mut members);
    attr(buf, kind | 0x8000, &members);
}

/// One `CTA_TUPLE_*`: TCP from `src:sport` to `dst:dport`.
fn tuple(buf: &mut Vec<u8>, kind: u16, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) {
    nested(buf, kind, |t| {
        nested(t, 1, |ip| {
            attr(ip, 1, &src.octets());
            attr(ip, 2, &dst.octets());
        });
        nested(t, 2, |p| {
            attr(p, 1, &[6]);
            attr(p, 2, &sport.to_be_bytes());
            attr(p, 3, &dport.to_be_bytes());
        });
    });
}

/// A `IPCTNL_MSG_CT_NEW` for entry `i`: 10.99.x.y:sport to 10.98.0.1:80, 600 s to live.
fn new_entry(i: u32, seq: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(0x0a63_0000 | (i >> 12));
    let sport = 20_000 + (i & 0xfff) as u16;
    let dst = Ipv4Addr::new(10, 98, 0, 1);
    let mut body = Vec::new();
    tuple(&mut body, 1, src, sport, dst, 80);
    tuple(&mut body, 2, dst, 80, src, sport);
    attr(&mut body, 7, &600u32.to_be_bytes()); // CTA_TIMEOUT
    let len = 20 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&(1u16 << 8).to_ne_bytes()); // CTNETLINK, NEW
                                                       // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    msg.extend_from_slice(&(0x1u16 | 0x4 | 0x200 | 0x400).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    msg.extend_from_slice(&body);
    msg
}

/// Inserts `entries` entries in the calling thread's namespace, a batch of requests and then
/// their acknowledgements at a time.
fn fill(entries: u32) -> Result<u32> {
    // SAFETY: a plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a ctnetlink socket");
    }
    // SAFETY: a fresh descriptor, owned from here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    const BATCH: u32 = 128;
    let mut inserted = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut i = 0;
    while i < entries {
        let n = BATCH.min(entries - i);
        for k in 0..n {
            let msg = new_entry(i + k, i + k);
            // SAFETY: a send of our buffer on our socket (the kernel is the default peer).
            if unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
                return Err(io::Error::last_os_error()).context("ctnetlink send");
            }
        }
        let mut acked = 0;
        while acked < n {
            // SAFETY: a receive into our buffer.
            let got =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                return Err(io::Error::last_os_error()).context("ctnetlink receive");
            }
            let mut at = 0;
            while at + 20 <= got as usize {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                if code == 0 {
                    inserted += 1;
                } else if -code != libc::EEXIST {
                    let e = io::Error::from_raw_os_error(-code);
                    bail!("inserting conntrack entry {}: {e}", i + acked);
                }
                acked += 1;
                at += len.max(20).next_multiple_of(4);
            }
        }
        i += n;
    }
    Ok(inserted)
}
