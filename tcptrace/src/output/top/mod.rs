//! `tcptrace top`: the live full-screen view (ratatui + crossterm), a consumer of the session
//! like every mode: records feed a [`TopModel`], the screen is redrawn every second and on
//! each key, and the usual summary is printed once the terminal is restored — on q, Ctrl-C,
//! SIGINT/SIGTERM/SIGHUP, `--duration`, and (ratatui's panic hook) a panic. Warnings met
//! while the screen is up are said after it is restored.
use std::io::{self, BufWriter, IsTerminal as _};

use anyhow::{bail, Context as _, Result};
use ratatui::{crossterm::event::Event as TermEvent, DefaultTerminal};
use tokio::sync::mpsc;

use crate::{
    cli::Config,
    host::{clock::Clock, netns_sockets::in_every_namespace, sockdiag},
    kernel::loader::Tracer,
    output::consumer::{Begin, Consumer, End, Flow, Seen, Tick, Wants},
    output::TextPrinter,
    state::timewait::TimeWaitTracker,
};

mod model;
mod rate_window;
mod view;

use model::{TopModel, OPEN_SAMPLE_EVERY_S};
use view::{KeyOutcome, Snapshot, ViewState};

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
/// from what is there, not from zero — in every network namespace (a node's pods each have
/// their own).
fn seed(config: &Config, tracer: &Tracer, top: &mut TopModel) -> Result<()> {
    let counters = tracer.counters()?;
    let found = in_every_namespace(sockdiag::open_sockets);
    if !found.unread.is_empty() {
        eprintln!(
            "tcptrace: warning: sockets open before start not counted in {} network \
             namespaces (the first: {} — {})",
            found.unread.len(),
            found.unread[0].0,
            found.unread[0].1
        );
    }
    top.seed(
        found
            .sockets
            .into_iter()
            .filter(|(netns, s)| config.filter.admits_diag(&s.addrs, Some(*netns), None))
            .map(|(_, s)| (s.state, s.addrs)),
        counters,
    );
    Ok(())
}

/// The open ESTABLISHED flows' RTTs, read from `tcp_info` (one sock_diag dump in each network
/// namespace, every few seconds), under the filters in force.
fn sample_open_rtts(config: &Config, top: &mut TopModel) {
    let found = in_every_namespace(sockdiag::established_with_info);
    top.open_rtts(
        found
            .sockets
            .into_iter()
            .filter(|(netns, s)| config.filter.admits_diag(&s.addrs, Some(*netns), None))
            .filter_map(|(_, s)| Some((s.addrs, s.rtt_us?))),
    );
}

/// The screen and what it shows.
pub struct TopScreen {
    config: Config,
    clock: Clock,
    model: TopModel,
    view: ViewState,
    filters: Option<String>,
    /// Up between `begin` and `finish` (restored when dropped on an error).
    terminal: Option<DefaultTerminal>,
    /// Warnings held while the screen is up.
    warnings: Vec<String>,
    /// When the open flows' RTTs are read next (kernel time).
    next_rtt_sample_ns: u64,
}

impl TopScreen {
    /// Refuses anything but a terminal on both stdin and stdout.
    pub fn new(config: &Config) -> Result<TopScreen> {
        if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
            bail!(
                "top needs a terminal (stdin and stdout are not both one); for pipes and files \
                 use a line mode: tcptrace flows, alerts or timewait (--json for machines)"
            );
        }
        Ok(TopScreen {
            config: config.clone(),
            clock: Clock::now(),
            model: TopModel::new(),
            view: ViewState::default(),
            filters: None,
            terminal: None,
            warnings: Vec::new(),
            next_rtt_sample_ns: 0,
        })
    }

    fn redraw(&mut self, tw: &TimeWaitTracker) -> Result<()> {
        let Some(terminal) = self.terminal.as_mut() else {
            return Ok(());
        };
        let now_ns = Clock::ktime_now();
        // Keys sort by the columns this screen shows.
        if let Ok(size) = terminal.size() {
            self.view.fit_width(size.width);
        }
        let snapshot = Snapshot {
            now_ns,
            clock: &self.clock,
            header: &self.model.header,
            rows: self
                .view
                .arrange(self.model.rows(self.view.kind, now_ns, tw.live_addrs())),
            alerts: self.model.alerts().collect(),
            filters: self.filters.as_deref(),
        };
        let view = &self.view;
        terminal
            .draw(|frame| view::draw(frame, view, &snapshot))
            .context("drawing the screen")?;
        Ok(())
    }

    /// Leaves the alternate screen and raw mode.
    fn restore(&mut self) {
        if let Some(mut terminal) = self.terminal.take() {
            let _ = terminal.show_cursor();
            ratatui::restore();
        }
    }
}

impl Drop for TopScreen {
    fn drop(&mut self) {
        self.restore();
    }
}

impl Consumer for TopScreen {
    type Input = TermEvent;

    fn wants(&self) -> Wants {
        Wants {
            transitions: true,
            alerts: true,
            time_wait_entries: true,
            forecast: true,
            ..Wants::default()
        }
    }

    fn inputs(&mut self) -> Option<mpsc::UnboundedReceiver<TermEvent>> {
        Some(terminal_events())
    }

    fn begin(&mut self, b: &Begin) -> Result<()> {
        self.model = TopModel::new();
        self.filters = b.filters.map(str::to_string);
        seed(&self.config, b.tracer, &mut self.model)?;
        eprintln!("tcptrace: tracing TCP via {} (q to stop)", b.hooks);
        self.terminal = Some(ratatui::try_init().context("setting up the terminal")?);
        Ok(())
    }

    fn seen(&mut self, event: Seen) -> io::Result<()> {
        match event {
            Seen::Transition(t) => self.model.transition(t),
            Seen::FlowClosed { flow, time_wait } => self.model.flow_end(flow, time_wait),
            Seen::Retransmit(r) => self.model.retransmit(r),
            Seen::PortFailure(p) => self.model.port_failure(p),
            Seen::Alert(a) => self.model.alert(a),
            Seen::TimeWaitEntered {
                addrs,
                netns,
                ts_ns,
            } => self.model.time_wait_entered(addrs, netns, ts_ns),
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        let live = t.time_wait.live_addrs().count() as u64;
        self.model
            .forget_ended_time_waits(t.time_wait.live_addrs().map(|(addrs, _)| addrs));
        self.model.set_namespaces(t.namespaces);
        self.model.header.busiest_snat = (t.snat.iter())
            .max_by(|a, b| a.utilization.total_cmp(&b.utilization))
            .map(|f| f.brief());
        if let Some(watch) = t.listeners {
            self.model.set_listeners(watch, t.now_ns);
        }
        self.model
            .tick(t.kernel.clone(), t.now_ns, (live, t.time_wait.overflows));
        if t.now_ns >= self.next_rtt_sample_ns {
            self.next_rtt_sample_ns = t.now_ns + OPEN_SAMPLE_EVERY_S * 1_000_000_000;
            sample_open_rtts(&self.config, &mut self.model);
        }
        self.redraw(t.time_wait)?;
        Ok(Flow::Continue)
    }

    fn input(&mut self, input: TermEvent, tw: &TimeWaitTracker) -> Result<Flow> {
        match input {
            TermEvent::Key(key) => match self.view.handle_key(key) {
                KeyOutcome::Quit => return Ok(Flow::Stop),
                KeyOutcome::Redraw => self.redraw(tw)?,
                KeyOutcome::Ignored => {}
            },
            TermEvent::Resize(..) => self.redraw(tw)?,
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn warning(&mut self, text: &str) {
        match self.terminal {
            Some(_) => self.warnings.push(text.to_string()),
            None => eprintln!("tcptrace: warning: {text}"),
        }
    }

    /// Restores the terminal, says the warnings held, prints the summary on stderr (as every
    /// mode in columns does).
    fn finish(&mut self, end: &End) -> Result<()> {
        self.restore();
        for text in self.warnings.drain(..) {
            eprintln!("tcptrace: warning: {text}");
        }
        let Some(summary) = end.summary else {
            return Ok(());
        };
        let mut printer = TextPrinter::new(BufWriter::new(io::stderr().lock()), self.clock, false);
        match printer.summary(summary).and_then(|()| printer.flush()) {
            Err(e) if crate::output::consumer::is_broken_pipe(&e) => Ok(()),
            other => other.context("writing output"),
        }
    }
}
