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
        alert::Alert,
        forecast::TimeWaitView,
        idle::IdleReport,
        listeners::ListenerWatch,
        summary::Summary,
        timewait::{Finished, TimeWaitTracker},
    },
};

/// A consumer's output was closed by its reader (`| head`): the end of the run, not an error.
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Whether the session goes on after a consumer's call.
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
    /// The source NATs' busiest destinations and their forecast.
    pub snat: &'a [crate::state::snat::SnatForecast],
}

/// How the session ended, for the consumer's last word.
pub struct End<'a> {
    /// The summary, where one was asked for (and the records were decoded).
    pub summary: Option<&'a Summary>,
    /// The kernel's last counters (`None` when there is no kernel: `report`).
    pub kernel: Option<&'a KernelCounters>,
}

/// What the driver hands a consumer as it happens: one type for every event, so the seam is
/// one method wide and adding an event adds a variant, not a method to forward everywhere.
#[derive(Clone, Copy)]
pub enum Seen<'a> {
    /// A record as the kernel wrote it (only with `Wants::raw`).
    Raw(&'a [u8]),
    Transition(&'a Transition),
    /// A flow reached CLOSE (before its TIME_WAIT, if it has one: `time_wait`, whose end
    /// comes as `Finished` with the flow).
    FlowClosed {
        flow: &'a FinishedFlow,
        time_wait: bool,
    },
    /// A flow is over, its TIME_WAIT included, or a TIME_WAIT whose flow was not seen ended.
    Finished(&'a Finished),
    Retransmit(&'a Retransmit),
    /// connect() or bind() failed for want of a port (every one; alerts are rate-limited).
    PortFailure(&'a PortFailure),
    /// A TCP packet the kernel dropped (also joined to its flow when that ends).
    PacketDrop(&'a PacketDrop),
    Alert(&'a Alert<'a>),
    /// A new TIME_WAIT (not a re-armed one); only with `Wants::time_wait_entries`.
    TimeWaitEntered {
        addrs: &'a FlowAddrs,
        netns: u32,
        ts_ns: u64,
    },
    /// The TIME_WAIT gauges, every `--interval` of the timewait mode.
    TimeWaitGauges {
        now_ns: u64,
        view: &'a TimeWaitView,
    },
    /// Idle connections, every `--idle-report` interval (`now_ns` is kernel time).
    IdleReport {
        now_ns: u64,
        report: &'a IdleReport,
    },
    /// Records were lost since the last report (`now_ns` is kernel time).
    Lost {
        now_ns: u64,
        newly: u64,
        kernel: &'a KernelCounters,
    },
    /// Flows were evicted from the kernel's table (`total` since start).
    Evicted {
        now_ns: u64,
        newly: u64,
        total: u64,
    },
    /// TIME_WAITs the kernel could not create (`tcp_max_tw_buckets` full) in a network
    /// namespace (its inode).
    TimeWaitOverflowed {
        netns: u32,
        newly: u64,
    },
}

impl Seen<'_> {
    /// What a consumer counting must see before one printing may stop the session (a closed
    /// pipe): the exporter counts a TIME_WAIT, a loss or an eviction before the printer.
    fn counted_first(&self) -> bool {
        matches!(
            self,
            Seen::Finished(_) | Seen::Lost { .. } | Seen::Evicted { .. }
        )
    }
}

/// A consumer of the session (ripgrep's `Sink`): every event through [`Consumer::seen`], and
/// the session's start, ticks, input and end.
///
/// Output returns `io::Result`: a broken pipe ends the session quietly (the driver stops, the
/// consumer stays quiet and says its summary on stderr); any other error ends it with that
/// error.
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

    /// An event, as it happens; a consumer ignores what it does not show.
    fn seen(&mut self, event: Seen) -> io::Result<()>;

    /// Once a second, after the driver's housekeeping.
    fn tick(&mut self, _t: &Tick) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The consumer's own input arrived.
    fn input(&mut self, _input: Self::Input, _time_wait: &TimeWaitTracker) -> Result<Flow> {
        Ok(Flow::Continue)
    }

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
    fn seen(&mut self, event: Seen) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |c| c.seen(event))
    }
    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        self.as_mut().map_or(Ok(Flow::Continue), |c| c.tick(t))
    }
    fn input(&mut self, input: C::Input, time_wait: &TimeWaitTracker) -> Result<Flow> {
        self.as_mut()
            .map_or(Ok(Flow::Continue), |c| c.input(input, time_wait))
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
/// call (the second first where it must be ready or have counted before the first speaks),
/// the first one's input is the pair's, and warnings are the first one's to say.
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
    fn seen(&mut self, event: Seen) -> io::Result<()> {
        if event.counted_first() {
            self.1.seen(event)?;
            self.0.seen(event)
        } else {
            self.0.seen(event)?;
            self.1.seen(event)
        }
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
