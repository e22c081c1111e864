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

use tcptrace_common::time_wait;

use crate::{
    aggregate::Aggregator,
    alert::Alert,
    cli::{Command, Config},
    clock::Clock,
    decode::{decode, Event},
    evict::FlowEvictor,
    filter::FilterSpec,
    forecast,
    loader::Tracer,
    metrics::Metrics,
    procnet,
    render::{JsonPrinter, Printer, Render, TextPrinter, TimeWaitView},
    sockdiag,
    timewait::{self, Finished, TimeWaitEnd, TimeWaitTracker},
};

/// Records handled per wakeup before other work (signals, timers) gets a turn.
const DRAIN_BATCH: usize = 16_384;
/// How often lost-record counters are checked.
const LOST_CHECK: Duration = Duration::from_secs(1);
/// At most this many decode errors are logged one by one.
const DECODE_ERRORS_LOGGED: u64 = 5;

#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Requested,
    BrokenPipe,
}

/// Drains up to `limit` records; returns whether more may be pending.
/// Prints a flow whose TIME_WAIT ended (or a TIME_WAIT whose flow was not seen).
fn emit_finished<W: Write>(
    printer: &mut Printer<W>,
    config: &Config,
    metrics: Option<&Metrics>,
    finished: Finished,
) -> io::Result<()> {
    if let Some(m) = metrics {
        let held = match &finished {
            Finished::Flow(f) => f.time_wait.as_ref().map(|t| (t.held_ns, t.end)),
            Finished::Orphan(t) => Some((t.held_ns, t.end)),
        };
        if let Some((held_ns, _)) = held.filter(|(_, end)| *end != TimeWaitEnd::InProgress) {
            m.time_wait_ended(held_ns);
        }
    }
    if !config.shows_flows() {
        return Ok(());
    }
    match finished {
        Finished::Flow(f) => printer.flow(&f),
        Finished::Orphan(t) => printer.time_wait(&t),
    }
}

fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    printer: &mut Printer<W>,
    agg: &mut Aggregator,
    tw: &mut TimeWaitTracker,
    metrics: Option<&Metrics>,
    config: &Config,
    limit: usize,
) -> io::Result<bool> {
    let mut more = true;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            more = false;
            break;
        };
        agg.delivered();
        let decoded = decode(&item);
        drop(item);
        match decoded {
            Ok(Event::Transition(t)) if config.shows_transitions() => printer.transition(&t)?,
            Ok(Event::FlowEnd(f)) => {
                agg.finished_flow(&f);
                if let Some(m) = metrics {
                    m.flow(&f);
                }
                if let Some(alert) = Alert::closed(&f).filter(|_| config.shows_alerts()) {
                    printer.alert(&alert)?;
                }
                // A flow that closed first is printed when its TIME_WAIT ends.
                let ready = if config.traces_time_wait() {
                    tw.flow(f, config.shows_flows())
                } else {
                    Some(f)
                };
                if let Some(f) = ready.filter(|_| config.shows_flows()) {
                    printer.flow(&f)?;
                }
            }
            Ok(Event::TimeWait(r)) => match r.what {
                time_wait::START => {
                    if let Some(ended) = r.addrs.and_then(|a| tw.start(r.timer, a, r.ts_ns)) {
                        emit_finished(printer, config, metrics, ended)?;
                    }
                }
                time_wait::CANCEL => tw.cancel(r.timer, r.ts_ns, r.in_connect),
                _ => {
                    if let Some(finished) = tw.expire(r.timer, r.ts_ns) {
                        emit_finished(printer, config, metrics, finished)?;
                    }
                }
            },
            Ok(Event::Retransmit(r)) => {
                if config.shows_retransmits() {
                    printer.retransmit(&r)?;
                }
                if let Some(alert) = Alert::retransmit(&r).filter(|_| config.shows_alerts()) {
                    printer.alert(&alert)?;
                }
            }
            Ok(Event::KeepaliveProbe(p)) if config.shows_alerts() => {
                printer.alert(&Alert::KeepaliveProbe(&p))?
            }
            Ok(_) => {}
            Err(e) => {
                agg.decode_error();
                if agg.decode_errors() <= DECODE_ERRORS_LOGGED {
                    log::warn!("undecodable record: {e:#}");
                }
            }
        }
    }
    for finished in tw.settle(Clock::ktime_now()) {
        emit_finished(printer, config, metrics, finished)?;
    }
    printer.flush()?;
    Ok(more)
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// `tcptrace idle`: one report, no eBPF.
pub fn idle_once(json: bool, min_idle: Duration, filter: &FilterSpec) -> Result<()> {
    let report = crate::idle::report(min_idle, filter)?;
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

/// The gauges and, where the port range is known, the exhaustion forecast.
fn time_wait_view(tw: &TimeWaitTracker, now: u64, usable_ports: Option<u32>) -> TimeWaitView {
    let forecasts = usable_ports.map_or_else(Vec::new, |ports| {
        let mut rates = tw.entry_rates(now);
        rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        rates
            .into_iter()
            .take(10)
            .map(|((local, remote), rate)| {
                forecast::forecast(local, remote, rate, ports, timewait::TIME_WAIT_LEN_S)
            })
            .collect()
    });
    TimeWaitView {
        gauges: tw.gauges(now),
        forecasts,
        overflows: tw.overflows,
        preexisting: tw.preexisting_count(),
    }
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
    let ring = tracer.events.take().context("ring buffer already taken")?;
    // SAFETY: the ring buffer owns its map fd, which stays open (and the same) until the
    // AsyncFd that owns the ring buffer is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    let mut logger = match tracer.logger.take() {
        // SAFETY: as above: the logger owns its ring-buffer fd for its whole life.
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the kernel log with tokio")?,
        ),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
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
        let listener = crate::metrics::bind(addr).await?;
        tokio::spawn(Metrics::serve(m.registry(), listener));
    }
    let mut agg = Aggregator::new();
    let mut tw = TimeWaitTracker::new();
    let mut tw_overflow_base = procnet::tw_overflow();
    let usable_ports = match config.gauge_interval() {
        Some(_) => match forecast::host_usable_ports() {
            Ok(ports) => Some(ports),
            Err(e) => {
                eprintln!("tcptrace: warning: no exhaustion forecast: {e:#}");
                None
            }
        },
        None => None,
    };
    if config.traces_time_wait() {
        // Sockets already in TIME_WAIT count until their remaining time runs out.
        let now = Clock::ktime_now();
        match sockdiag::time_wait() {
            Ok(sockets) => {
                let netns = crate::filter::own_netns();
                tw.preexisting(
                    sockets
                        .into_iter()
                        .filter(|s| config.filter.admits_diag(&s.addrs, netns, None))
                        .map(|s| (s.addrs, now + s.expires.as_nanos() as u64)),
                )
            }
            Err(e) => {
                eprintln!("tcptrace: warning: TIME_WAIT sockets from before not counted: {e:#}")
            }
        }
    }
    let mut gauge_tick = config
        .gauge_interval()
        .map(|every| tokio::time::interval_at(Instant::now() + every, every));
    let mut reported_lost = 0u64;
    let mut evictor = FlowEvictor::new(config.max_flows);
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
            _ = sigint.recv() => break Stop::Requested,
            _ = sigterm.recv() => break Stop::Requested,
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => break Stop::Requested,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                match drain(guard.get_inner_mut(), &mut printer, &mut agg, &mut tw, metrics.as_ref(), &config, DRAIN_BATCH) {
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = poll.tick() => {
                match drain(ring.get_mut(), &mut printer, &mut agg, &mut tw, metrics.as_ref(), &config, DRAIN_BATCH) {
                    Ok(_) => {}
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
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
                }
                if let Some(m) = metrics.as_mut() {
                    m.kernel(&kernel);
                    if config.traces_time_wait() {
                        let now = Clock::ktime_now();
                        tw.expire_preexisting(now);
                        m.time_wait_gauges(&tw.gauges(now));
                    }
                }
                if config.traces_time_wait() {
                    if let (Some(base), Some(now)) = (tw_overflow_base, procnet::tw_overflow()) {
                        if now > base {
                            tw.overflows += now - base;
                            eprintln!(
                                "tcptrace: warning: {} TIME_WAITs skipped: net.ipv4.tcp_max_tw_buckets \
                                 is full (TCPTimeWaitOverflow)",
                                now - base
                            );
                        }
                        tw_overflow_base = Some(now);
                    }
                }
                if let Some(due) = evictor.due(&kernel) {
                    let evicted = tracer.evict(due)?;
                    let newly = evicted.len() as u64;
                    evictor.evicted += newly;
                    for flow in &evicted {
                        agg.evicted_flow(flow);
                    }
                    if let Some(m) = metrics.as_ref() {
                        m.evicted(newly);
                    }
                    eprintln!(
                        "tcptrace: warning: {newly} least recently active flows evicted ({} in \
                         all): the flow table (--max-flows {}) was 90% full",
                        evictor.evicted, config.max_flows
                    );
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
                match crate::idle::report(min_idle, &config.filter) {
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
    if stop == Stop::BrokenPipe {
        return Ok(());
    }
    let result = finish(
        &config,
        &tracer,
        ring.get_mut(),
        &mut printer,
        &mut agg,
        &mut tw,
        (started_ns, evictor.evicted),
    );
    match result {
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe) => Ok(()),
        other => other,
    }
}

/// After detaching: the last records, open flows, the summary.
fn finish<W: Write>(
    config: &Config,
    tracer: &Tracer,
    ring: &mut RingBuf<MapData>,
    printer: &mut Printer<W>,
    agg: &mut Aggregator,
    tw: &mut TimeWaitTracker,
    (started_ns, evicted): (u64, u64),
) -> Result<()> {
    let metrics: Option<&Metrics> = None; // the process is ending: nothing will scrape
    while drain(ring, printer, agg, tw, metrics, config, DRAIN_BATCH)? {}
    // Cancels still waiting for an expiry settle now; what remains is in progress.
    let now = Clock::ktime_now();
    for finished in tw.settle(now + 1_000_000_000) {
        emit_finished(printer, config, metrics, finished)?;
    }
    for finished in tw.drain_in_progress(now) {
        emit_finished(printer, config, metrics, finished)?;
    }
    let kernel = tracer.counters()?;
    for flow in tracer.open_flows()? {
        agg.open_flow(&flow);
    }
    if kernel.lost() > 0 {
        eprintln!(
            "tcptrace: warning: {} events lost in all (see the summary's lost line)",
            kernel.lost()
        );
    }
    if config.summary {
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
        printer.summary(&summary)?;
        printer.flush()?;
    }
    Ok(())
}
