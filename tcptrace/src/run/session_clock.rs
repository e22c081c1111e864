//! The session's clocks and signals: the ring's poll, housekeeping, the idle report and the
//! TIME_WAIT gauges, `--duration`, SIGINT/SIGTERM/SIGHUP, and the consumer's own input.
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{interval, interval_at, Instant, MissedTickBehavior},
};

use super::HOUSEKEEPING;
use crate::cli::Config;

/// SIGINT, SIGTERM and SIGHUP: each stops tracing, with the summary.
pub(super) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn install() -> Result<StopSignals> {
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(StopSignals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for any of them.
    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Waits for the next tick of an optional interval (never, without one).
pub(super) async fn next_tick(timer: &mut Option<tokio::time::Interval>) {
    match timer.as_mut() {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits for the next item of an optional channel (never, without one or once it closed).
pub(super) async fn next_input<T>(inputs: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match inputs.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The kernel programs' log lines, read as they come.
pub(super) type KernelLog = AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// The session's clocks: the ring's poll, the once-a-second housekeeping, the idle report and
/// the TIME_WAIT gauges where asked for, and the deadline of `--duration`.
pub(super) struct Timers {
    pub(super) poll: tokio::time::Interval,
    pub(super) housekeeping: tokio::time::Interval,
    pub(super) idle: Option<tokio::time::Interval>,
    pub(super) gauges: Option<tokio::time::Interval>,
    pub(super) deadline: Option<Instant>,
}

impl Timers {
    pub(super) fn new(config: &Config, gauges: Option<Duration>) -> Timers {
        let mut poll = interval(config.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut housekeeping = interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick of an interval fires at once: these start one full interval in.
        let every = |every: Duration| interval_at(Instant::now() + every, every);
        Timers {
            poll,
            housekeeping,
            idle: config.idle_report.map(every),
            gauges: gauges.map(every),
            deadline: config.duration.map(|d| Instant::now() + d),
        }
    }
}
