//! `tcptrace top`: the live full-screen view (ratatui + crossterm). The same programs, filters
//! and pipeline as every mode; records feed a [`TopModel`] instead of a printer, the screen is
//! redrawn every second and on each key, and the usual summary is printed once the terminal is
//! restored — on q, Ctrl-C, SIGINT/SIGTERM/SIGHUP, `--duration`, and (ratatui's panic hook) a
//! panic.
use std::{
    io::{self, BufWriter, IsTerminal as _},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ratatui::{crossterm::event::Event as TermEvent, DefaultTerminal};
use tokio::{
    sync::mpsc,
    time::{interval, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    cli::Config,
    events::decode::{FinishedFlow, Retransmit, Transition},
    events::drain::{drain, Observer, Sinks},
    events::model::FlowAddrs,
    events::pipeline::{
        async_ring, evict_if_due, finish, seed_time_wait, StopSignals, DRAIN_BATCH,
    },
    host::clock::Clock,
    host::procnet,
    host::sockdiag,
    kernel::loader::Tracer,
    output::{Printer, TextPrinter},
    state::aggregate::Aggregator,
    state::alert::Alert,
    state::evict::FlowEvictor,
    state::forecast,
    state::timewait::TimeWaitTracker,
};

mod model;
mod view;

use model::TopModel;
use view::{KeyOutcome, Snapshot, ViewState};

impl Observer for TopModel {
    fn transition(&mut self, t: &Transition) {
        TopModel::transition(self, t);
    }
    fn flow_end(&mut self, f: &FinishedFlow) {
        TopModel::flow_end(self, f);
    }
    fn retransmit(&mut self, r: &Retransmit) {
        TopModel::retransmit(self, r);
    }
    fn time_wait_entered(&mut self, addrs: &FlowAddrs, ts_ns: u64) {
        TopModel::time_wait_entered(self, addrs, ts_ns);
    }
    fn alert(&mut self, alert: &Alert) {
        TopModel::alert(self, alert);
    }
}

/// How often the screen is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

pub fn run(config: Config) -> Result<()> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        bail!(
            "top needs a terminal (stdin and stdout are not both one); for pipes and files use a \
             line mode: tcptrace flows, alerts or timewait (--json for machines)"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(trace(config))
}

/// Leaves the alternate screen and raw mode when dropped (every exit path but a panic, which
/// ratatui's panic hook covers).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Keys and resizes, read on a thread of their own (crossterm's read blocks).
fn terminal_events() -> mpsc::UnboundedReceiver<TermEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = ratatui::crossterm::event::read() {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    rx
}

/// Open sockets and the kernel counters at that moment: flows open by state and per row start
/// from what is there, not from zero.
fn seed(config: &Config, tracer: &Tracer, top: &mut TopModel) -> Result<()> {
    let counters = tracer.counters()?;
    match sockdiag::open_sockets() {
        Ok(sockets) => {
            let netns = crate::cli::filter::own_netns();
            top.seed(
                sockets
                    .into_iter()
                    .filter(|s| config.filter.admits_diag(&s.addrs, netns, None))
                    .map(|s| (s.state, s.addrs)),
                counters,
            );
        }
        Err(e) => {
            eprintln!("tcptrace: warning: sockets open before start not counted: {e:#}");
            top.seed(std::iter::empty(), counters);
        }
    }
    Ok(())
}

fn redraw(
    terminal: &mut DefaultTerminal,
    view: &ViewState,
    top: &TopModel,
    tw: &TimeWaitTracker,
    clock: &Clock,
    filters: Option<&str>,
) -> Result<()> {
    let now_ns = Clock::ktime_now();
    let snapshot = Snapshot {
        now_ns,
        clock,
        header: &top.header,
        rows: view.arrange(top.rows(view.kind, now_ns, tw.live_addrs())),
        alerts: top.alerts().collect(),
        filters,
    };
    terminal
        .draw(|frame| view::draw(frame, view, &snapshot))
        .context("drawing the screen")?;
    Ok(())
}

async fn trace(config: Config) -> Result<()> {
    let mut tracer = Tracer::load(&config)?;
    let clock = Clock::now();
    let started_ns = Clock::ktime_now();
    let mut ring = async_ring(&mut tracer)?;
    // Kernel-side log lines would be written across the screen: not read here.
    drop(tracer.logger.take());
    let mut stops = StopSignals::install()?;
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut poll = interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut refresh = interval(REFRESH);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let usable_ports = match forecast::host_usable_ports() {
        Ok(ports) => Some(ports),
        Err(e) => {
            eprintln!("tcptrace: warning: no exhaustion forecast: {e:#}");
            None
        }
    };
    let mut top = TopModel::new(usable_ports);
    let mut agg = Aggregator::new();
    let mut tw = TimeWaitTracker::new();
    if config.traces_time_wait() {
        seed_time_wait(&config, &mut tw);
    }
    seed(&config, &tracer, &mut top)?;
    let mut tw_overflow_base = procnet::tw_overflow();
    let mut evictor = FlowEvictor::for_config(&config);
    let filters = (!config.filter.is_empty()).then(|| config.filter.describe());
    // Nothing is printed while the screen is up; the summary goes to stdout afterwards.
    let mut quiet = Printer::Text(TextPrinter::new(io::sink(), clock, false));
    let mut view = ViewState::default();
    eprintln!(
        "tcptrace: tracing TCP via {} (q to stop)",
        tracer.hooks.join(", ")
    );

    let mut keys = terminal_events();
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let restore = RestoreTerminal;
    // A failure while handling records (a bug: a caught panic) ends the view like q does,
    // with the summary, then the error.
    let failed = loop {
        tokio::select! {
            biased;
            _ = stops.recv() => break None,
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => break None,
            key = keys.recv() => match key {
                Some(TermEvent::Key(key)) => match view.handle_key(key) {
                    KeyOutcome::Quit => break None,
                    KeyOutcome::Redraw => redraw(&mut terminal, &view, &top, &tw, &clock, filters.as_deref())?,
                    KeyOutcome::Ignored => {}
                },
                Some(TermEvent::Resize(..)) => {
                    redraw(&mut terminal, &view, &top, &tw, &clock, filters.as_deref())?
                }
                Some(_) => {}
                None => break None, // the terminal is gone
            },
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let mut sinks = Sinks { printer: &mut quiet, agg: &mut agg, tw: &mut tw, metrics: None, observer: Some(&mut top) };
                match drain(guard.get_inner_mut(), &mut sinks, &config, DRAIN_BATCH) {
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                    Err(e) => break Some(e),
                }
            }
            _ = poll.tick() => {
                let mut sinks = Sinks { printer: &mut quiet, agg: &mut agg, tw: &mut tw, metrics: None, observer: Some(&mut top) };
                if let Err(e) = drain(ring.get_mut(), &mut sinks, &config, DRAIN_BATCH) {
                    break Some(e);
                }
            }
            _ = refresh.tick() => {
                let kernel = tracer.counters()?;
                let now = Clock::ktime_now();
                tw.expire_preexisting(now);
                tw.prune_entry_rates(now);
                if tw.shrink_sparse_maps() {
                    crate::events::pipeline::release_free_memory();
                }
                if let (Some(base), Some(total)) = (tw_overflow_base, procnet::tw_overflow()) {
                    tw.overflows += total.saturating_sub(base);
                    tw_overflow_base = Some(total);
                }
                evict_if_due(&mut tracer, &mut evictor, &kernel, &mut agg, &config)?;
                let live = tw.live_addrs().count() as u64;
                top.tick(kernel, now, (live, tw.overflows));
                redraw(&mut terminal, &view, &top, &tw, &clock, filters.as_deref())?;
            }
        }
    };
    let _ = terminal.show_cursor();
    drop(restore);
    tracer.detach()?;
    let out = BufWriter::new(io::stdout().lock());
    let mut printer = Printer::Text(TextPrinter::new(out, clock, false));
    let result = finish(
        &config,
        &tracer,
        ring.get_mut(),
        &mut printer,
        &mut agg,
        &mut tw,
        (started_ns, evictor.evicted),
    );
    if let Some(error) = failed {
        return Err(error).context("handling records");
    }
    match result {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(crate::events::pipeline::is_broken_pipe) =>
        {
            Ok(())
        }
        other => other,
    }
}
