//! A loopback load generator: an epoll server on many ports and client threads doing
//! connect / optional 1-byte exchange / close, flat out or at a fixed rate.
//!
//! The server closes first, so TIME_WAIT sits on the server side: when clients close first,
//! every connect() searches ephemeral ports through a TIME_WAIT table that grows for 60 s up to
//! net.ipv4.tcp_max_tw_buckets and then overflows, and round-to-round throughput swings with
//! that cycle (measured: 9k to 28k connections/s) instead of with the tracer.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Listening ports: many, so that clients never run out of 4-tuples while earlier
/// connections sit in TIME_WAIT.
pub const SERVER_PORTS: usize = 64;

pub struct Server {
    pub ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

fn epoll_add(epfd: RawFd, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and socket fd; `ev` outlives the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const LISTENER_TOKEN: u64 = 1 << 63;

impl Server {
    /// Listens on `SERVER_PORTS` loopback ports; accepted connections are closed at once, or
    /// after echoing one byte when `exchange`.
    pub fn start(exchange: bool) -> Result<Server> {
        // SAFETY: plain syscall; the fd is owned below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: epfd is a fresh, owned descriptor.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for i in 0..SERVER_PORTS {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind server port")?;
            l.set_nonblocking(true)?;
            ports.push(l.local_addr()?.port());
            epoll_add(
                epfd,
                l.as_raw_fd(),
                LISTENER_TOKEN | i as u64,
                libc::EPOLLIN as u32,
            )?;
            listeners.push(l);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || serve(epoll, listeners, exchange, flag));
        Ok(Server {
            ports,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(epoll: OwnedFd, listeners: Vec<TcpListener>, exchange: bool, stop: Arc<AtomicBool>) {
    let epfd = epoll.as_raw_fd();
    let mut conns: std::collections::HashMap<u64, TcpStream> = Default::default();
    let mut next = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `events` is a valid buffer of the given length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token & LISTENER_TOKEN != 0 {
                let listener = &listeners[(token & !LISTENER_TOKEN) as usize];
                while let Ok((s, _)) = listener.accept() {
                    if !exchange {
                        drop(s); // the server closes first
                        continue;
                    }
                    let _ = s.set_nonblocking(true);
                    next += 1;
                    if epoll_add(
                        epfd,
                        s.as_raw_fd(),
                        next,
                        (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    )
                    .is_ok()
                    {
                        conns.insert(next, s);
                    }
                }
                continue;
            }
            let Some(s) = conns.get_mut(&token) else {
                continue;
            };
            let mut buf = [0u8; 64];
            let done = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => {
                    let _ = s.write(&buf[..1]);
                    true // answered: the server closes first
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if done {
                // Dropping closes the socket (and removes it from the epoll set).
                conns.remove(&token);
            }
        }
    }
}

/// What one load run achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadResult {
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.seconds
    }
}

/// Connections each flat-out client thread keeps in flight.
const IN_FLIGHT: usize = 64;

/// One flat-out client thread: `IN_FLIGHT` non-blocking connections at a time, each
/// connect → (server closes) → close, driven by one epoll loop.
fn flat_out_client(ports: &[u16], first: usize, deadline: Instant) -> io::Result<(u64, u64)> {
    // SAFETY: plain syscall; the fd is owned below.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, owned descriptor.
    let _epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    let (mut done, mut errors) = (0u64, 0u64);
    let mut next_port = first;
    let open = |port: u16| -> io::Result<RawFd> {
        // SAFETY: plain syscall; the fd is closed when its connection ends.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_in for the call.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let err = io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        // The server closes first: wait for its FIN (readable), then close.
        epoll_add(
            epfd,
            fd,
            fd as u64,
            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        )?;
        Ok(fd)
    };
    let mut in_flight = 0usize;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; IN_FLIGHT];
    loop {
        let now = Instant::now();
        while now < deadline && in_flight < IN_FLIGHT {
            let port = ports[next_port % ports.len()];
            next_port += 1;
            match open(port) {
                Ok(_) => in_flight += 1,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        if in_flight == 0 {
            break;
        }
        // SAFETY: `events` is a valid buffer of the given length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            let mut buf = [0u8; 16];
            // SAFETY: our own fd and a valid buffer.
            let read = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            if read < 0 || ev.events & libc::EPOLLERR as u32 != 0 {
                errors += 1;
            } else {
                done += 1;
            }
            // SAFETY: our own fd; closing also removes it from the epoll set.
            unsafe { libc::close(fd) };
            in_flight -= 1;
        }
        if Instant::now() >= deadline && in_flight == 0 {
            break;
        }
    }
    Ok((done, errors))
}

/// Runs `threads` clients against `ports` for `duration`; `rate` paces the total to that many
/// connections per second (flat out when `None`: concurrent non-blocking clients).
pub fn run_clients(
    ports: &[u16],
    threads: usize,
    duration: Duration,
    exchange: bool,
    rate: Option<f64>,
) -> Result<LoadResult> {
    if ports.is_empty() || threads == 0 {
        bail!("load generator needs ports and threads");
    }
    let total = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    if rate.is_none() && !exchange {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ports = ports.to_vec();
                thread::spawn(move || flat_out_client(&ports, t * 7, deadline))
            })
            .collect();
        let (mut done, mut failed) = (0, 0);
        for h in handles {
            let (d, e) = h
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?
                .context("load generator client")?;
            done += d;
            failed += e;
        }
        return Ok(LoadResult {
            connections: done,
            errors: failed,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ports = ports.to_vec();
            let (total, errors) = (total.clone(), errors.clone());
            let per_thread = rate.map(|r| r / threads as f64);
            thread::spawn(move || {
                let mut i = t;
                let mut done = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if let Some(r) = per_thread {
                        let due = start + Duration::from_secs_f64(done as f64 / r);
                        if due > now {
                            thread::sleep(due - now);
                            continue;
                        }
                    }
                    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[i % ports.len()]));
                    i += 1;
                    match TcpStream::connect(addr) {
                        Ok(mut s) => {
                            if exchange {
                                let mut b = [0u8; 1];
                                if s.write_all(b"x")
                                    .and_then(|()| s.read_exact(&mut b))
                                    .is_err()
                                {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            drop(s);
                            done += 1;
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                total.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    }
    Ok(LoadResult {
        connections: total.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `cargo xtask bench-load`: the generator alone, for profiling a tracer by hand.
pub fn load_only(rate: Option<f64>, secs: f64) -> Result<()> {
    raise_nofile(16_384)?;
    let server = Server::start(false)?;
    let r = run_clients(&server.ports, 2, Duration::from_secs_f64(secs), false, rate)?;
    eprintln!("xtask bench-load: {:.0} conn/s", r.rate());
    Ok(())
}

pub fn raise_nofile(n: usize) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n as u64,
        rlim_max: n as u64,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "cannot raise RLIMIT_NOFILE to {n}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
