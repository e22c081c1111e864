//! connect() and bind() failing for want of a port, as alerts: each says the process, the
//! address asked for, the errno, and — for connect — the TIME_WAITs and open flows toward that
//! destination in the caller's network namespace at that moment and what the exhaustion
//! forecast said. A process retrying in a loop fails thousands of times a second: one alert
//! per (namespace, call, errno, address) a second, counting the failures it stands for.
use std::net::{IpAddr, Ipv4Addr};

use foldhash::HashMap;

use crate::{
    host::netns::Namespaces,
    model::port_failure::{Call, Errno, PortFailure},
    model::tcp::{Endpoint, FlowAddrs, Process},
    state::{
        forecast::{forecast, Forecast},
        timewait::TimeWaitTracker,
    },
};

/// Failures of one kind are alerted at most this often.
const ALERT_EVERY_NS: u64 = 1_000_000_000;

type Key = (u32, Call, Errno, Option<Endpoint>);

/// A failure as an alert, with what surrounded it.
#[derive(Clone, Debug, PartialEq)]
pub struct PortFailureAlert {
    pub failure: PortFailure,
    /// The caller (always known: the hook runs in its context).
    pub owner: Option<Process>,
    /// The local side (bind: the address asked for; connect: unbound, shown as 0.0.0.0:0) and
    /// the remote one (connect: the destination asked for).
    pub addrs: FlowAddrs,
    /// Failures of this kind since the last alert for it, this one included.
    pub failures: u64,
    /// connect: sockets in TIME_WAIT toward the destination in the caller's namespace.
    pub time_waits: Option<u64>,
    /// connect: flows open toward it there (sock_diag; `None` where not read — a report).
    pub open_flows: Option<u64>,
    /// connect: the busiest forecast toward it in that namespace.
    pub forecast: Option<Forecast>,
    /// The caller's namespace as people know it (`4026532239 "kb"`).
    pub netns_label: String,
}

#[derive(Default)]
pub struct PortFailureWatch {
    /// Per kind: when it was last alerted, and the failures since.
    seen: HashMap<Key, (u64, u64)>,
}

impl PortFailureWatch {
    /// Whether `f` is alerted now, with how many failures it stands for.
    pub fn admit(&mut self, f: &PortFailure) -> Option<u64> {
        let key = (f.netns, f.call, f.errno, f.asked);
        let (last, pending) = self.seen.entry(key).or_insert((0, 0));
        *pending += 1;
        if *last != 0 && f.ts_ns.saturating_sub(*last) < ALERT_EVERY_NS {
            return None;
        }
        *last = f.ts_ns.max(1);
        Some(std::mem::take(pending))
    }

    /// Forgets kinds quiet for a minute (called once a second).
    pub fn forget_quiet(&mut self, now_ns: u64) {
        self.seen.retain(|_, (last, pending)| {
            *pending > 0 || now_ns.saturating_sub(*last) < 60 * ALERT_EVERY_NS
        });
    }
}

/// The busiest forecast toward `dest` in namespace `netns`.
pub fn forecast_toward(
    tw: &TimeWaitTracker,
    now_ns: u64,
    namespaces: &Namespaces,
    netns: u32,
    dest: Endpoint,
) -> Option<Forecast> {
    let ns = namespaces.get_or_unknown(netns);
    tw.entry_rates(now_ns)
        .into_iter()
        .filter(|((n, _, d), _)| *n == netns && *d == dest)
        .map(|((_, local, _), rate)| forecast(&ns, local, dest, rate))
        .max_by(|a, b| a.utilization.total_cmp(&b.utilization))
}

impl PortFailureAlert {
    /// The alert for `failure`, standing for `failures`; `open_flows` counts the flows open
    /// toward a destination in a namespace, where that can be read.
    pub fn new(
        failure: PortFailure,
        failures: u64,
        tw: &TimeWaitTracker,
        namespaces: &Namespaces,
        open_flows: impl FnOnce(u32, Endpoint) -> Option<u64>,
    ) -> PortFailureAlert {
        let unbound = Endpoint::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let asked = failure.asked.unwrap_or(unbound);
        let (addrs, time_waits, open, forecast) = match (failure.call, failure.asked) {
            (Call::Connect, Some(dest)) => (
                FlowAddrs {
                    local: unbound,
                    remote: dest,
                },
                Some(tw.time_waits_toward(failure.netns, dest)),
                open_flows(failure.netns, dest),
                forecast_toward(tw, failure.ts_ns, namespaces, failure.netns, dest),
            ),
            (Call::Connect, None) => (
                FlowAddrs {
                    local: unbound,
                    remote: unbound,
                },
                None,
                None,
                None,
            ),
            (Call::Bind, _) => (
                FlowAddrs {
                    local: asked,
                    remote: unbound,
                },
                None,
                None,
                None,
            ),
        };
        let netns_label = namespaces.label(failure.netns);
        PortFailureAlert {
            netns_label,
            owner: Some(failure.owner.clone()),
            failure,
            addrs,
            failures,
            time_waits,
            open_flows: open,
            forecast,
        }
    }

    /// One line of explanation.
    pub fn detail(&self) -> String {
        let f = &self.failure;
        let ns = match f.netns {
            0 => String::new(),
            _ => format!(" in netns {}", self.netns_label),
        };
        let asked = f.asked.map_or_else(|| "?".to_string(), |e| e.to_string());
        let why = match f.call {
            Call::Connect => " (no free local port toward it)",
            Call::Bind => "",
        };
        let mut text = format!(
            "{}() to {asked}{ns} failed: {}{why}",
            f.call.name(),
            f.errno.name()
        );
        if let Some(n) = self.time_waits {
            text.push_str(&format!("; {n} TIME_WAITs"));
            match self.open_flows {
                Some(open) => text.push_str(&format!(" and {open} open flows toward it")),
                None => text.push_str(" toward it"),
            }
        }
        if let Some(fc) = &self.forecast {
            text.push_str(&format!("; forecast {}", fc.brief()));
        }
        if self.failures > 1 {
            text.push_str(&format!(
                "; {} failures since the last alert",
                self.failures
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(ts_ns: u64) -> PortFailure {
        PortFailure {
            ts_ns,
            call: Call::Connect,
            errno: Errno::AddrNotAvail,
            owner: Process {
                pid: 7,
                comm: "curl".into(),
            },
            netns: 9,
            asked: Some(Endpoint::new("10.0.0.2".parse().expect("ip"), 443)),
            workload: Default::default(),
        }
    }

    #[test]
    fn one_alert_a_second_counts_the_failures_it_stands_for() {
        let mut watch = PortFailureWatch::default();
        const S: u64 = 1_000_000_000;
        assert_eq!(watch.admit(&failure(S)), Some(1));
        for i in 1..100 {
            assert_eq!(watch.admit(&failure(S + i * 1_000_000)), None);
        }
        assert_eq!(watch.admit(&failure(2 * S + 1)), Some(100));
        let mut bind = failure(2 * S + 2);
        bind.call = Call::Bind;
        assert_eq!(watch.admit(&bind), Some(1), "another kind");
        watch.forget_quiet(70 * S);
        assert!(watch.seen.is_empty());
    }

    #[test]
    fn a_connect_alert_says_what_surrounded_it() {
        let tw = TimeWaitTracker::new();
        let alert = PortFailureAlert::new(failure(5), 3, &tw, &Namespaces::default(), |n, d| {
            assert_eq!((n, d.port), (9, 443));
            Some(2)
        });
        assert_eq!(alert.addrs.remote.to_string(), "10.0.0.2:443");
        assert_eq!(
            alert.detail(),
            "connect() to 10.0.0.2:443 in netns 9 failed: EADDRNOTAVAIL (no free local port \
             toward it); 0 TIME_WAITs and 2 open flows toward it; 3 failures since the last alert"
        );
    }
}
