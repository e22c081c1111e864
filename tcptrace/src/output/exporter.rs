//! The metrics exporter's consumer (`--metrics ADDR`, beside any mode, or alone in `tcptrace
//! metrics`): serves the registry over HTTP, follows the kernel's counts and the TIME_WAIT
//! tracker every second, and times each TIME_WAIT that ends.
use std::{io, net::SocketAddr};

use anyhow::{Context as _, Result};

use crate::{
    cli::Config,
    output::consumer::{Begin, Consumer, Flow, Seen, Tick, Wants},
    output::metrics::Metrics,
    state::{
        forecast::forecasts,
        timewait::{Finished, TimeWaitEnd},
    },
};

/// Metrics, and where they are served.
pub struct MetricsExporter {
    metrics: Metrics,
    addr: SocketAddr,
    /// The mode traces TIME_WAIT (its gauges and forecast are exported).
    time_wait: bool,
}

impl MetricsExporter {
    /// The exporter `--metrics` asks for, if it does.
    pub fn for_config(config: &Config) -> Option<MetricsExporter> {
        config.metrics.map(|addr| MetricsExporter {
            metrics: Metrics::new(
                config
                    .identity
                    .metrics_labels
                    .then_some(config.identity.metrics_max_workloads),
            ),
            addr,
            time_wait: config.traces_time_wait(),
        })
    }
}

impl Consumer for MetricsExporter {
    type Input = std::convert::Infallible;

    fn wants(&self) -> Wants {
        Wants {
            forecast: self.time_wait,
            ..Wants::default()
        }
    }

    /// Binds the endpoint (an address in use is an error before anything is traced) and
    /// serves it on the session's runtime.
    fn begin(&mut self, _b: &Begin) -> Result<()> {
        let listener = std::net::TcpListener::bind(self.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .with_context(|| format!("cannot listen for --metrics on {}", self.addr))?;
        tokio::spawn(crate::output::metrics_http::serve(
            self.metrics.registry(),
            listener,
        ));
        // Tracing's own namespace has its overflow series from the start (at 0), so that
        // rates over it answer before the first overflow.
        if let Some(own) = crate::host::netns::own_netns().filter(|_| self.time_wait) {
            self.metrics.time_wait.overflowed(own, 0);
        }
        Ok(())
    }

    fn seen(&mut self, event: Seen) -> io::Result<()> {
        match event {
            Seen::FlowClosed { flow, .. } => self.metrics.flow_closed(flow),
            Seen::Finished(f) => {
                let held = match f {
                    Finished::Flow(f) => f.time_wait.as_ref().map(|t| (t.held_ns, t.end)),
                    Finished::Orphan(t) => Some((t.held_ns, t.end)),
                };
                let ended = |end: &TimeWaitEnd| {
                    !matches!(end, TimeWaitEnd::InProgress | TimeWaitEnd::Overflow)
                };
                if let Some((held_ns, _)) = held.filter(|(_, end)| ended(end)) {
                    self.metrics.time_wait.ended(held_ns);
                }
            }
            Seen::Evicted { newly, .. } => self.metrics.evicted(newly),
            Seen::PortFailure(p) => self.metrics.port_failure(p),
            Seen::TimeWaitOverflowed { netns, newly } => {
                self.metrics.time_wait.overflowed(netns, newly)
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        self.metrics.kernel(t.kernel);
        self.metrics.kernel_drops(&t.kernel.drop_reasons, t.host);
        self.metrics.durations(&t.tracer.durations()?);
        if let Some(watch) = t.listeners {
            self.metrics.listeners(watch, t.identities);
        }
        self.metrics.conntrack(t.namespaces);
        self.metrics.snat(t.snat);
        if t.traces_time_wait {
            self.metrics.time_wait.gauges(&t.time_wait.gauges(t.now_ns));
            self.metrics
                .time_wait
                .forecasts(&forecasts(t.time_wait, t.now_ns, t.namespaces));
        }
        Ok(Flow::Continue)
    }
}
