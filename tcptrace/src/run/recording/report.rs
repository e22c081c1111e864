//! `tcptrace report FILE`: renders a recording in any line mode, as the live tool would have
//! (same decoding, TIME_WAIT tracking, alerts and printers), with the recording machine's
//! clock, HZ, keepalive sysctls and reset-reason names; the summary's kernel counters are the
//! last ones recorded.
use std::{io, path::Path};

use anyhow::Result;

use super::format::{Frame, RecordingReader};
use crate::{
    cli::Config,
    host::{
        clock::Clock,
        netns::{Namespace, Namespaces, PortSettings},
    },
    model::{counters::KernelCounters, facts::HostFacts},
    output::{
        consumer::{is_broken_pipe, Consumer, End, Seen},
        lines::LinePrinter,
    },
    run::dispatch::Dispatcher,
};

/// The namespaces a recording names: those in its header; for a layout-1 recording, whose
/// TIME_WAITs carry namespace 0, the recorder's ports (its TIME_WAIT of 60 s, as it forecast).
fn recorded_namespaces(header: &super::format::RecordingHeader) -> Namespaces {
    let mut namespaces = Namespaces::default();
    for ns in &header.namespaces {
        namespaces.insert(ns.clone());
    }
    if let Some(usable_ports) = header.usable_ports.filter(|_| header.layout.version == 1) {
        namespaces.insert(Namespace {
            conntrack: None,
            inode: 0,
            name: None,
            own: true,
            settings: Some(PortSettings {
                port_range: (0, 0),
                usable_ports,
                tw_reuse: 0,
                tw_reuse_delay_ms: 1000,
                timestamps: true,
                max_tw_buckets: None,
            }),
        });
    }
    namespaces
}

/// How often (in recorded time) pending TIME_WAIT cancels are settled.
const SETTLE_EVERY_NS: u64 = 10_000_000;

pub fn run(path: &Path, config: &Config) -> Result<()> {
    let mut reader = RecordingReader::open(path)?;
    let header = reader.header.clone();
    let clock = Clock::from_parts(header.clock_offset_ns, header.utc_offset_s);
    if let Some(filters) = &header.filters {
        eprintln!("tcptrace: recorded with filters: only {filters}");
    }
    if config.traces_time_wait() && !header.time_wait {
        eprintln!("tcptrace: warning: TIME_WAIT was not recorded (--no-time-wait)");
    }
    let mut lines = LinePrinter::stdout(config, clock);
    match render(&mut reader, config, &mut lines) {
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(is_broken_pipe) => Ok(()),
        other => other,
    }
}

/// The recording's records through the same dispatch as a live session, in recorded time.
fn render<C: Consumer>(
    reader: &mut RecordingReader<io::BufReader<std::fs::File>>,
    config: &Config,
    consumer: &mut C,
) -> Result<()> {
    let header = reader.header.clone();
    let host = HostFacts::recorded(header.hz, header.keepalive_sysctls, &header.reset_reasons)
        .with_drop_reasons(&header.drop_reasons)
        .with_kernel_release(&header.kernel);
    let mut dispatch = Dispatcher::new(host, consumer.wants(), config.traces_time_wait());
    if header.layout.version < 7 {
        dispatch.tw.keyed_by_timer();
    }
    let mut counters = KernelCounters::default();
    let gauge_every = config.gauge_interval().map(|d| d.as_nanos() as u64);
    let mut next_gauge = gauge_every.map(|every| header.started_ktime_ns + every);
    let mut namespaces = recorded_namespaces(&header);
    dispatch.namespaces = namespaces.clone();
    dispatch.record_filter = (!config.filter.is_empty()).then(|| config.filter.clone());
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
                match dispatch.consume(consumer, bytes)? {
                    Some(ts) => now = now.max(ts),
                    None if dispatch.agg.decode_errors() == 1 => {
                        eprintln!("tcptrace: warning: undecodable record before offset {at}")
                    }
                    None => {}
                }
            }
            Frame::Counters(c) => counters = *c,
            Frame::Namespace(ns) => {
                namespaces.insert(*ns);
                dispatch.namespaces = namespaces.clone();
            }
            Frame::Identity(identity) => dispatch.identities.learn(*identity),
            Frame::End => break,
        }
        if now >= settled + SETTLE_EVERY_NS {
            dispatch.settle(consumer, now)?;
            settled = now;
        }
        while let (Some(due), Some(every)) = (next_gauge, gauge_every) {
            if now < due {
                break;
            }
            let view = dispatch.time_wait_gauges(due);
            consumer.seen(Seen::TimeWaitGauges {
                now_ns: due,
                view: &view,
            })?;
            next_gauge = Some(due + every);
        }
    }
    // What was still pending when the recording ended.
    dispatch.finish_time_waits(consumer, now)?;
    let summary = config.summary.then(|| {
        let elapsed = now.saturating_sub(header.started_ktime_ns);
        let time_wait = config.traces_time_wait() && header.time_wait;
        let mut summary = dispatch.summary(&counters, elapsed, time_wait);
        // The recording's own filters, and the report's.
        let report_filters =
            (!config.filter.is_empty()).then(|| format!("reported: {}", config.filter.describe()));
        summary.filters = match (header.filters.clone(), report_filters) {
            (Some(recorded), Some(reported)) => Some(format!("{recorded}; {reported}")),
            (recorded, reported) => recorded.or(reported),
        };
        summary
    });
    consumer.finish(&End {
        summary: summary.as_ref(),
        kernel: None,
    })
}
