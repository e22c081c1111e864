//! The seam between the session driver and what consumes its events (ripgrep's `Sink`): line
//! printers, `top`'s screen, the recorder and the metrics exporter each implement
//! [`Consumer`]; the driver owns the loop and pushes to them. Adding an output never touches
//! the driver.
use std::io;

use anyhow::Result;

use crate::{
    host::{identity_resolver::IdentityResolver, netns::Namespaces},
    kernel::loader::Tracer,
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Retransmit, Transition},
    model::facts::HostFacts,
    model::port_failure::PortFailure,
    model::tcp::FlowAddrs,
    model::vitals::PacketDrop,
    state::{
        aggregate::Summary,
        alert::Alert,
        forecast::TimeWaitView,
        idle::IdleReport,
        listeners::ListenerWatch,
        timewait::{Finished, TimeWaitTracker},
    },
};

/// Whether the session goes on after a consumer's call.
/// A consumer's output was closed by its reader (`| head`): the end of the run, not an error.
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What a consumer asks of the driver; the driver does only the work someone wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// Records as the kernel wrote them, undecoded (the recorder). A raw consumer is handed
    /// nothing else: no decoding, no TIME_WAIT tracking, no summary.
    pub raw: bool,
    /// Every transition, decoded (else transitions are only checked).
    pub transitions: bool,
    /// Finished flows held through their TIME_WAIT (else only their side is counted).
    pub flows: bool,
    /// Alerts made from closes, retransmits and keepalive probes.
    pub alerts: bool,
    /// Each new TIME_WAIT as it begins.
    pub time_wait_entries: bool,
    /// The exhaustion forecast (each namespace's port range and reuse settings are read;
    /// with `alerts`, a forecast crossing its threshold is an alert).
    pub forecast: bool,
    /// The kernel programs' log lines, written to stderr.
    pub kernel_log: bool,
}

impl Wants {
    /// What two consumers want together.
    pub fn union(self, other: Wants) -> Wants {
        Wants {
            raw: self.raw || other.raw,
            transitions: self.transitions || other.transitions,
            flows: self.flows || other.flows,
            alerts: self.alerts || other.alerts,
            time_wait_entries: self.time_wait_entries || other.time_wait_entries,
            forecast: self.forecast || other.forecast,
            kernel_log: self.kernel_log || other.kernel_log,
        }
    }
}

/// What a consumer sees at start-up.
pub struct Begin<'a> {
    pub tracer: &'a Tracer,
    /// The hooks attached, for the start-up line.
    pub hooks: &'a str,
    /// The filters in force, described (`None`: everything is traced).
    pub filters: Option<&'a str>,
    /// This host's HZ, keepalive sysctls and reset-reason names, read once at start.
    pub host: &'a HostFacts,
}

/// What a consumer sees once a second.
pub struct Tick<'a> {
    /// Kernel time.
    pub now_ns: u64,
    pub kernel: &'a KernelCounters,
    /// For what only some consumers read (the state-duration histograms).
    pub tracer: &'a Tracer,
    pub time_wait: &'a TimeWaitTracker,
    /// Whether TIME_WAIT is traced (the tracker's gauges mean something).
    pub traces_time_wait: bool,
    /// The network namespaces holding TIME_WAITs, with the settings the forecast takes its
    /// capacity from (read where the forecast is wanted).
    pub namespaces: &'a Namespaces,
    /// The listeners and their queues, where watched.
    pub listeners: Option<&'a ListenerWatch>,
    /// Who the cgroups are (the listeners' among them, resolved before the tick).
    pub identities: &'a IdentityResolver,
    /// The facts of this host, as the decoder uses them (the kernel's reason names).
    pub host: &'a HostFacts,
}

/// How the session ended, for the consumer's last word.
pub struct End<'a> {
    /// The summary, where one was asked for (and the records were decoded).
    pub summary: Option<&'a Summary>,
    /// The kernel's last counters (`None` when there is no kernel: `report`).
    pub kernel: Option<&'a KernelCounters>,
}

/// Everything a consumer may be handed; each method's default ignores it.
///
/// Output methods return `io::Result`: a broken pipe ends the session quietly (the driver
/// stops, the consumer stays quiet and says its summary on stderr); any other error ends it
/// with that error.
pub trait Consumer {
    /// Input of the consumer's own, read by the driver beside the ring (`top`'s keys).
    type Input;

    fn wants(&self) -> Wants;

    /// The consumer's input channel, taken once at start.
    fn inputs(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Self::Input>> {
        None
    }

    /// Once, after loading and attaching, before the first record.
    fn begin(&mut self, b: &Begin) -> Result<()> {
        eprintln!("tcptrace: tracing TCP via {} (Ctrl-C to stop)", b.hooks);
        if let Some(filters) = b.filters {
            eprintln!("tcptrace: only {filters}");
        }
        Ok(())
    }

    /// A record as the kernel wrote it (only with `Wants::raw`).
    fn raw(&mut self, _record: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn transition(&mut self, _t: &Transition) -> io::Result<()> {
        Ok(())
    }

    /// A flow reached CLOSE (before its TIME_WAIT, if it has one).
    fn flow_closed(&mut self, _f: &FinishedFlow) -> io::Result<()> {
        Ok(())
    }

    /// A flow is over, its TIME_WAIT included, or a TIME_WAIT whose flow was not seen ended.
    fn finished(&mut self, _f: &Finished) -> io::Result<()> {
        Ok(())
    }

    fn retransmit(&mut self, _r: &Retransmit) -> io::Result<()> {
        Ok(())
    }

    /// connect() or bind() failed for want of a port (every one; alerts are rate-limited).
    fn port_failure(&mut self, _p: &PortFailure) -> io::Result<()> {
        Ok(())
    }

    /// A TCP packet the kernel dropped (also joined to its flow when that ends).
    fn packet_drop(&mut self, _d: &PacketDrop) -> io::Result<()> {
        Ok(())
    }

    fn alert(&mut self, _a: &Alert) -> io::Result<()> {
        Ok(())
    }

    /// A new TIME_WAIT (not a re-armed one); only with `Wants::time_wait_entries`.
    fn time_wait_entered(
        &mut self,
        _addrs: &FlowAddrs,
        _netns: u32,
        _ts_ns: u64,
    ) -> io::Result<()> {
        Ok(())
    }

    /// The TIME_WAIT gauges, every `--interval` of the timewait mode.
    fn time_wait_gauges(&mut self, _now_ns: u64, _view: &TimeWaitView) -> io::Result<()> {
        Ok(())
    }

    /// Idle connections, every `--idle-report` interval.
    fn idle_report(&mut self, _now_ns: u64, _report: &IdleReport) -> io::Result<()> {
        Ok(())
    }

    /// Once a second, after the driver's housekeeping.
    fn tick(&mut self, _t: &Tick) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The consumer's own input arrived.
    fn input(&mut self, _input: Self::Input, _time_wait: &TimeWaitTracker) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// Records were lost since the last report (`now_ns` is kernel time).
    fn lost(&mut self, _now_ns: u64, _newly: u64, _kernel: &KernelCounters) -> io::Result<()> {
        Ok(())
    }

    /// Flows were evicted from the kernel's table (`total` since start).
    fn evicted(&mut self, _now_ns: u64, _newly: u64, _total: u64) -> io::Result<()> {
        Ok(())
    }

    /// TIME_WAITs the kernel could not create (`tcp_max_tw_buckets` full) in a network
    /// namespace (its inode).
    fn time_wait_overflowed(&mut self, _netns: u32, _newly: u64) {}

    /// A diagnostic for the user (stderr, unless the consumer owns the terminal).
    fn warning(&mut self, text: &str) {
        eprintln!("tcptrace: warning: {text}");
    }

    /// After each batch of records.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The last call: the summary, once every record is handled.
    fn finish(&mut self, _end: &End) -> Result<()> {
        Ok(())
    }
}

/// A consumer that may be absent (`--metrics` beside a mode).
impl<C: Consumer> Consumer for Option<C> {
    type Input = C::Input;
    fn wants(&self) -> Wants {
        self.as_ref().map(C::wants).unwrap_or_default()
    }
    fn inputs(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<C::Input>> {
        self.as_mut().and_then(C::inputs)
    }
    fn begin(&mut self, b: &Begin) -> Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.begin(b))
    }
    fn raw(&mut self, record: &[u8]) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.raw(record))
    }
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.transition(t))
    }
    fn flow_closed(&mut self, f: &FinishedFlow) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.flow_closed(f))
    }
    fn finished(&mut self, f: &Finished) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.finished(f))
    }
    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.retransmit(r))
    }
    fn port_failure(&mut self, p: &PortFailure) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.port_failure(p))
    }
    fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.packet_drop(d))
    }
    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.alert(a))
    }
    fn time_wait_entered(&mut self, addrs: &FlowAddrs, netns: u32, ts_ns: u64) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |c| c.time_wait_entered(addrs, netns, ts_ns))
    }
    fn time_wait_gauges(&mut self, now_ns: u64, view: &TimeWaitView) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |c| c.time_wait_gauges(now_ns, view))
    }
    fn idle_report(&mut self, now_ns: u64, report: &IdleReport) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |c| c.idle_report(now_ns, report))
    }
    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        self.as_mut().map_or(Ok(Flow::Continue), |c| c.tick(t))
    }
    fn input(&mut self, input: C::Input, time_wait: &TimeWaitTracker) -> Result<Flow> {
        self.as_mut()
            .map_or(Ok(Flow::Continue), |c| c.input(input, time_wait))
    }
    fn lost(&mut self, now_ns: u64, newly: u64, kernel: &KernelCounters) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |c| c.lost(now_ns, newly, kernel))
    }
    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |c| c.evicted(now_ns, newly, total))
    }
    fn time_wait_overflowed(&mut self, netns: u32, newly: u64) {
        if let Some(c) = self.as_mut() {
            c.time_wait_overflowed(netns, newly);
        }
    }
    fn warning(&mut self, text: &str) {
        match self.as_mut() {
            Some(c) => c.warning(text),
            None => eprintln!("tcptrace: warning: {text}"),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), C::flush)
    }
    fn finish(&mut self, end: &End) -> Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.finish(end))
    }
}

/// Two consumers side by side (a mode's own and the metrics exporter): each is handed every
/// call (the second first where it must be ready before the first speaks), the first one's
/// input is the pair's, and warnings are the first one's to say.
impl<A: Consumer, B: Consumer> Consumer for (A, B) {
    type Input = A::Input;
    fn wants(&self) -> Wants {
        self.0.wants().union(self.1.wants())
    }
    fn inputs(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<A::Input>> {
        self.0.inputs()
    }
    fn begin(&mut self, b: &Begin) -> Result<()> {
        // The second (the exporter) binds its port before the first says it is tracing.
        self.1.begin(b)?;
        self.0.begin(b)
    }
    fn raw(&mut self, record: &[u8]) -> io::Result<()> {
        self.0.raw(record)?;
        self.1.raw(record)
    }
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        self.0.transition(t)?;
        self.1.transition(t)
    }
    fn flow_closed(&mut self, f: &FinishedFlow) -> io::Result<()> {
        self.0.flow_closed(f)?;
        self.1.flow_closed(f)
    }
    fn finished(&mut self, f: &Finished) -> io::Result<()> {
        // The exporter counts the TIME_WAIT before a closed pipe can stop the printer.
        self.1.finished(f)?;
        self.0.finished(f)
    }
    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        self.0.retransmit(r)?;
        self.1.retransmit(r)
    }
    fn port_failure(&mut self, p: &PortFailure) -> io::Result<()> {
        self.0.port_failure(p)?;
        self.1.port_failure(p)
    }
    fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        self.0.packet_drop(d)?;
        self.1.packet_drop(d)
    }
    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        self.0.alert(a)?;
        self.1.alert(a)
    }
    fn time_wait_entered(&mut self, addrs: &FlowAddrs, netns: u32, ts_ns: u64) -> io::Result<()> {
        self.0.time_wait_entered(addrs, netns, ts_ns)?;
        self.1.time_wait_entered(addrs, netns, ts_ns)
    }
    fn time_wait_gauges(&mut self, now_ns: u64, view: &TimeWaitView) -> io::Result<()> {
        self.0.time_wait_gauges(now_ns, view)?;
        self.1.time_wait_gauges(now_ns, view)
    }
    fn idle_report(&mut self, now_ns: u64, report: &IdleReport) -> io::Result<()> {
        self.0.idle_report(now_ns, report)?;
        self.1.idle_report(now_ns, report)
    }
    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        let first = self.0.tick(t)?;
        let second = self.1.tick(t)?;
        Ok(if first == Flow::Stop || second == Flow::Stop {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
    fn input(&mut self, input: A::Input, time_wait: &TimeWaitTracker) -> Result<Flow> {
        self.0.input(input, time_wait)
    }
    fn lost(&mut self, now_ns: u64, newly: u64, kernel: &KernelCounters) -> io::Result<()> {
        self.1.lost(now_ns, newly, kernel)?;
        self.0.lost(now_ns, newly, kernel)
    }
    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        self.1.evicted(now_ns, newly, total)?;
        self.0.evicted(now_ns, newly, total)
    }
    fn time_wait_overflowed(&mut self, netns: u32, newly: u64) {
        self.0.time_wait_overflowed(netns, newly);
        self.1.time_wait_overflowed(netns, newly);
    }
    fn warning(&mut self, text: &str) {
        self.0.warning(text);
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
    fn finish(&mut self, end: &End) -> Result<()> {
        self.1.finish(end)?;
        self.0.finish(end)
    }
}
