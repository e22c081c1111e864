//! drain → decode → aggregate → render: the records read from the ring buffer go to every
//! consumer the mode has (printer, summary, TIME_WAIT tracker, metrics, the live view).
use std::io::{self, Write};

use aya::maps::{MapData, RingBuf};

use tcptrace_common::time_wait;

use crate::{
    cli::Config,
    events::decode::{decode, transition_time, Event, FinishedFlow, Retransmit, Transition},
    events::model::FlowAddrs,
    host::clock::Clock,
    output::metrics::Metrics,
    output::{Printer, Render},
    state::aggregate::Aggregator,
    state::alert::Alert,
    state::timewait::{Finished, TimeWaitEnd, TimeWaitTracker},
};

/// Watches the decoded events beside the printer (`tcptrace top`'s model).
pub trait Observer {
    fn transition(&mut self, t: &Transition);
    fn flow_end(&mut self, f: &FinishedFlow);
    fn retransmit(&mut self, r: &Retransmit);
    /// A new TIME_WAIT (not a re-armed one).
    fn time_wait_entered(&mut self, addrs: &FlowAddrs, ts_ns: u64);
    fn alert(&mut self, alert: &Alert);
}

/// At most this many decode errors are logged one by one.
const DECODE_ERRORS_LOGGED: u64 = 5;

/// Where decoded records go.
pub struct Sinks<'a, W: Write> {
    pub printer: &'a mut Printer<W>,
    pub agg: &'a mut Aggregator,
    pub tw: &'a mut TimeWaitTracker,
    pub metrics: Option<&'a Metrics>,
    /// `tcptrace top`'s model.
    pub observer: Option<&'a mut dyn Observer>,
}

/// Prints a flow whose TIME_WAIT ended (or a TIME_WAIT whose flow was not seen).
pub fn emit_finished<W: Write>(
    sinks: &mut Sinks<W>,
    config: &Config,
    finished: Finished,
) -> io::Result<()> {
    if let Some(m) = sinks.metrics {
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
        Finished::Flow(f) => sinks.printer.flow(&f),
        Finished::Orphan(t) => sinks.printer.time_wait(&t),
    }
}

/// A bug met while handling records (a panic, caught): the caller detaches, sums up what it
/// has and exits with the error.
#[derive(Debug)]
pub struct InternalError(String);

impl std::fmt::Display for InternalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal error while handling records: {}", self.0)
    }
}

impl std::error::Error for InternalError {}

pub fn is_internal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InternalError>())
}

/// `TCPTRACE_TEST_PANIC_IN_DRAIN=1` makes the drain panic once, at its first record: how the
/// tests check that a bug there still detaches every program and prints the summary.
fn panic_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<std::sync::atomic::AtomicBool> =
        std::sync::OnceLock::new();
    let requested = REQUESTED.get_or_init(|| {
        std::sync::atomic::AtomicBool::new(
            std::env::var_os("TCPTRACE_TEST_PANIC_IN_DRAIN").is_some(),
        )
    });
    // A plain load on every record; the swap only the once.
    requested.load(std::sync::atomic::Ordering::Relaxed)
        && requested.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Drains up to `limit` records; returns whether more may be pending. A panic while handling
/// them comes back as an [`InternalError`].
pub fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    sinks: &mut Sinks<W>,
    config: &Config,
    limit: usize,
) -> io::Result<bool> {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drain_batch(ring, sinks, config, limit)
    }));
    caught.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(io::Error::other(InternalError(what)))
    })
}

fn drain_batch<W: Write>(
    ring: &mut RingBuf<MapData>,
    sinks: &mut Sinks<W>,
    config: &Config,
    limit: usize,
) -> io::Result<bool> {
    let mut more = true;
    let mut newest = 0;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            more = false;
            break;
        };
        if panic_requested() {
            panic!("TCPTRACE_TEST_PANIC_IN_DRAIN is set");
        }
        if let Some(ts) = consume(sinks, config, &item)? {
            newest = newest.max(ts);
        }
    }
    // A cancelled TIME_WAIT ended early only if no expiry followed within the settle time:
    // judged against what has been read — up to now when the ring is empty, else up to the
    // newest record (under load, records wait in the ring for up to --poll-interval, and an
    // expiry read in the next batch must still find its cancelled TIME_WAIT).
    let read_up_to = if more { newest } else { Clock::ktime_now() };
    settle(sinks, config, read_up_to)?;
    sinks.printer.flush()?;
    Ok(more)
}

/// One record as the kernel wrote it: decoded and handed to every consumer. Returns its
/// kernel timestamp, when it decoded.
pub fn consume<W: Write>(
    sinks: &mut Sinks<W>,
    config: &Config,
    record: &[u8],
) -> io::Result<Option<u64>> {
    sinks.agg.delivered();
    // Transitions nobody looks at are only checked (a recording holds one per transition).
    let decoded = if sinks.observer.is_none() && !config.shows_transitions() {
        match transition_time(record) {
            Some(Ok(ts)) => return Ok(Some(ts)),
            Some(Err(e)) => Err(e),
            None => decode(record),
        }
    } else {
        decode(record)
    };
    match decoded {
        Ok(event) => {
            let ts = event.ts_ns();
            handle(sinks, config, event)?;
            Ok(Some(ts))
        }
        Err(e) => {
            sinks.agg.decode_error();
            if sinks.agg.decode_errors() <= DECODE_ERRORS_LOGGED {
                log::warn!("undecodable record: {e:#}");
            }
            Ok(None)
        }
    }
}

/// TIME_WAITs cancelled long enough before `now_ns` ended early.
pub fn settle<W: Write>(sinks: &mut Sinks<W>, config: &Config, now_ns: u64) -> io::Result<()> {
    for finished in sinks.tw.settle(now_ns) {
        emit_finished(sinks, config, finished)?;
    }
    Ok(())
}

fn handle<W: Write>(sinks: &mut Sinks<W>, config: &Config, event: Event) -> io::Result<()> {
    match event {
        Event::Transition(t) => {
            if let Some(top) = sinks.observer.as_deref_mut() {
                top.transition(&t);
            }
            if config.shows_transitions() {
                sinks.printer.transition(&t)?;
            }
        }
        Event::FlowEnd(f) => {
            sinks.agg.finished_flow(&f);
            if let Some(top) = sinks.observer.as_deref_mut() {
                top.flow_end(&f);
                if let Some(alert) = Alert::closed(&f) {
                    top.alert(&alert);
                }
            }
            if let Some(alert) = Alert::closed(&f).filter(|_| config.shows_alerts()) {
                sinks.printer.alert(&alert)?;
            }
            // A flow that closed first is printed when its TIME_WAIT ends.
            let ready = if config.traces_time_wait() {
                sinks.tw.flow(f, config.shows_flows())
            } else {
                Some(f)
            };
            if let Some(f) = ready.filter(|_| config.shows_flows()) {
                sinks.printer.flow(&f)?;
            }
        }
        // Sent only where flows are counted in the kernel: the side of a TIME_WAIT.
        Event::TimeWaitFlow(f) => {
            if config.traces_time_wait() {
                sinks.tw.brief_flow(&f);
            }
        }
        Event::TimeWait(r) => match r.what {
            time_wait::START => {
                if let Some(addrs) = r.addrs {
                    if let Some(top) = sinks.observer.as_deref_mut() {
                        if !sinks.tw.rearms(r.timer, &addrs, r.ts_ns) {
                            top.time_wait_entered(&addrs, r.ts_ns);
                        }
                    }
                    if let Some(ended) = sinks.tw.start(r.timer, addrs, r.ts_ns) {
                        emit_finished(sinks, config, ended)?;
                    }
                }
            }
            time_wait::CANCEL => sinks.tw.cancel(r.timer, r.ts_ns, r.in_connect),
            _ => {
                if let Some(finished) = sinks.tw.expire(r.timer, r.ts_ns) {
                    emit_finished(sinks, config, finished)?;
                }
            }
        },
        Event::Retransmit(r) => {
            if config.shows_retransmits() {
                sinks.printer.retransmit(&r)?;
            }
            let alert = Alert::retransmit(&r);
            if let Some(top) = sinks.observer.as_deref_mut() {
                top.retransmit(&r);
                if let Some(alert) = &alert {
                    top.alert(alert);
                }
            }
            if let Some(alert) = alert.filter(|_| config.shows_alerts()) {
                sinks.printer.alert(&alert)?;
            }
        }
        Event::KeepaliveProbe(p) if config.shows_alerts() => {
            sinks.printer.alert(&Alert::KeepaliveProbe(&p))?
        }
        Event::KeepaliveProbe(_) => {}
    }
    Ok(())
}
