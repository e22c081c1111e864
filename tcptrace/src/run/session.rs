//! The session driver: the one loop of every live mode. It loads and attaches, drains the
//! ring, handles signals and the deadline, does the housekeeping (eviction, TIME_WAIT seeding
//! and overflow, losses, idle reports, gauges), and pushes every event to a [`Consumer`];
//! at the end it detaches, hands over the last records and the summary.
use std::{io, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::{sleep_until, Instant},
};

use crate::{
    cli::Config,
    host::{clock::Clock, identity_resolver::IdentityResolver, netns::Namespaces},
    kernel::{evict::FlowEvictor, loader::Tracer, rings::EventRings},
    model::{counters::KernelCounters, events::Lifecycle, facts::HostFacts},
    output::consumer::{is_broken_pipe, Begin, Consumer, End, Flow, Seen, Tick},
    run::{
        dispatch::{is_internal, Dispatcher},
        namespace_upkeep::NamespaceUpkeep,
    },
    state::summary::{StartupGap, Summary},
};

/// Records handled per wakeup before other work (signals, timers) gets a turn.
const DRAIN_BATCH: usize = 16_384;
/// How often the housekeeping runs (counters, losses, eviction, the consumer's tick).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Why the loop ended.
enum Stop {
    /// A signal, the deadline, or the consumer (q in `top`).
    Requested,
    /// Handling records failed (a bug: a panic caught in the drain).
    Failed(anyhow::Error),
    /// Standard output was closed: the consumer stays quiet from now on.
    BrokenPipe,
}

/// An output error: a closed pipe stops the session quietly, a caught panic stops it with
/// the error, anything else is returned at once.
fn stop_for(e: io::Error) -> Result<Stop> {
    if is_broken_pipe(&e) {
        Ok(Stop::BrokenPipe)
    } else if is_internal(&e) {
        Ok(Stop::Failed(e.into()))
    } else {
        Err(e).context("writing output")
    }
}

/// Hands memory freed by shrunk maps back to the system (glibc keeps freed heap pages
/// otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs a live session until Ctrl-C, SIGTERM, SIGHUP, `--duration`, a closed pipe or the
/// consumer's stop, on a runtime of its own.
pub fn run<C: Consumer>(config: &Config, consumer: &mut C) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async { Session::start(config, consumer)?.run(consumer).await })
}

/// A loaded and attached session and its housekeeping state.
struct Session<'c> {
    config: &'c Config,
    tracer: Tracer,
    ring: AsyncFd<EventRings>,
    dispatch: Dispatcher,
    started_ns: u64,
    /// Where TIME_WAIT is traced or listeners watched: the namespaces, TIME_WAIT upkeep,
    /// overflow and forecast alerts, listen queues.
    upkeep: Option<NamespaceUpkeep>,
    /// The namespaces' stand-in where TIME_WAIT is not traced.
    no_namespaces: Namespaces,
    evictor: FlowEvictor,
    /// Whether a summary is made at the end.
    summary: bool,
    /// How often TIME_WAIT gauges are handed on, where they are.
    gauges: Option<Duration>,
    reported_lost: u64,
    reported_untracked: u64,
    /// The cgroups the workload filter names now (in the kernel's `WORKLOAD_CGROUPS`).
    workload_cgroups: Vec<u64>,
    /// How long loading and attaching took, and the connections opened meanwhile.
    startup: StartupGap,
}

impl<'c> Session<'c> {
    fn start<C: Consumer>(config: &'c Config, consumer: &C) -> Result<Session<'c>> {
        let wants = consumer.wants();
        let (loading_ns, opens_before) = (Clock::ktime_now(), crate::host::facts::tcp_opens());
        let mut tracer = Tracer::load(&config.plan())?;
        let startup = StartupGap {
            ns: Clock::ktime_now().saturating_sub(loading_ns),
            connections_opened: opens_before
                .zip(crate::host::facts::tcp_opens())
                .map(|(before, after)| after.saturating_sub(before)),
        };
        let ring = tracer.events.take().context("event rings already taken")?;
        // SAFETY: the rings own their epoll fd, which stays open (and the same) until the
        // AsyncFd that owns them is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the event rings with tokio")?;
        // What userspace does with the records, decided here once: a consumer of records as
        // the kernel wrote them (the recorder) leaves decoding, TIME_WAIT, listeners, gauges,
        // eviction and the summary to whoever reads its file (a recording has no way to carry
        // an eviction: a full table counts the flows it could not take as untracked); every
        // other consumer gets them as configured.
        let decodes = !wants.raw;
        let traces_time_wait = config.traces_time_wait() && decodes;
        let host =
            HostFacts::this_host(&tracer.reset_reasons).with_drop_reasons(&tracer.drop_reasons);
        let mut dispatch = Dispatcher::new(host, wants, traces_time_wait);
        dispatch.identities = IdentityResolver::new(config.identity.sources.clone());
        // The summary's durations, close causes and sides, and retransmits by state come from
        // the kernel's counts in every mode: the flows read are not aggregated again.
        dispatch.agg.count_in_kernel();
        dispatch.open_flows = Some(crate::host::netns_reader::open_flows_toward);
        let watches_listeners = config.watches_listeners() && decodes;
        let mut upkeep = (traces_time_wait || watches_listeners)
            .then(|| NamespaceUpkeep::new(watches_listeners));
        if let Some(upkeep) = upkeep.as_mut() {
            upkeep.hand_sockets(&mut dispatch.conntrack);
        }
        if traces_time_wait {
            seed_time_wait(config, &mut dispatch.tw);
        }
        Ok(Session {
            config,
            tracer,
            ring,
            dispatch,
            started_ns: Clock::ktime_now(),
            upkeep,
            no_namespaces: Namespaces::default(),
            evictor: match decodes {
                true => FlowEvictor::for_config(config.flow_memory, config.max_flows),
                false => FlowEvictor::never(),
            },
            summary: config.summary && decodes,
            gauges: config.gauge_interval().filter(|_| decodes),
            reported_lost: 0,
            reported_untracked: 0,
            workload_cgroups: config.filter.workloads.cgroups.clone(),
            startup,
        })
    }

    /// The kernel programs' log, where the consumer wants it on stderr.
    fn kernel_log(&mut self) -> Result<Option<KernelLog>> {
        let wanted = self.dispatch.wants().kernel_log;
        match self.tracer.logger.take().filter(|_| wanted) {
            // SAFETY: as for the ring: the logger owns its ring-buffer fd for its whole life.
            Some(l) => Ok(Some(
                unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
                    .context("registering the kernel log with tokio")?,
            )),
            None => Ok(None),
        }
    }

    /// The consumer's start: the hooks attached and the filters in force.
    fn begin<C: Consumer>(&self, consumer: &mut C) -> Result<()> {
        let hooks = self.tracer.hooks.join(", ");
        let filters = (!self.config.filter.is_empty()).then(|| self.config.filter.describe());
        consumer.begin(&Begin {
            tracer: &self.tracer,
            hooks: &hooks,
            filters: filters.as_deref(),
            host: self.dispatch.host(),
        })?;
        if let Some(missed) = startup_warning(&self.startup) {
            consumer.warning(&missed);
        }
        let workloads = &self.config.filter.workloads;
        if !workloads.is_empty() && self.workload_cgroups.is_empty() {
            consumer.warning(&format!(
                "waiting for pods matching {} on this node: nothing is traced until one \
                 appears (looked for every second)",
                workloads.describe()
            ));
        }
        Ok(())
    }

    /// The TIME_WAIT gauges, every `--interval` of the timewait mode.
    fn send_gauges<C: Consumer>(&mut self, consumer: &mut C) -> io::Result<()> {
        let now = Clock::ktime_now();
        let view = self.dispatch.time_wait_gauges(now);
        consumer.seen(Seen::TimeWaitGauges {
            now_ns: now,
            view: &view,
        })?;
        consumer.flush()
    }

    /// Idle connections, every `--idle-report` interval (a failed read is a warning).
    fn send_idle_report<C: Consumer>(&mut self, consumer: &mut C) -> io::Result<()> {
        let min_idle = self.config.idle_report.unwrap_or_default();
        let filter = &self.config.filter;
        match crate::state::idle::report(min_idle, filter, &mut self.dispatch.identities) {
            Ok(report) => {
                let now_ns = Clock::ktime_now();
                consumer.seen(Seen::IdleReport {
                    now_ns,
                    report: &report,
                })?;
                consumer.flush()
            }
            Err(e) => {
                consumer.warning(&format!("idle report failed: {e:#}"));
                Ok(())
            }
        }
    }

    async fn run<C: Consumer>(mut self, consumer: &mut C) -> Result<()> {
        let mut logger = self.kernel_log()?;
        let mut stops = StopSignals::install()?;
        let mut timers = Timers::new(self.config, self.gauges);
        let mut inputs = consumer.inputs();
        self.begin(consumer)?;
        let deadline = timers.deadline;
        let stop = loop {
            tokio::select! {
                biased;
                _ = stops.recv() => break Stop::Requested,
                _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                    if deadline.is_some() => break Stop::Requested,
                input = next_input(&mut inputs) => match input {
                    Some(input) => {
                        if consumer.input(input, &self.dispatch.tw)? == Flow::Stop {
                            break Stop::Requested;
                        }
                    }
                    None => break Stop::Requested, // the consumer's input is gone
                },
                // The timers before the ring: a ring never empty (a drain slower than the
                // records come) must not starve the once-a-second work.
                _ = next_tick(&mut timers.gauges) => {
                    if let Err(e) = self.send_gauges(consumer) {
                        break stop_for(e)?;
                    }
                }
                _ = timers.housekeeping.tick() => {
                    match self.housekeeping(consumer) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Stop) => break Stop::Requested,
                        Err(e) => match e.downcast::<io::Error>() {
                            Ok(e) => break stop_for(e)?,
                            Err(e) => return Err(e),
                        },
                    }
                }
                _ = next_tick(&mut timers.idle) => {
                    if let Err(e) = self.send_idle_report(consumer) {
                        break stop_for(e)?;
                    }
                }
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("waiting on the event rings")?;
                    match self.dispatch.drain(guard.get_inner_mut(), consumer, DRAIN_BATCH, false) {
                        Ok(true) => {}
                        Ok(false) => guard.clear_ready(),
                        Err(e) => break stop_for(e)?,
                    }
                }
                _ = timers.poll.tick() => {
                    if let Err(e) = self.dispatch.drain(self.ring.get_mut(), consumer, DRAIN_BATCH, false) {
                        break stop_for(e)?;
                    }
                }
                guard = async {
                    match logger.as_mut() {
                        Some(l) => l.readable_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mut guard = guard.context("waiting on the kernel log")?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        };
        self.tracer.detach()?;
        self.end(consumer, stop)
    }

    /// Once a second: the kernel's counters, TIME_WAIT upkeep and overflow, eviction,
    /// untracked flows and losses, then the consumer's tick.
    fn housekeeping<C: Consumer>(&mut self, consumer: &mut C) -> Result<Flow> {
        let kernel = self.tracer.counters()?;
        let now = Clock::ktime_now();
        let traces_time_wait = self.dispatch.traces_time_wait();
        if let Some(upkeep) = self.upkeep.as_mut() {
            let alerts = self.dispatch.wants().alerts;
            upkeep.hurry(self.dispatch.conntrack.take_wanted());
            let tw = traces_time_wait.then_some(&mut self.dispatch.tw);
            let tracer = &self.tracer;
            let identities = std::cell::RefCell::new(&mut self.dispatch.identities);
            upkeep.tick(
                tw,
                consumer,
                now,
                alerts,
                |netns, port| {
                    let (process, cgroup) = tracer.listener_owner(netns, port)?;
                    Some((process, identities.borrow_mut().resolve(cgroup).0))
                },
                release_free_memory,
            )?;
            upkeep.hand_sockets(&mut self.dispatch.conntrack);
            if let Some(said) = self.dispatch.conntrack.take_unsaid() {
                consumer.warning(&said);
            }
            if self.dispatch.namespaces != *upkeep.namespaces() {
                self.dispatch.namespaces = upkeep.namespaces().clone();
            }
        }
        self.dispatch.forget_quiet_failures(now);
        self.tracer.learn_upkeep()?;
        self.follow_workloads(consumer)?;
        self.evict_if_due(consumer, &kernel, now)?;
        let untracked = kernel.stat(tcptrace_common::stat::FLOW_TABLE_FULL);
        if untracked > self.reported_untracked {
            consumer.warning(&format!(
                "{} flows not tracked ({untracked} in all): the flow table is full; raise \
                 --max-flows",
                untracked - self.reported_untracked
            ));
            self.reported_untracked = untracked;
        }
        if kernel.lost() > self.reported_lost {
            let newly = kernel.lost() - self.reported_lost;
            self.reported_lost = kernel.lost();
            consumer.warning(&lost_warning(
                newly,
                self.reported_lost,
                kernel.lost() - kernel.missed,
                kernel.missed,
            ));
            consumer.seen(Seen::Lost {
                now_ns: now,
                newly,
                kernel: &kernel,
            })?;
        }
        let snat = self.dispatch.snat_forecasts(now);
        let listeners = self.upkeep.as_ref().and_then(|u| u.listeners.as_ref());
        for l in listeners.into_iter().flat_map(|w| w.listeners()) {
            self.dispatch.identities.resolve(l.cgroup);
        }
        consumer.tick(&Tick {
            snat: &snat,
            now_ns: now,
            kernel: &kernel,
            tracer: &self.tracer,
            time_wait: &self.dispatch.tw,
            traces_time_wait,
            namespaces: self.namespaces(),
            listeners,
            identities: &self.dispatch.identities,
            host: self.dispatch.host(),
        })
    }

    /// The namespaces holding TIME_WAITs, with their settings.
    fn namespaces(&self) -> &Namespaces {
        self.upkeep
            .as_ref()
            .map_or(&self.no_namespaces, |u| u.namespaces())
    }

    /// An eviction pass when the kernel's flow table is nearly full (said as a warning; the
    /// evicted flows' completed states count in the summary).
    fn evict_if_due<C: Consumer>(
        &mut self,
        consumer: &mut C,
        kernel: &KernelCounters,
        now: u64,
    ) -> Result<()> {
        let Some(due) = self.evictor.due(kernel) else {
            return Ok(());
        };
        let evicted = self.tracer.evict(due)?;
        let newly = evicted.len() as u64;
        self.evictor.evicted += newly;
        for flow in &evicted {
            self.dispatch.agg.evicted_flow(&Lifecycle::try_from(flow)?);
        }
        consumer.warning(&format!(
            "{newly} least recently active flows evicted ({} in all): the flow table \
             (--max-flows {}) was 90% full",
            self.evictor.evicted, self.config.max_flows
        ));
        consumer.seen(Seen::Evicted {
            now_ns: now,
            newly,
            total: self.evictor.evicted,
        })?;
        Ok(())
    }

    /// After detaching: the last records (settled), the summary, the consumer's last word;
    /// then the error that stopped the loop, if one did.
    fn end<C: Consumer>(mut self, consumer: &mut C, stop: Stop) -> Result<()> {
        let mut result = (|| -> Result<()> {
            while self
                .dispatch
                .drain(self.ring.get_mut(), consumer, DRAIN_BATCH, true)?
            {}
            self.dispatch
                .finish_time_waits(consumer, Clock::ktime_now())?;
            Ok(())
        })();
        let kernel = self.tracer.counters()?;
        let summary = match self.summary {
            true => Some(self.summary(&kernel)?),
            false => None,
        };
        if let Err(e) = consumer.finish(&End {
            summary: summary.as_ref(),
            kernel: Some(&kernel),
        }) {
            result = result.and(Err(e));
        }
        match (stop, result) {
            (Stop::Failed(error), _) => Err(error),
            (_, Err(e)) if e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe) => Ok(()),
            (_, other) => other,
        }
    }

    /// The summary: what was aggregated, the open flows left in the kernel and the kernel's
    /// counters (losses are also said on stderr).
    fn summary(&mut self, kernel: &KernelCounters) -> Result<Summary> {
        let agg = &mut self.dispatch.agg;
        agg.count_open(self.tracer.open_flow_count(kernel)?);
        agg.kernel_durations(self.tracer.durations()?);
        if kernel.lost() > 0 {
            eprintln!(
                "tcptrace: warning: {} events lost in all (see the summary's lost line)",
                kernel.lost()
            );
        }
        let elapsed = Clock::ktime_now().saturating_sub(self.started_ns);
        let mut summary = self
            .dispatch
            .summary(kernel, elapsed, self.dispatch.traces_time_wait());
        summary.flows.evicted = self.evictor.evicted;
        summary.filters = (!self.config.filter.is_empty()).then(|| self.config.filter.describe());
        summary.startup = Some(self.startup);
        summary.identities = Some(self.dispatch.identities.cache()).filter(|c| c.cached > 0);
        summary.listen = self
            .upkeep
            .as_ref()
            .and_then(|u| Some(u.listeners.as_ref()?.totals));
        Ok(summary)
    }
}

#[path = "session_workloads.rs"]
mod workloads;

#[path = "session_said.rs"]
mod said;
use said::{lost_warning, startup_warning};

#[path = "session_seed.rs"]
mod seed;
use seed::seed_time_wait;

#[path = "session_clock.rs"]
mod clock;
use clock::{next_input, next_tick, KernelLog, StopSignals, Timers};
