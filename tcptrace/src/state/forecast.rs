//! 4-tuple exhaustion forecast: between one local address and one remote addr:port, a client
//! can hold at most (usable ephemeral ports) connections in TIME_WAIT, so it can open at most
//! usable ports ÷ TIME_WAIT length new connections per second before connect() fails with
//! EADDRNOTAVAIL. The ports, the TIME_WAIT length (or the reuse delay, where `tcp_tw_reuse`
//! applies) and the bucket limit are those of the network namespace that holds the
//! TIME_WAITs: each namespace has its own (on Kubernetes, each pod).
use std::net::IpAddr;

use serde::Serialize;

use crate::{
    host::netns::{Namespace, Namespaces, PortSettings},
    model::tcp::Endpoint,
    state::timewait::{Gauges, TimeWaitTracker},
};

/// Above this share of the capacity, a warning names what helps.
pub const WARN_AT: f64 = 0.8;

/// One (namespace, local address, destination) 4-tuple space and how busy it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    /// The namespace's inode number.
    pub netns: u32,
    /// Its name under /run/netns, if it has one.
    pub netns_name: Option<String>,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    /// New connections (TIME_WAITs entered) per second now.
    pub rate_per_s: f64,
    /// The most new connections per second the ephemeral ports sustain.
    pub capacity_per_s: f64,
    pub utilization: f64,
    /// What the capacity was computed from: the namespace's `ip_local_port_range`, its
    /// ports not reserved, how long a closed 4-tuple stays unusable (60 s of TIME_WAIT, or
    /// the reuse delay), `tcp_tw_reuse`, and `tcp_max_tw_buckets`.
    pub port_range: (u16, u16),
    pub usable_ports: u32,
    pub hold_s: f64,
    pub tw_reuse: u8,
    pub max_tw_buckets: Option<u64>,
    /// The namespace could not be read: the kernel's defaults were assumed.
    pub defaults_assumed: bool,
    pub warning: Option<String>,
}

impl Forecast {
    /// The namespace as the forecast names it: `4026532770 "ka"`.
    pub fn netns_label(&self) -> String {
        match &self.netns_name {
            Some(name) => format!("{} \"{name}\"", self.netns),
            None => self.netns.to_string(),
        }
    }

    /// `217% (36/s of 16.7/s): netns 4026532368 "kb" 10.231.0.2 > 10.231.0.1:8888 [basis]`
    pub fn brief(&self) -> String {
        format!(
            "{:.0}% ({:.0}/s of {:.1}/s): netns {} {} > {}:{} [{}]",
            self.utilization * 100.0,
            self.rate_per_s,
            self.capacity_per_s,
            self.netns_label(),
            self.laddr,
            self.raddr,
            self.rport,
            self.basis()
        )
    }

    /// What the capacity was computed from, in words.
    pub fn basis(&self) -> String {
        let hold = if self.hold_s < crate::host::netns::TIME_WAIT_LEN_S {
            format!("{}s reuse delay", self.hold_s)
        } else {
            format!("{:.0}s TIME_WAIT", self.hold_s)
        };
        // A recording of layout 1 kept the number of ports only.
        let range = match self.port_range {
            (0, 0) => String::new(),
            (lo, hi) => format!(" of {lo}-{hi}"),
        };
        format!(
            "{} ports{range}, {hold}, tcp_tw_reuse={}{}",
            self.usable_ports,
            self.tw_reuse,
            if self.defaults_assumed {
                ", kernel defaults assumed"
            } else {
                ""
            }
        )
    }
}

pub fn forecast(ns: &Namespace, local: IpAddr, remote: Endpoint, rate_per_s: f64) -> Forecast {
    let (settings, defaults_assumed) = ns.settings_or_defaults();
    let loopback = local.is_loopback() || remote.addr.is_loopback();
    let hold_s = settings.hold_s(loopback);
    let PortSettings {
        port_range,
        usable_ports,
        tw_reuse,
        max_tw_buckets,
        ..
    } = settings;
    let capacity_per_s = f64::from(usable_ports) / hold_s;
    let utilization = if capacity_per_s > 0.0 {
        rate_per_s / capacity_per_s
    } else {
        f64::INFINITY
    };
    let label = ns.label();
    let warning = (utilization > WARN_AT).then(|| {
        let mut text = format!(
            "{local} -> {remote} in network namespace {label} opens {rate_per_s:.0}/s, {:.0}% of \
             the {capacity_per_s:.1}/s its {usable_ports} ephemeral ports ({}-{}) sustain with \
             {hold_s}s before a 4-tuple is free again: connect() will fail with EADDRNOTAVAIL; \
             add source addresses or server ports, widen net.ipv4.ip_local_port_range",
            utilization * 100.0,
            port_range.0,
            port_range.1,
        );
        if tw_reuse != 1 {
            text.push_str(", or set net.ipv4.tcp_tw_reuse=1");
        }
        text.push_str(" in that namespace (tcp_tw_recycle was removed in Linux 4.12)");
        if let Some(buckets) = max_tw_buckets.filter(|&b| b < u64::from(usable_ports)) {
            text.push_str(&format!(
                "; its tcp_max_tw_buckets={buckets} is below its ports: past it the kernel \
                 skips TIME_WAIT instead (counted as overflows)"
            ));
        }
        text
    });
    Forecast {
        netns: ns.inode,
        netns_name: ns.name.clone(),
        laddr: local,
        raddr: remote.addr,
        rport: remote.port,
        rate_per_s,
        capacity_per_s,
        utilization,
        port_range,
        usable_ports,
        hold_s,
        tw_reuse,
        max_tw_buckets,
        defaults_assumed,
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

/// The exhaustion forecast of the 10 busiest (namespace, local address, destination)
/// spaces, each with its namespace's capacity.
pub fn forecasts(tw: &TimeWaitTracker, now: u64, namespaces: &Namespaces) -> Vec<Forecast> {
    let mut rates = tw.entry_rates(now);
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    rates
        .into_iter()
        .take(10)
        .map(|((netns, local, remote), rate)| {
            forecast(&namespaces.get_or_unknown(netns), local, remote, rate)
        })
        .collect()
}

/// The gauges and the exhaustion forecast.
pub fn time_wait_view(tw: &TimeWaitTracker, now: u64, namespaces: &Namespaces) -> TimeWaitView {
    TimeWaitView {
        gauges: tw.gauges(now),
        forecasts: forecasts(tw, now, namespaces),
        overflows: tw.overflows,
        preexisting: tw.preexisting_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(ports: (u16, u16), tw_reuse: u8, max_tw_buckets: Option<u64>) -> Namespace {
        Namespace {
            conntrack: None,
            inode: 4026532770,
            name: Some("ka".into()),
            own: false,
            settings: Some(PortSettings {
                port_range: ports,
                usable_ports: u32::from(ports.1 - ports.0) + 1,
                tw_reuse,
                tw_reuse_delay_ms: 1000,
                timestamps: true,
                max_tw_buckets,
            }),
        }
    }

    #[test]
    fn capacity_is_the_namespaces_ports_over_time_wait_and_warns_above_80_percent() {
        let dst = Endpoint::new("10.0.0.2".parse().expect("ip"), 443);
        let src: IpAddr = "10.0.0.1".parse().expect("ip");
        let host = namespace((32768, 60999), 2, Some(262144));
        let calm = forecast(&host, src, dst, 100.0);
        assert!((calm.capacity_per_s - 470.53).abs() < 0.01, "{calm:?}");
        assert!(calm.warning.is_none());
        assert_eq!(
            calm.hold_s, 60.0,
            "tcp_tw_reuse=2 does not apply off loopback"
        );
        let hot = forecast(&host, src, dst, 400.0);
        assert!(hot.utilization > 0.8);
        let text = hot.warning.expect("a warning");
        assert!(
            text.contains("tcp_tw_reuse=1")
                && text.contains("source addresses")
                && text.contains("4026532770 \"ka\""),
            "{text}"
        );
        // The seed's pod: 1,000 ports, no reuse, 40 connections a second.
        let pod = namespace((10000, 10999), 0, Some(100));
        let f = forecast(&pod, src, dst, 40.0);
        assert!((f.capacity_per_s - 16.67).abs() < 0.01, "{f:?}");
        assert!(f.utilization > 2.3, "{f:?}");
        assert_eq!(
            f.basis(),
            "1000 ports of 10000-10999, 60s TIME_WAIT, tcp_tw_reuse=0"
        );
        assert!(
            f.warning
                .as_deref()
                .is_some_and(|w| w.contains("tcp_max_tw_buckets=100")),
            "{f:?}"
        );
        let none = forecast(&namespace((5000, 5000), 0, None), src, dst, 1.0);
        assert!(none.warning.is_some(), "one port: 1/60 per second");
    }

    #[test]
    fn reuse_shortens_the_hold_where_it_applies() {
        let lo = Endpoint::new("127.0.0.1".parse().expect("ip"), 7790);
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let f = forecast(&namespace((32768, 60999), 2, None), src, lo, 100.0);
        assert_eq!(f.hold_s, 1.0, "tcp_tw_reuse=2 applies on loopback");
        assert!((f.capacity_per_s - 28232.0).abs() < 0.01, "{f:?}");
        assert!(f.basis().contains("1s reuse delay"), "{}", f.basis());
        let off = forecast(&namespace((32768, 60999), 0, None), src, lo, 100.0);
        assert_eq!(off.hold_s, 60.0);
    }

    #[test]
    fn an_unread_namespace_is_forecast_with_the_kernels_defaults_and_says_so() {
        let dst = Endpoint::new("10.0.0.2".parse().expect("ip"), 443);
        let src: IpAddr = "10.0.0.1".parse().expect("ip");
        let f = forecast(&Namespace::unknown(77), src, dst, 10.0);
        assert!(f.defaults_assumed);
        assert_eq!(f.usable_ports, 28232);
        assert!(
            f.basis().ends_with("kernel defaults assumed"),
            "{}",
            f.basis()
        );
        assert_eq!(f.netns_label(), "77");
    }
}
