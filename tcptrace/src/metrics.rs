//! Prometheus metrics (`--metrics ADDR`), with the prometheus-client crate: counters follow
//! the kernel's per-CPU counters, histograms and close causes follow finished flows, TIME_WAIT
//! gauges follow the tracker (top destinations plus `other`, so cardinality stays bounded).
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    aggregate::KernelCounters,
    decode::FinishedFlow,
    model::{Endpoint, TcpState},
    timewait::Gauges,
};
use tcptrace_common::stat;

/// TIME_WAIT destinations with their own label; the rest are summed under `other`.
const TOP_DESTINATIONS: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FourTupleSpace {
    local: String,
    destination: String,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 10 us .. ~2.9 h
    exponential_buckets(0.000_01, 4.0, 15)
}

/// How many close causes there are (`CloseCause` is fieldless, `Unknown` last).
const CLOSE_CAUSES: usize = crate::cause::CloseCause::Unknown as usize + 1;

pub struct Metrics {
    registry: Arc<Registry>,
    transitions: Family<Transition, Counter>,
    state_seconds: Family<State, Histogram>,
    flows_opened: Counter,
    flows_closed: Family<Cause, Counter>,
    retransmits: Counter,
    retransmits_by_state: Family<State, Counter>,
    /// Handles of the per-state series, made on first use (no label hashing per observation).
    state_handles: [OnceLock<(Histogram, Counter)>; TcpState::ALL.len()],
    /// Handles of the per-cause series, likewise.
    cause_handles: [OnceLock<Counter>; CLOSE_CAUSES],
    time_wait_sockets: Family<Destination, Gauge>,
    time_wait_seconds: Histogram,
    time_wait_forecast: Family<FourTupleSpace, Gauge<f64, std::sync::atomic::AtomicU64>>,
    time_wait_overflows: Counter,
    keepalive_timeouts: Counter,
    lost: Family<Reason, Counter>,
    untracked_flows: Counter,
    filtered_events: Counter,
    evicted_flows: Counter,
    /// The kernel counters already added.
    seen: KernelCounters,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tcptrace");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            transitions: Family::default(),
            state_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            flows_opened: Counter::default(),
            flows_closed: Family::default(),
            retransmits: Counter::default(),
            retransmits_by_state: Family::default(),
            state_handles: std::array::from_fn(|_| OnceLock::new()),
            cause_handles: std::array::from_fn(|_| OnceLock::new()),
            time_wait_sockets: Family::default(),
            time_wait_seconds: Histogram::new(exponential_buckets(0.5, 2.0, 10)),
            time_wait_forecast: Family::default(),
            time_wait_overflows: Counter::default(),
            keepalive_timeouts: Counter::default(),
            lost: Family::default(),
            untracked_flows: Counter::default(),
            filtered_events: Counter::default(),
            evicted_flows: Counter::default(),
            seen: KernelCounters {
                transitions: vec![0; tcptrace_common::TRANSITION_SLOTS as usize],
                ..Default::default()
            },
        };
        registry.register(
            "transitions",
            "TCP state transitions",
            m.transitions.clone(),
        );
        registry.register(
            "state_duration_seconds",
            "Time flows held each state",
            m.state_seconds.clone(),
        );
        registry.register(
            "flows_opened",
            "Flows seen starting",
            m.flows_opened.clone(),
        );
        registry.register(
            "flows_closed",
            "Flows ended, by close cause",
            m.flows_closed.clone(),
        );
        registry.register(
            "retransmits",
            "Retransmitted segments",
            m.retransmits.clone(),
        );
        registry.register(
            "flow_retransmits",
            "Retransmits of finished flows, by the state they happened in",
            m.retransmits_by_state.clone(),
        );
        registry.register(
            "time_wait_sockets",
            "Sockets in TIME_WAIT now, by destination (top 10, then other)",
            m.time_wait_sockets.clone(),
        );
        registry.register(
            "time_wait_duration_seconds",
            "How long TIME_WAITs lasted",
            m.time_wait_seconds.clone(),
        );
        registry.register(
            "time_wait_forecast_ratio",
            "4-tuple exhaustion forecast: new connections per second over what the ephemeral \
             ports sustain with 60 s of TIME_WAIT, per (local address, destination); top 10",
            m.time_wait_forecast.clone(),
        );
        registry.register(
            "time_wait_overflows",
            "TIME_WAITs the kernel skipped because net.ipv4.tcp_max_tw_buckets was full",
            m.time_wait_overflows.clone(),
        );
        registry.register(
            "keepalive_timeouts",
            "Connections killed by keepalive",
            m.keepalive_timeouts.clone(),
        );
        registry.register("lost_events", "Events lost, by reason", m.lost.clone());
        registry.register(
            "untracked_flows",
            "Flows not tracked because the flow table was full (--max-flows)",
            m.untracked_flows.clone(),
        );
        registry.register(
            "filtered_events",
            "Events dropped by the in-kernel filters",
            m.filtered_events.clone(),
        );
        registry.register(
            "evicted_flows",
            "Flows evicted from the nearly full flow table, least recently active first",
            m.evicted_flows.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Flows evicted from the flow table by userspace.
    pub fn evicted(&self, flows: u64) {
        self.evicted_flows.inc_by(flows);
    }

    /// Adds what the kernel counted since the last call.
    pub fn kernel(&mut self, now: &KernelCounters) {
        for (i, (&total, seen)) in now
            .transitions
            .iter()
            .zip(&mut self.seen.transitions)
            .enumerate()
        {
            if total > *seen {
                let limit = usize::from(tcptrace_common::tcp_state::LIMIT);
                let states = (
                    crate::model::TcpState::try_from((i / limit) as u8),
                    crate::model::TcpState::try_from((i % limit) as u8),
                );
                if let (Ok(from), Ok(to)) = states {
                    self.transitions
                        .get_or_create(&Transition {
                            from: from.name(),
                            to: to.name(),
                        })
                        .inc_by(total - *seen);
                }
                *seen = total;
            }
        }
        let add = |index: u32, counter: &Counter| {
            let delta = now.stat(index).saturating_sub(self.seen.stat(index));
            counter.inc_by(delta);
        };
        add(stat::FLOWS_SEEN, &self.flows_opened);
        add(stat::RETRANSMITS, &self.retransmits);
        add(stat::FLOW_TABLE_FULL, &self.untracked_flows);
        add(stat::FILTERED, &self.filtered_events);
        for (index, reason) in [
            (stat::LOST_TRANSITION, "ring_full_transition"),
            (stat::LOST_FLOW_END, "ring_full_flow"),
            (stat::LOST_RETRANSMIT, "ring_full_retransmit"),
            (stat::LOST_PROBE, "ring_full_probe"),
            (stat::LOST_TIME_WAIT, "ring_full_time_wait"),
            (stat::LOST_UNDECIDED, "flow_table_full_undecided"),
        ] {
            add(index, &self.lost.get_or_create(&Reason { reason }));
        }
        let skipped = now.missed.saturating_sub(self.seen.missed);
        self.lost
            .get_or_create(&Reason {
                reason: "skipped_by_kernel",
            })
            .inc_by(skipped);
        self.seen.stats = now.stats;
        self.seen.missed = now.missed;
    }

    pub fn flow(&self, flow: &FinishedFlow) {
        let closed = match self.cause_handles.get(flow.cause as usize) {
            Some(slot) => slot.get_or_init(|| self.flows_closed_by(flow.cause)),
            None => &self.flows_closed_by(flow.cause),
        };
        closed.inc();
        if flow.cause == crate::cause::CloseCause::KeepaliveTimeout {
            self.keepalive_timeouts.inc();
        }
        for step in &flow.lifecycle.path {
            let Some(slot) = self.state_handles.get(step.state as usize) else {
                continue;
            };
            let (seconds, retransmits) = slot.get_or_init(|| {
                let label = State {
                    state: step.state.name(),
                };
                (
                    self.state_seconds.get_or_create(&label).clone(),
                    self.retransmits_by_state.get_or_create(&label).clone(),
                )
            });
            if let Some(ns) = step.held_ns {
                seconds.observe(ns as f64 / 1e9);
            }
            if step.retransmits > 0 {
                retransmits.inc_by(u64::from(step.retransmits));
            }
        }
    }

    fn flows_closed_by(&self, cause: crate::cause::CloseCause) -> Counter {
        self.flows_closed
            .get_or_create(&Cause {
                cause: cause.name(),
            })
            .clone()
    }

    pub fn time_wait_ended(&self, held_ns: u64) {
        self.time_wait_seconds.observe(held_ns as f64 / 1e9);
    }

    pub fn time_wait_gauges(&self, gauges: &Gauges) {
        let mut dests = gauges.by_destination.clone();
        dests.sort_by_key(|d| std::cmp::Reverse(d.1 .0));
        self.time_wait_sockets.clear();
        let mut other = 0;
        for (i, (dest, (count, _))) in dests.iter().enumerate() {
            if i < TOP_DESTINATIONS {
                self.time_wait_sockets
                    .get_or_create(&Destination {
                        destination: dest.to_string(),
                    })
                    .set(*count as i64);
            } else {
                other += count;
            }
        }
        self.time_wait_sockets
            .get_or_create(&Destination {
                destination: "other".into(),
            })
            .set(other as i64);
    }

    /// The exhaustion forecast's busiest 4-tuple spaces (the caller passes the top ones).
    pub fn time_wait_forecasts(&self, forecasts: &[crate::forecast::Forecast]) {
        self.time_wait_forecast.clear();
        for f in forecasts {
            self.time_wait_forecast
                .get_or_create(&FourTupleSpace {
                    local: f.laddr.to_string(),
                    destination: Endpoint::new(f.raddr, f.rport).to_string(),
                })
                .set(f.utilization);
        }
    }

    /// TIME_WAITs skipped by a full tcp_max_tw_buckets since the last call.
    pub fn time_wait_overflowed(&self, newly: u64) {
        self.time_wait_overflows.inc_by(newly);
    }

    /// The exposition text.
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Serves GET /metrics on `addr` until the runtime ends.
    pub async fn serve(registry: Arc<Registry>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let mut len = 0;
                while len < request.len() {
                    match stream.read(&mut request[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&request[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let response = if head.starts_with("GET ") && path == "/metrics" {
                    let mut body = String::new();
                    let _ = encode(&mut body, &registry);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; \
                         version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: \
                         close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

/// Binds the metrics endpoint (errors name the address).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for --metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, tests as raw, Event};
    use tcptrace_common::tcp_state as ts;

    #[test]
    fn counters_follow_kernel_deltas_and_flows() {
        let mut m = Metrics::new();
        let mut k = KernelCounters {
            transitions: vec![0; tcptrace_common::TRANSITION_SLOTS as usize],
            ..Default::default()
        };
        k.transitions[usize::from(ts::SYN_SENT) * 16 + usize::from(ts::ESTABLISHED)] = 3;
        k.stats[stat::FLOWS_SEEN as usize] = 4;
        k.missed = 2;
        m.kernel(&k);
        k.transitions[usize::from(ts::SYN_SENT) * 16 + usize::from(ts::ESTABLISHED)] = 5;
        m.kernel(&k);
        let flow = match decode(&raw::bytes_of(&raw::flow_end(
            raw::client_flow(&[ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]),
            5_000_000,
        ))) {
            Ok(Event::FlowEnd(f)) => f,
            other => panic!("fixture: {other:?}"),
        };
        m.flow(&flow);
        let text = m.render();
        assert!(
            text.contains(r#"tcptrace_transitions_total{from="SYN_SENT",to="ESTABLISHED"} 5"#),
            "{text}"
        );
        assert!(text.contains("tcptrace_flows_opened_total 4"), "{text}");
        assert!(
            text.contains(r#"tcptrace_flows_closed_total{cause="normal"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcptrace_lost_events_total{reason="skipped_by_kernel"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcptrace_state_duration_seconds_count{state="ESTABLISHED"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
