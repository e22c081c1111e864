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
    aggregate::Aggregator,
    alert::Alert,
    cli::{Command, Config},
    clock::Clock,
    decode::{decode, Event},
    loader::Tracer,
    render::{JsonPrinter, Printer, Render, TextPrinter},
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
fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    printer: &mut Printer<W>,
    agg: &mut Aggregator,
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
                if config.shows_flows() {
                    printer.flow(&f)?;
                }
                if let Some(alert) = Alert::closed(&f).filter(|_| config.shows_alerts()) {
                    printer.alert(&alert)?;
                }
            }
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
    printer.flush()?;
    Ok(more)
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// `tcptrace idle`: one report, no eBPF.
pub fn idle_once(json: bool, min_idle: Duration) -> Result<()> {
    let report = crate::idle::report(min_idle)?;
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
    let mut agg = Aggregator::new();
    let mut reported_lost = 0u64;

    eprintln!(
        "tcptrace: tracing TCP via {} (Ctrl-C to stop)",
        tracer.hooks.join(", ")
    );

    let stop = loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break Stop::Requested,
            _ = sigterm.recv() => break Stop::Requested,
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => break Stop::Requested,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                match drain(guard.get_inner_mut(), &mut printer, &mut agg, &config, DRAIN_BATCH) {
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = poll.tick() => {
                match drain(ring.get_mut(), &mut printer, &mut agg, &config, DRAIN_BATCH) {
                    Ok(_) => {}
                    Err(e) if is_broken_pipe(&e) => break Stop::BrokenPipe,
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            _ = lost_check.tick() => {
                let kernel = tracer.counters()?;
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
                match crate::idle::report(min_idle) {
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
        started_ns,
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
    started_ns: u64,
) -> Result<()> {
    while drain(ring, printer, agg, config, DRAIN_BATCH)? {}
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
        printer.summary(&agg.finish(&kernel, elapsed))?;
        printer.flush()?;
    }
    Ok(())
}
