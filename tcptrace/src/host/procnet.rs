//! The kernel's count of TIME_WAITs skipped because net.ipv4.tcp_max_tw_buckets was full
//! (TcpExt TCPTimeWaitOverflow in /proc/net/netstat; per network namespace, read by
//! the netns module from inside each).

/// TcpExt TCPTimeWaitOverflow from /proc/net/netstat.
pub fn parse_tw_overflow(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let index = names
            .split_whitespace()
            .position(|n| n == "TCPTimeWaitOverflow")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_counter_is_found_by_name() {
        let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TW\nTcpExt: 0 8300000 5\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_tw_overflow(netstat), Some(8_300_000));
        assert_eq!(parse_tw_overflow("IpExt: A\nIpExt: 1\n"), None);
        let here = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
        assert!(
            parse_tw_overflow(&here).is_some(),
            "this kernel exposes the counter"
        );
    }
}
