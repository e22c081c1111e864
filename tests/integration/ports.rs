//! Ports for tests that count what happens on them: free of an earlier test's TIME_WAITs, and
//! a refusing port no other connection can take meanwhile.
use std::{
    net::{Ipv4Addr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

/// A port nothing listens on at this instant.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

fn time_waits_towards(port: u16) -> bool {
    let out = Command::new("ss")
        .args([
            "-Htan",
            "state",
            "time-wait",
            &format!("( dport = :{port} or sport = :{port} )"),
        ])
        .output()
        .expect("ss runs (iproute2: cargo xtask setup)");
    assert!(out.status.success(), "ss: {out:?}");
    !out.stdout.iter().all(u8::is_ascii_whitespace)
}

/// A free port that no TIME_WAIT uses. An earlier test's connections to a listener that had
/// the same port number leave TIME_WAITs towards it for a minute (and a client that used it
/// as its own port, TIME_WAITs from it); the tracer counts them from its start (they are
/// there, as `ss` shows), which a test counting its own connections must not find.
pub fn free_port_without_time_waits() -> u16 {
    without_time_waits("free port", free_port, |&port| port)
}

/// The first of up to 100 `make()`s whose port no TIME_WAIT uses.
fn without_time_waits<T>(what: &str, make: impl Fn() -> T, port: impl Fn(&T) -> u16) -> T {
    for _ in 0..100 {
        let made = make();
        if !time_waits_towards(port(&made)) {
            return made;
        }
    }
    panic!("no {what} without TIME_WAITs in 100 tries");
}

/// A port bound on 127.0.0.1 and not listening, for as long as this lives: connecting to it
/// is refused, and no other socket can take its number meanwhile (not as a listener, nor as
/// a client's own port: a connecting socket never picks a bound port), so a test filtering on
/// it sees its own refused connects only.
pub struct RefusingPort {
    _socket: OwnedFd,
    pub port: u16,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        without_time_waits("refusing port", Self::bind, |refusing| refusing.port)
    }

    fn bind() -> RefusingPort {
        // SAFETY: plain socket calls on a descriptor this function owns; the address and
        // length passed are those of a local sockaddr_in.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            );
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let named = libc::getsockname(
                socket.as_raw_fd(),
                (&raw mut addr).cast::<libc::sockaddr>(),
                &mut len,
            );
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            RefusingPort {
                port: u16::from_be(addr.sin_port),
                _socket: socket,
            }
        }
    }
}
