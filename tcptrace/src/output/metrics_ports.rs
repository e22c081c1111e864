//! The port-failure metrics: `connect_failures_total{errno,destination}` and
//! `bind_failures_total{errno,local}`. Labels are bounded: the first [`LABELLED`] distinct
//! addresses get series of their own, every later one counts under `other` (a scan across
//! many destinations cannot grow the exposition without bound).
use std::collections::HashSet;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::model::port_failure::{Call, PortFailure};

/// Addresses with a series of their own, per call.
pub const LABELLED: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectFailure {
    errno: &'static str,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindFailure {
    errno: &'static str,
    local: String,
}

#[derive(Default)]
pub struct PortFailureMetrics {
    connect: Family<ConnectFailure, Counter>,
    bind: Family<BindFailure, Counter>,
    labelled: [HashSet<String>; 2],
}

impl PortFailureMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Present at 0 from the first scrape, so that a rate over them works before the first
        // failure: the `other` series, which holds whatever is past the cap.
        drop(self.connect.get_or_create(&ConnectFailure {
            errno: "EADDRNOTAVAIL",
            destination: "other".into(),
        }));
        drop(self.bind.get_or_create(&BindFailure {
            errno: "EADDRINUSE",
            local: "other".into(),
        }));
        registry.register(
            "connect_failures",
            "connect() calls that failed for want of a local port (EADDRNOTAVAIL), by errno \
             and destination (the first 64 destinations; later ones under \"other\")",
            self.connect.clone(),
        );
        registry.register(
            "bind_failures",
            "bind() calls that failed for want of a port (EADDRINUSE), by errno and local \
             address (the first 64; later ones under \"other\")",
            self.bind.clone(),
        );
    }

    /// The label for `address`: itself while under the cap, else `other`.
    fn label(&mut self, call: Call, address: String) -> String {
        let seen = &mut self.labelled[usize::from(call == Call::Bind)];
        if seen.contains(&address) || seen.len() < LABELLED {
            seen.insert(address.clone());
            address
        } else {
            "other".into()
        }
    }

    pub fn failed(&mut self, p: &PortFailure) {
        let address = p.asked.map_or_else(|| "unknown".into(), |e| e.to_string());
        let errno = p.errno.name();
        match p.call {
            Call::Connect => {
                let destination = self.label(Call::Connect, address);
                self.connect
                    .get_or_create(&ConnectFailure { errno, destination })
                    .inc();
            }
            Call::Bind => {
                let local = self.label(Call::Bind, address);
                self.bind.get_or_create(&BindFailure { errno, local }).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        port_failure::Errno,
        tcp::{Endpoint, Process},
    };

    #[test]
    fn destinations_beyond_the_cap_count_under_other() {
        let mut m = PortFailureMetrics::default();
        let failure = |port: u16| PortFailure {
            ts_ns: 1,
            call: Call::Connect,
            errno: Errno::AddrNotAvail,
            owner: Process {
                pid: 1,
                comm: "x".into(),
            },
            netns: 0,
            asked: Some(Endpoint::new("10.0.0.1".parse().expect("ip"), port)),
            workload: Default::default(),
        };
        for port in 0..(LABELLED as u16 + 10) {
            m.failed(&failure(port));
        }
        m.failed(&failure(0));
        let other = m.connect.get_or_create(&ConnectFailure {
            errno: "EADDRNOTAVAIL",
            destination: "other".into(),
        });
        assert_eq!(other.get(), 10);
        let first = m.connect.get_or_create(&ConnectFailure {
            errno: "EADDRNOTAVAIL",
            destination: "10.0.0.1:0".into(),
        });
        assert_eq!(first.get(), 2, "a labelled destination keeps its series");
    }
}
