//! `tcptrace report FILE`: renders a recording in any line mode, as the live tool would have
//! (same decoding, TIME_WAIT tracking, alerts and printers), with the recording machine's
//! clock, HZ, keepalive sysctls and reset-reason names; the summary's kernel counters are the
//! last ones recorded.
use std::{
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::{Context as _, Result};

use super::format::{Frame, RecordingReader};
use crate::{
    cli::{Command, Config},
    events::drain::{consume, emit_finished, settle, Sinks},
    events::pipeline::{is_broken_pipe, time_wait_view},
    host::clock::Clock,
    output::{JsonPrinter, Printer, Render, TextPrinter},
    state::aggregate::{Aggregator, KernelCounters},
    state::timewait::TimeWaitTracker,
};

/// How often (in recorded time) pending TIME_WAIT cancels are settled.
const SETTLE_EVERY_NS: u64 = 10_000_000;

pub fn run(path: &Path, config: &Config) -> Result<()> {
    let mut reader = RecordingReader::open(path)?;
    let header = reader.header.clone();
    crate::state::cause::set_reset_reasons(header.reset_reasons.clone());
    crate::state::keepalive::use_recorded(header.hz, header.keepalive_sysctls);
    let clock = Clock::from_parts(header.clock_offset_ns, header.utc_offset_s);
    let out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut printer = if config.json {
        Printer::Json(JsonPrinter::new(out, clock))
    } else {
        Printer::Text(TextPrinter::new(out, clock, config.mode == Command::All))
    };
    if let Some(filters) = &header.filters {
        eprintln!("tcptrace: recorded with filters: only {filters}");
    }
    if config.traces_time_wait() && !header.time_wait {
        eprintln!("tcptrace: warning: TIME_WAIT was not recorded (--no-time-wait)");
    }
    match render(&mut reader, config, &mut printer) {
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe) => Ok(()),
        other => other,
    }
}

fn render<W: Write>(
    reader: &mut RecordingReader<io::BufReader<std::fs::File>>,
    config: &Config,
    printer: &mut Printer<W>,
) -> Result<()> {
    let header = reader.header.clone();
    let mut agg = Aggregator::new();
    let mut tw = TimeWaitTracker::new();
    let mut counters = KernelCounters::default();
    let mut sinks = Sinks {
        printer,
        agg: &mut agg,
        tw: &mut tw,
        metrics: None,
        observer: None,
    };
    let gauge_every = config.gauge_interval().map(|d| d.as_nanos() as u64);
    let mut next_gauge = gauge_every.map(|every| header.started_ktime_ns + every);
    let (mut now, mut settled) = (header.started_ktime_ns, header.started_ktime_ns);
    loop {
        let start = reader.offset;
        let Some(frame) = reader.next_frame()? else {
            break;
        };
        match frame {
            Frame::Record(bytes) => {
                // Where the record ends (the frame's 8-byte head, then the record).
                let at = start + 8 + bytes.len() as u64;
                match consume(&mut sinks, config, bytes)? {
                    Some(ts) => now = now.max(ts),
                    None if sinks.agg.decode_errors() == 1 => {
                        eprintln!("tcptrace: warning: undecodable record before offset {at}")
                    }
                    None => {}
                }
            }
            Frame::Counters(c) => counters = *c,
            Frame::End => break,
        }
        if now >= settled + SETTLE_EVERY_NS {
            settle(&mut sinks, config, now)?;
            settled = now;
        }
        while let (Some(due), Some(every)) = (next_gauge, gauge_every) {
            if now < due {
                break;
            }
            sinks.tw.expire_preexisting(due);
            let view = time_wait_view(sinks.tw, due, header.usable_ports);
            sinks.printer.time_wait_gauges(due, &view)?;
            next_gauge = Some(due + every);
        }
    }
    // What was still pending when the recording ended.
    settle(&mut sinks, config, now + 1_000_000_000)?;
    for finished in sinks.tw.drain_in_progress(now) {
        emit_finished(&mut sinks, config, finished)?;
    }
    if config.summary {
        let mut summary = agg.finish(&counters, now.saturating_sub(header.started_ktime_ns));
        summary.filters = header.filters.clone();
        if config.traces_time_wait() && header.time_wait {
            summary.time_wait = Some(tw.summary());
        }
        printer.summary(&summary)?;
    }
    printer.flush().context("writing output")?;
    Ok(())
}
