//! TCP sockets as sock_diag (netlink, what `ss` uses) reports them, through the rust-netlink
//! crates: state, timer and its remaining time, `tcp_info` idle times, inode.
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{
        nlas::Nla, ExtensionFlags, InetRequest, InetResponseBuffer, SocketId, StateFlags, Timer,
    },
    SockDiagMessage,
};
use netlink_packet_utils::nla::Nla as _;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::model::tcp::{Endpoint, FlowAddrs};

/// Bytes of the netlink header before a sock_diag response.
const NETLINK_HEADER_LEN: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub addrs: FlowAddrs,
    /// The kernel's TCP state number.
    pub state: u8,
    pub keepalive_armed: bool,
    /// The socket's pending timer fires in this long (for TIME_WAIT: its remaining time).
    pub expires: Duration,
    /// Time since data last went either way (from `tcp_info`, when asked for).
    pub idle: Option<Duration>,
    /// The smoothed RTT (µs, `tcp_info`'s `tcpi_rtt`, when asked for and sampled).
    pub rtt_us: Option<u32>,
    pub inode: u32,
    /// For a listener: connections waiting in its accept queue, and its backlog (`ss -lt`'s
    /// Recv-Q and Send-Q).
    pub recv_queue: u32,
    pub send_queue: u32,
    /// Packets the socket dropped (`sk_drops`: for a listener, the handshakes it dropped),
    /// when asked for.
    pub drops: Option<u32>,
    /// The socket's cgroup (v2) id (`INET_DIAG_CGROUP_ID`, Linux 5.7+); 0: not said.
    pub cgroup: u64,
}

/// `INET_DIAG_CGROUP_ID`: the kernel puts it in every full socket's answer.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// A sock_diag socket of the calling thread's namespace.
fn open() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    Ok(socket)
}

/// Sends one request (a dump with `NLM_F_DUMP`, else an exact lookup).
fn send(socket: &Socket, request: InetRequest, flags: u16) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;
    Ok(())
}

fn dump_family(
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
) -> Result<Vec<DiagSocket>> {
    let socket = open()?;
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions,
        states,
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    };
    send(&socket, request, NLM_F_REQUEST | NLM_F_DUMP)?;

    let mut sockets = Vec::new();
    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .context("reading sock_diag")?;
        if parse_batch(&receive[..size], &mut sockets)? {
            return Ok(sockets);
        }
    }
}

/// The sock_diag messages of one receive buffer: sockets are appended; true once the dump's
/// final message came. Whatever the bytes: an error, never a panic.
pub fn parse_batch(receive: &[u8], sockets: &mut Vec<DiagSocket>) -> Result<bool> {
    let size = receive.len();
    let mut offset = 0;
    while offset < size {
        let bytes = &receive[offset..size];
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| anyhow!("undecodable sock_diag message: {e}"))?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                let code = e.code.map_or(0, |c| -c.get());
                if code == libc::ENOENT {
                    bail!(
                        "sock_diag has no TCP support in this kernel: the tcp_diag module \
                         is not loaded (modprobe tcp_diag)"
                    );
                }
                bail!(
                    "sock_diag refused the dump: {}",
                    std::io::Error::from_raw_os_error(code)
                )
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                // The parsed timer keeps no time for TIME_WAIT: read idiag_expires (ms)
                // from the crate's view of the raw response.
                let expires_ms = bytes
                    .get(NETLINK_HEADER_LEN..length)
                    .and_then(|raw| InetResponseBuffer::new_checked(raw).ok())
                    .map_or(0, |raw| raw.expires());
                let id = &response.header.socket_id;
                sockets.push(DiagSocket {
                    addrs: FlowAddrs {
                        local: Endpoint::new(id.source_address, id.source_port),
                        remote: Endpoint::new(id.destination_address, id.destination_port),
                    },
                    state: response.header.state,
                    keepalive_armed: matches!(response.header.timer, Some(Timer::KeepAlive(_))),
                    expires: Duration::from_millis(u64::from(expires_ms)),
                    idle: response.nlas.iter().find_map(|nla| match nla {
                        Nla::TcpInfo(i) => Some(Duration::from_millis(u64::from(
                            i.last_data_recv.min(i.last_data_sent),
                        ))),
                        _ => None,
                    }),
                    rtt_us: response.nlas.iter().find_map(|nla| match nla {
                        Nla::TcpInfo(i) if i.rtt > 0 => Some(i.rtt),
                        _ => None,
                    }),
                    inode: response.header.inode,
                    recv_queue: response.header.recv_queue,
                    send_queue: response.header.send_queue,
                    drops: response.nlas.iter().find_map(|nla| match nla {
                        Nla::MemInfo(m) => Some(m.drops),
                        _ => None,
                    }),
                    cgroup: response
                        .nlas
                        .iter()
                        .find_map(|nla| match nla {
                            // A u64; anything else is not what the kernel sends.
                            Nla::Other(other)
                                if other.kind() == INET_DIAG_CGROUP_ID
                                    && other.value_len() == 8 =>
                            {
                                let mut value = [0u8; 8];
                                other.emit_value(&mut value);
                                Some(u64::from_ne_bytes(value))
                            }
                            _ => None,
                        })
                        .unwrap_or(0),
                });
            }
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(false)
}

/// TCP sockets in `states`, IPv4 and IPv6, in tcptrace's network namespace.
pub fn dump(states: StateFlags, info: bool) -> Result<Vec<DiagSocket>> {
    let extensions = if info {
        ExtensionFlags::INFO
    } else {
        ExtensionFlags::empty()
    };
    let mut sockets = dump_family(AF_INET, states, extensions)?;
    sockets.extend(dump_family(AF_INET6, states, extensions)?);
    Ok(sockets)
}

/// ESTABLISHED sockets with their `tcp_info` (RTT, idle times).
pub fn established_with_info() -> Result<Vec<DiagSocket>> {
    dump(StateFlags::ESTABLISHED, true)
}

/// Listening sockets with their accept queue, backlog and drops (`ss -ltm`).
pub fn listeners() -> Result<Vec<DiagSocket>> {
    let mut sockets = dump_family(AF_INET, StateFlags::LISTEN, ExtensionFlags::SKMEMINFO)?;
    sockets.extend(dump_family(
        AF_INET6,
        StateFlags::LISTEN,
        ExtensionFlags::SKMEMINFO,
    )?);
    Ok(sockets)
}

/// Open TCP sockets (every state a full socket can hold, listeners included; not TIME_WAIT,
/// not request sockets).
pub fn open_sockets() -> Result<Vec<DiagSocket>> {
    dump(
        StateFlags::ESTABLISHED
            | StateFlags::SYN_SENT
            | StateFlags::SYN_RECV
            | StateFlags::FIN_WAIT1
            | StateFlags::FIN_WAIT2
            | StateFlags::CLOSE_WAIT
            | StateFlags::LAST_ACK
            | StateFlags::LISTEN
            | StateFlags::CLOSING,
        false,
    )
}

/// Sockets in TIME_WAIT now, with their remaining time.
pub fn time_wait() -> Result<Vec<DiagSocket>> {
    dump(StateFlags::TIME_WAIT, false)
}

/// Which of `tuples` a socket other than a timewait one holds now, in the calling thread's
/// namespace (a connection that took over a TIME_WAIT's 4-tuple): sock_diag's exact lookup,
/// one request each.
pub fn held_open(tuples: &[FlowAddrs]) -> Result<std::collections::HashSet<FlowAddrs>> {
    let socket = open()?;
    let mut held = std::collections::HashSet::new();
    let mut receive = vec![0u8; 1 << 12];
    for addrs in tuples {
        let v4 = addrs.local.addr.is_ipv4();
        let mut socket_id = if v4 {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        socket_id.source_port = addrs.local.port;
        socket_id.destination_port = addrs.remote.port;
        socket_id.source_address = addrs.local.addr;
        socket_id.destination_address = addrs.remote.addr;
        socket_id.cookie = [0xff; 8]; // INET_DIAG_NOCOOKIE
        let request = InetRequest {
            family: if v4 { AF_INET } else { AF_INET6 },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        };
        send(&socket, request, NLM_F_REQUEST)?;
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .context("reading sock_diag")?;
        // One answer: the socket, or an error (ENOENT: none holds the 4-tuple).
        let mut found = Vec::new();
        if parse_batch(&receive[..size], &mut found).is_ok()
            && found
                .iter()
                .any(|s| s.state != tcptrace_common::tcp_state::TIME_WAIT)
        {
            held.insert(*addrs);
        }
    }
    Ok(held)
}

/// The 4-tuples of a namespace's timewait sockets, as one read saw them.
#[derive(Debug, Default)]
pub struct TimeWaitRead {
    /// When the read began (kernel monotonic time): a TIME_WAIT that started before and is
    /// missing ended before it.
    pub read_ns: u64,
    pub present: foldhash::HashSet<FlowAddrs>,
    pub took: Duration,
}

/// Every timewait socket of the calling thread's namespace: TIME_WAIT, and those still in
/// their FIN_WAIT2 substate (an orphan whose peer has not closed: sock_diag reports a
/// timewait socket by its substate).
pub fn time_wait_read() -> Result<TimeWaitRead> {
    let began = std::time::Instant::now();
    let read_ns = crate::host::clock::Clock::ktime_now();
    let sockets = dump(StateFlags::TIME_WAIT | StateFlags::FIN_WAIT2, false)?;
    Ok(TimeWaitRead {
        read_ns,
        present: sockets.into_iter().map(|s| s.addrs).collect(),
        took: began.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_wait_sockets_come_with_their_remaining_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let port = client.local_addr().expect("addr").port();
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let _ = std::io::Read::read(&mut server, &mut [0u8; 1]);
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        let tw = time_wait().expect("sock_diag dump");
        let ours = tw
            .iter()
            .find(|s| s.addrs.local.port == port && s.addrs.remote.port == addr.port())
            .unwrap_or_else(|| {
                panic!(
                    "our TIME_WAIT socket (:{port}) among the {} listed (tcp_max_tw_buckets reached by other load?)",
                    tw.len()
                )
            });
        assert!(ours.expires > Duration::from_secs(50), "{ours:?}");
        assert!(ours.expires <= Duration::from_secs(63), "{ours:?}");
    }

    #[test]
    fn open_sockets_come_with_their_state() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let cport = client.local_addr().expect("addr").port();
        let open = open_sockets().expect("sock_diag dump");
        let state_of = |local: u16, remote: u16| {
            open.iter()
                .find(|s| s.addrs.local.port == local && s.addrs.remote.port == remote)
                .map(|s| s.state)
        };
        assert_eq!(state_of(port, 0), Some(tcptrace_common::tcp_state::LISTEN));
        assert_eq!(
            state_of(cport, port),
            Some(tcptrace_common::tcp_state::ESTABLISHED)
        );
        assert!(open
            .iter()
            .all(|s| s.state != tcptrace_common::tcp_state::TIME_WAIT));
    }

    /// The reads TIME_WAIT's ends are inferred from: every timewait socket's 4-tuple, and
    /// the exact lookup telling a 4-tuple a connection holds from one nothing holds. With
    /// `TCPTRACE_TW_COUNT=N` (release build, `-- --nocapture`), N timewait sockets are made
    /// and the read's time is printed (the cost docs/performance.md gives).
    #[test]
    fn time_wait_reads_find_the_timewait_sockets_and_lookups_the_open_ones() {
        let count: usize = std::env::var("TCPTRACE_TW_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut closed = Vec::new();
        for _ in 0..count {
            let client = std::net::TcpStream::connect(addr).expect("connect");
            let local = client.local_addr().expect("addr");
            let (mut server, _) = listener.accept().expect("accept");
            drop(client);
            let _ = std::io::Read::read(&mut server, &mut [0u8; 1]);
            closed.push(FlowAddrs {
                local: Endpoint::new(local.ip(), local.port()),
                remote: Endpoint::new(addr.ip(), addr.port()),
            });
        }
        let open = std::net::TcpStream::connect(addr).expect("connect");
        let open_local = open.local_addr().expect("addr");
        let open_addrs = FlowAddrs {
            local: Endpoint::new(open_local.ip(), open_local.port()),
            remote: Endpoint::new(addr.ip(), addr.port()),
        };
        std::thread::sleep(Duration::from_millis(50));
        let read = time_wait_read().expect("sock_diag dump");
        eprintln!(
            "read {} timewait sockets in {:?} ({count} made)",
            read.present.len(),
            read.took
        );
        let found = closed.iter().filter(|a| read.present.contains(a)).count();
        assert_eq!(found, count, "every timewait socket made is read");
        assert!(!read.present.contains(&open_addrs), "an open one is not");
        let held = held_open(&[open_addrs, closed[0]]).expect("sock_diag lookups");
        assert_eq!(
            held,
            std::collections::HashSet::from([open_addrs]),
            "the open connection's 4-tuple is held; a TIME_WAIT's is not a connection"
        );
    }
}
