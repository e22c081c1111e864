//! drain → decode → aggregate → render, until Ctrl-C, SIGTERM, `--duration` or a closed pipe.
use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    cli::filter::FilterSpec,
    cli::{Command, Config},
    events::drain::{drain, emit_finished, is_internal, Sinks},
    host::clock::Clock,
    host::procnet,
    host::sockdiag,
    kernel::loader::Tracer,
    output::metrics::Metrics,
    output::{JsonPrinter, Printer, Render, TextPrinter, TimeWaitView},
    state::aggregate::Aggregator,
    state::evict::FlowEvictor,
    state::forecast,
    state::timewait::{self, TimeWaitTracker},
};

/// Records handled per wakeup before other work (signals, timers) gets a turn.
pub const DRAIN_BATCH: usize = 16_384;
/// How often lost-record counters are checked.
const LOST_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Stop {
    Requested,
    /// Handling records failed (a bug: a panic caught in the drain).
    Failed(anyhow::Error),
    BrokenPipe,
}

pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// `tcptrace idle`: one report, no eBPF.
pub fn idle_once(json: bool, min_idle: Duration, filter: &FilterSpec) -> Result<()> {
    let report = crate::state::idle::report(min_idle, filter)?;
    let out = BufWriter::new(io::stdout().lock());
    let mut printer = if json {
        Printer::Json(JsonPrinter::new(out, Clock::now()))
    } else {
        Printer::Text(TextPrinter::new(out, Clock::now(), false))
    };
    match printer
        .idle_report(Clock::ktime_now(), &report)
        .and_then(|()| printer.flush())
    {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing output"),
        _ => Ok(()),
    }
}

/// The exhaustion forecast of the 10 busiest (local address, destination) pairs, where the
/// port range is known.
fn forecasts(tw: &TimeWaitTracker, now: u64, usable_ports: Option<u32>) -> Vec<forecast::Forecast> {
    usable_ports.map_or_else(Vec::new, |ports| {
        let mut rates = tw.entry_rates(now);
        rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        rates
            .into_iter()
            .take(10)
            .map(|((local, remote), rate)| {
                forecast::forecast(local, remote, rate, ports, timewait::TIME_WAIT_LEN_S)
            })
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

/// Hands memory freed by shrunk maps back to the system (glibc keeps freed heap pages
/// otherwise).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The ring buffer, taken from the tracer and registered with tokio.
pub fn async_ring(tracer: &mut Tracer) -> Result<AsyncFd<RingBuf<MapData>>> {
    let ring = tracer.events.take().context("ring buffer already taken")?;
    // SAFETY: the ring buffer owns its map fd, which stays open (and the same) until the
    // AsyncFd that owns the ring buffer is dropped.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")
}

/// SIGINT, SIGTERM and SIGHUP: each stops tracing, with the summary.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals> {
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(StopSignals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for any of them.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Sockets already in TIME_WAIT count until their remaining time runs out.
pub fn seed_time_wait(config: &Config, tw: &mut TimeWaitTracker) {
    let now = Clock::ktime_now();
    match sockdiag::time_wait() {
        Ok(sockets) => {
            let netns = crate::cli::filter::own_netns();
            tw.preexisting(
                sockets
                    .into_iter()
                    .filter(|s| config.filter.admits_diag(&s.addrs, netns, None))
                    .map(|s| (s.addrs, now + s.expires.as_nanos() as u64)),
            )
        }
        Err(e) => eprintln!("tcptrace: warning: TIME_WAIT sockets from before not counted: {e:#}"),
    }
}

/// An eviction pass when the kernel's flow table is nearly full: returns how many flows it
/// evicted (said on stderr; their completed states count in the summary).
pub fn evict_if_due(
    tracer: &mut Tracer,
    evictor: &mut FlowEvictor,
    kernel: &crate::state::aggregate::KernelCounters,
    agg: &mut Aggregator,
    config: &Config,
) -> Result<Option<u64>> {
    let Some(due) = evictor.due(kernel) else {
        return Ok(None);
    };
    let evicted = tracer.evict(due)?;
    let newly = evicted.len() as u64;
    evictor.evicted += newly;
    for flow in &evicted {
        agg.evicted_flow(flow);
    }
    eprintln!(
        "tcptrace: warning: {newly} least recently active flows evicted ({} in all): the flow \
         table (--max-flows {}) was 90% full",
        evictor.evicted, config.max_flows
    );
    Ok(Some(newly))
}

pub fn run(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(trace(config))
}

async fn trace(config: Config) -> Result<()> {
    let mut tracer = Tracer::load(&config)?;
    let clock = Clock::now();
    let started_ns = Clock::ktime_now();
    let out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut printer = if config.json {
        Printer::Json(JsonPrinter::new(out, clock))
    } else {
        Printer::Text(TextPrinter::new(out, clock, config.mode == Command::All))
    };
    let mut ring = async_ring(&mut tracer)?;
    let mut logger = match tracer.logger.take() {
        // SAFETY: as above: the logger owns its ring-buffer fd for its whole life.
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the kernel log with tokio")?,
        ),
        None => None,
    };
    let mut stops = StopSignals::install()?;
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut poll = interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick of an interval fires at once: skip it so the first report comes after
    // one full interval.
    let mut idle_tick = config
        .idle_report
        .map(|every| tokio::time::interval_at(Instant::now() + every, every));
    let mut lost_check = interval(LOST_CHECK);
    lost_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut metrics = config.metrics.map(|_| Metrics::new());
    if let (Some(addr), Some(m)) = (config.metrics, &metrics) {
        let listener = crate::output::metrics::bind(addr).await?;
        tokio::spawn(Metrics::serve(m.registry(), listener));
    }
    // The summary's durations, close causes and sides, and retransmits by state come from the
    // kernel's counts in every mode (it counts them whether or not it sends the flows): the
    // flows read are not aggregated again.
    let mut agg = Aggregator::new();
    agg.count_in_kernel();
    let mut tw = TimeWaitTracker::new();
    let mut tw_overflow_base = procnet::tw_overflow();
    let forecast_shown = config.gauge_interval().is_some()
        || (config.metrics.is_some() && config.traces_time_wait());
    let usable_ports = match forecast_shown.then_some(()) {
        Some(()) => match forecast::host_usable_ports() {
            Ok(ports) => Some(ports),
            Err(e) => {
                eprintln!("tcptrace: warning: no exhaustion forecast: {e:#}");
                None
            }
        },
        None => None,
    };
    if config.traces_time_wait() {
        seed_time_wait(&config, &mut tw);
    }
    let mut gauge_tick = config
        .gauge_interval()
        .map(|every| tokio::time::interval_at(Instant::now() + every, every));
    let mut reported_lost = 0u64;
    let mut evictor = FlowEvictor::for_config(&config);
    let mut reported_untracked = 0u64;

    eprintln!(
        "tcptrace: tracing TCP via {} (Ctrl-C to stop)",
        tracer.hooks.join(", ")
    );
    if !config.filter.is_empty() {
        eprintln!("tcptrace: only {}", config.filter.describe());
    }

    let stop = loop {
        tokio::select! {
            biased;
            _ = stops.recv() => break Stop::Requested,
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => break Stop::Requested,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let mut sinks = Sinks { printer: &mut printer, agg: &mut agg, tw: &mut tw, metrics: metrics.as_ref(), observer: None };
                match drain(guard.get_inner_mut(), &mut sinks, &config, DRAIN_BATCH) {
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) if is_internal(&e) => break Stop::Failed(e.into()),
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = poll.tick() => {
                let mut sinks = Sinks { printer: &mut printer, agg: &mut agg, tw: &mut tw, metrics: metrics.as_ref(), observer: None };
                match drain(ring.get_mut(), &mut sinks, &config, DRAIN_BATCH) {
                    Ok(_) => {}
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) if is_internal(&e) => break Stop::Failed(e.into()),
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = async {
                match gauge_tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Clock::ktime_now();
                tw.expire_preexisting(now);
                let view = time_wait_view(&tw, now, usable_ports);
                match printer.time_wait_gauges(now, &view).and_then(|()| printer.flush()) {
                    Ok(()) => {}
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = lost_check.tick() => {
                let kernel = tracer.counters()?;
                if config.traces_time_wait() {
                    tw.prune_entry_rates(Clock::ktime_now());
                    if tw.shrink_sparse_maps() {
                        release_free_memory();
                    }
                }
                if let Some(m) = metrics.as_mut() {
                    m.kernel(&kernel);
                    m.durations(&tracer.durations()?);
                    if config.traces_time_wait() {
                        let now = Clock::ktime_now();
                        tw.expire_preexisting(now);
                        m.time_wait_gauges(&tw.gauges(now));
                        m.time_wait_forecasts(&forecasts(&tw, now, usable_ports));
                    }
                }
                if config.traces_time_wait() {
                    if let (Some(base), Some(now)) = (tw_overflow_base, procnet::tw_overflow()) {
                        if now > base {
                            tw.overflows += now - base;
                            if let Some(m) = metrics.as_ref() {
                                m.time_wait_overflowed(now - base);
                            }
                            eprintln!(
                                "tcptrace: warning: {} TIME_WAITs skipped: net.ipv4.tcp_max_tw_buckets \
                                 is full (TCPTimeWaitOverflow)",
                                now - base
                            );
                        }
                        tw_overflow_base = Some(now);
                    }
                }
                if let Some(newly) = evict_if_due(&mut tracer, &mut evictor, &kernel, &mut agg, &config)? {
                    if let Some(m) = metrics.as_ref() {
                        m.evicted(newly);
                    }
                    match printer.evicted(Clock::ktime_now(), newly, evictor.evicted) {
                        Ok(()) => {}
                        Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                        Err(e) => return Err(e).context("writing output"),
                    }
                }
                let untracked = kernel.stat(tcptrace_common::stat::FLOW_TABLE_FULL);
                if untracked > reported_untracked {
                    eprintln!(
                        "tcptrace: warning: {} flows not tracked ({untracked} in all): the flow \
                         table is full; raise --max-flows",
                        untracked - reported_untracked
                    );
                    reported_untracked = untracked;
                }
                if kernel.lost() > reported_lost {
                    let newly = kernel.lost() - reported_lost;
                    reported_lost = kernel.lost();
                    eprintln!(
                        "tcptrace: warning: {newly} events lost ({reported_lost} in all: {} for a \
                         full ring buffer, raise --ring-size or lower --poll-interval; {} skipped \
                         by the kernel while the hook was busy on that CPU)",
                        kernel.lost() - kernel.missed,
                        kernel.missed
                    );
                    match printer.lost(Clock::ktime_now(), newly, &kernel) {
                        Ok(()) => {}
                        Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                        Err(e) => return Err(e).context("writing output"),
                    }
                }
            }
            _ = async {
                match idle_tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                let min_idle = config.idle_report.unwrap_or_default();
                match crate::state::idle::report(min_idle, &config.filter) {
                    Ok(report) => match printer
                        .idle_report(Clock::ktime_now(), &report)
                        .and_then(|()| printer.flush())
                    {
                        Ok(()) => {}
                        Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                        Err(e) => return Err(e).context("writing output"),
                    },
                    Err(e) => eprintln!("tcptrace: warning: idle report failed: {e:#}"),
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

    tracer.detach()?;
    let ends = (started_ns, evictor.evicted);
    let failed = match stop {
        Stop::Requested => None,
        // Detached; what was gathered is still summed up, then the error is said.
        Stop::Failed(error) => Some(error),
        // Nothing more can be printed: the last records are counted, the summary goes to
        // stderr.
        Stop::BrokenPipe => {
            let mut quiet = Printer::Text(TextPrinter::new(io::sink(), clock, false));
            drain_rest(&config, ring.get_mut(), &mut quiet, &mut agg, &mut tw)?;
            if config.summary {
                let summary = summary(&config, &tracer, &mut agg, &tw, ends)?;
                let mut stderr = Printer::Text(TextPrinter::new(io::stderr().lock(), clock, false));
                stderr.summary(&summary)?;
                stderr.flush()?;
            }
            return Ok(());
        }
    };
    let result = finish(
        &config,
        &tracer,
        ring.get_mut(),
        &mut printer,
        &mut agg,
        &mut tw,
        ends,
    );
    match (failed, result) {
        (Some(error), _) => Err(error),
        (None, Err(e)) if e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe) => Ok(()),
        (None, other) => other,
    }
}

/// After detaching: the last records (settled), open flows, the summary.
pub fn finish<W: Write>(
    config: &Config,
    tracer: &Tracer,
    ring: &mut RingBuf<MapData>,
    printer: &mut Printer<W>,
    agg: &mut Aggregator,
    tw: &mut TimeWaitTracker,
    ends: (u64, u64),
) -> Result<()> {
    drain_rest(config, ring, printer, agg, tw)?;
    if config.summary {
        let summary = summary(config, tracer, agg, tw, ends)?;
        printer.summary(&summary)?;
        printer.flush()?;
    }
    Ok(())
}

/// The records still in the ring after detaching; cancels still waiting for an expiry settle
/// now and what remains in TIME_WAIT is in progress.
fn drain_rest<W: Write>(
    config: &Config,
    ring: &mut RingBuf<MapData>,
    printer: &mut Printer<W>,
    agg: &mut Aggregator,
    tw: &mut TimeWaitTracker,
) -> Result<()> {
    // The process is ending: nothing will scrape or look at the screen.
    let mut sinks = Sinks {
        printer,
        agg,
        tw,
        metrics: None,
        observer: None,
    };
    while drain(ring, &mut sinks, config, DRAIN_BATCH)? {}
    let now = Clock::ktime_now();
    for finished in sinks.tw.settle(now + 1_000_000_000) {
        emit_finished(&mut sinks, config, finished)?;
    }
    for finished in sinks.tw.drain_in_progress(now) {
        emit_finished(&mut sinks, config, finished)?;
    }
    sinks.printer.flush()?;
    Ok(())
}

/// The summary: what was aggregated, the open flows left in the kernel's table and the
/// kernel's counters (losses are also said on stderr).
fn summary(
    config: &Config,
    tracer: &Tracer,
    agg: &mut Aggregator,
    tw: &TimeWaitTracker,
    (started_ns, evicted): (u64, u64),
) -> Result<crate::state::aggregate::Summary> {
    let kernel = tracer.counters()?;
    agg.count_open(tracer.open_flow_count(&kernel)?);
    agg.kernel_durations(tracer.durations()?);
    if kernel.lost() > 0 {
        eprintln!(
            "tcptrace: warning: {} events lost in all (see the summary's lost line)",
            kernel.lost()
        );
    }
    let elapsed = Clock::ktime_now().saturating_sub(started_ns);
    let mut summary = agg.finish(&kernel, elapsed);
    summary.flows_evicted = evicted;
    if !config.filter.is_empty() {
        summary.filters = Some(config.filter.describe());
    }
    if config.traces_time_wait() {
        summary.time_wait = Some(tw.summary());
        summary.time_wait_preexisting = tw.preexisting_count();
    }
    Ok(summary)
}
