//! 4-tuple exhaustion forecast: between one local address and one remote addr:port, a client
//! can hold at most (usable ephemeral ports) connections in TIME_WAIT, so it can open at most
//! usable ports ÷ TIME_WAIT length new connections per second before connect() fails with
//! EADDRNOTAVAIL.
use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{
    events::model::Endpoint,
    state::timewait::{Gauges, TimeWaitTracker, TIME_WAIT_LEN_S},
};

/// Above this share of the capacity, a warning names what helps.
pub const WARN_AT: f64 = 0.8;

/// `net.ipv4.ip_local_port_range`, e.g. "32768\t60999".
pub fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (parts.next(), parts.next(), parts.next()) else {
        bail!("ip_local_port_range is not two ports: {text:?}");
    };
    if lo > hi {
        bail!("ip_local_port_range is empty: {lo} > {hi}");
    }
    Ok((lo, hi))
}

/// `net.ipv4.ip_local_reserved_ports`, e.g. "8080,9000-9010" (empty: none).
pub fn parse_reserved(text: &str) -> Result<Vec<(u16, u16)>> {
    text.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u16, u16) = (
                lo.trim()
                    .parse()
                    .with_context(|| format!("bad reserved port {part:?}"))?,
                hi.trim()
                    .parse()
                    .with_context(|| format!("bad reserved port {part:?}"))?,
            );
            if lo > hi {
                bail!("bad reserved range {part:?}");
            }
            Ok((lo, hi))
        })
        .collect()
}

/// Ports of `range` not reserved.
pub fn usable_ports(range: (u16, u16), reserved: &[(u16, u16)]) -> u32 {
    (range.0..=range.1)
        .filter(|p| !reserved.iter().any(|&(lo, hi)| (lo..=hi).contains(p)))
        .count() as u32
}

/// This host's usable ephemeral ports, from the sysctls.
pub fn host_usable_ports() -> Result<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading net.ipv4.ip_local_port_range")?;
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    Ok(usable_ports(
        parse_port_range(&range)?,
        &parse_reserved(&reserved)?,
    ))
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    /// New connections (TIME_WAITs entered) per second now.
    pub rate_per_s: f64,
    /// The most new connections per second the ephemeral ports sustain.
    pub capacity_per_s: f64,
    pub utilization: f64,
    pub warning: Option<String>,
}

pub fn forecast(
    local: IpAddr,
    remote: Endpoint,
    rate_per_s: f64,
    usable_ports: u32,
    time_wait_s: f64,
) -> Forecast {
    let capacity_per_s = f64::from(usable_ports) / time_wait_s;
    let utilization = if capacity_per_s > 0.0 {
        rate_per_s / capacity_per_s
    } else {
        f64::INFINITY
    };
    let warning = (utilization > WARN_AT).then(|| {
        format!(
            "{local} -> {remote} opens {rate_per_s:.0}/s, {:.0}% of the {capacity_per_s:.0}/s its \
             {usable_ports} ephemeral ports sustain with {time_wait_s:.0}s of TIME_WAIT: add source \
             addresses or server ports, or set net.ipv4.tcp_tw_reuse=1 on this client \
             (tcp_tw_recycle was removed in Linux 4.12)",
            utilization * 100.0
        )
    });
    Forecast {
        laddr: local,
        raddr: remote.addr,
        rport: remote.port,
        rate_per_s,
        capacity_per_s,
        utilization,
        warning,
    }
}

/// What the TIME_WAIT gauges show: per destination and local address, the exhaustion
/// forecast of the busiest pairs, overflows and the TIME_WAITs from before tracing.
pub struct TimeWaitView {
    pub gauges: Gauges,
    pub forecasts: Vec<Forecast>,
    pub overflows: u64,
    pub preexisting: u64,
}

/// The exhaustion forecast of the 10 busiest (local address, destination) pairs, where the
/// port range is known.
pub fn forecasts(tw: &TimeWaitTracker, now: u64, usable_ports: Option<u32>) -> Vec<Forecast> {
    usable_ports.map_or_else(Vec::new, |ports| {
        let mut rates = tw.entry_rates(now);
        rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        rates
            .into_iter()
            .take(10)
            .map(|((local, remote), rate)| forecast(local, remote, rate, ports, TIME_WAIT_LEN_S))
            .collect()
    })
}

/// The gauges and, where the port range is known, the exhaustion forecast.
pub fn time_wait_view(tw: &TimeWaitTracker, now: u64, usable_ports: Option<u32>) -> TimeWaitView {
    TimeWaitView {
        gauges: tw.gauges(now),
        forecasts: forecasts(tw, now, usable_ports),
        overflows: tw.overflows,
        preexisting: tw.preexisting_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_reserved_ports() {
        assert_eq!(
            parse_port_range("32768\t60999\n").expect("valid"),
            (32768, 60999)
        );
        assert!(parse_port_range("60999 32768").is_err());
        assert!(parse_port_range("1024").is_err());
        assert_eq!(parse_reserved("").expect("empty"), vec![]);
        assert_eq!(
            parse_reserved("8080,9000-9010\n").expect("valid"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert!(parse_reserved("9010-9000").is_err());
        assert!(parse_reserved("x").is_err());
        assert_eq!(usable_ports((32768, 60999), &[]), 28232);
        assert_eq!(
            usable_ports((32768, 60999), &[(40000, 40009), (1, 100)]),
            28222
        );
        assert_eq!(usable_ports((5000, 5000), &[(5000, 5000)]), 0);
    }

    #[test]
    fn capacity_is_ports_over_time_wait_and_warns_above_80_percent() {
        let dst = Endpoint::new("10.0.0.2".parse().expect("ip"), 443);
        let src: IpAddr = "10.0.0.1".parse().expect("ip");
        let calm = forecast(src, dst, 100.0, 28232, 60.0);
        assert!((calm.capacity_per_s - 470.53).abs() < 0.01, "{calm:?}");
        assert!(calm.warning.is_none());
        let hot = forecast(src, dst, 400.0, 28232, 60.0);
        assert!(hot.utilization > 0.8);
        let text = hot.warning.expect("a warning");
        assert!(
            text.contains("tcp_tw_reuse") && text.contains("source addresses"),
            "{text}"
        );
        let none = forecast(src, dst, 1.0, 0, 60.0);
        assert!(
            none.warning.is_some(),
            "no usable ports: always over capacity"
        );
    }
}
