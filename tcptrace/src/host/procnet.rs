//! The kernel's TcpExt counters (/proc/net/netstat) tcptrace follows: TIME_WAITs skipped
//! because net.ipv4.tcp_max_tw_buckets was full, handshakes listeners dropped, SYN cookies
//! sent. Per network namespace: read by the netns reader from inside each.

/// A TcpExt counter of /proc/net/netstat, by name.
pub fn tcp_ext(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let index = names.split_whitespace().position(|n| n == name)?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

/// The TcpExt counters tcptrace follows per network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpExtCounters {
    /// TIME_WAITs skipped: `tcp_max_tw_buckets` full.
    pub tw_overflow: Option<u64>,
    /// Handshakes dropped because a listener's accept queue was full (ListenOverflows), and
    /// every handshake a listener dropped (ListenDrops: those, a full SYN queue, …).
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
    /// SYN cookies sent (SyncookiesSent): a SYN queue full, or `tcp_syncookies=2`.
    pub syncookies_sent: Option<u64>,
}

impl TcpExtCounters {
    pub fn parse(netstat: &str) -> TcpExtCounters {
        TcpExtCounters {
            tw_overflow: tcp_ext(netstat, "TCPTimeWaitOverflow"),
            listen_overflows: tcp_ext(netstat, "ListenOverflows"),
            listen_drops: tcp_ext(netstat, "ListenDrops"),
            syncookies_sent: tcp_ext(netstat, "SyncookiesSent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_counter_is_found_by_name() {
        let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TW\nTcpExt: 0 8300000 5\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(tcp_ext(netstat, "TCPTimeWaitOverflow"), Some(8_300_000));
        assert_eq!(tcp_ext("IpExt: A\nIpExt: 1\n", "TCPTimeWaitOverflow"), None);
        let c = TcpExtCounters::parse(
            "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 3 5 7\n",
        );
        assert_eq!(
            (
                c.syncookies_sent,
                c.listen_overflows,
                c.listen_drops,
                c.tw_overflow
            ),
            (Some(3), Some(5), Some(7), None)
        );
        let here = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
        assert!(
            tcp_ext(&here, "TCPTimeWaitOverflow").is_some(),
            "this kernel exposes the counter"
        );
    }
}
