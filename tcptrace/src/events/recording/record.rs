//! `tcptrace record -o FILE`: the raw records, as the kernel wrote them, straight from the
//! ring buffer to a file (no decoding, no formatting), with the kernel counters every second;
//! `--max-size` rotates FILE → FILE.1 → … so a long capture cannot fill a disk.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};

use super::format::{counters_payload, frame, FrameWriter, RecordingHeader};
use crate::{
    cli::Config,
    events::pipeline::{async_ring, StopSignals},
    host::clock::Clock,
    kernel::loader::Tracer,
    state::aggregate::KernelCounters,
    state::forecast,
    state::keepalive,
};

/// Where and how much to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    pub path: PathBuf,
    /// Rotate when a file reaches this size.
    pub max_size: Option<u64>,
    /// Files kept in a rotation (FILE, FILE.1, …).
    pub max_files: u32,
}

/// Writes frames to the current file and rotates it.
struct Recorder {
    options: RecordOptions,
    header: RecordingHeader,
    writer: FrameWriter,
    records: u64,
    bytes: u64,
    rotations: u64,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Recorder {
    fn create(options: RecordOptions, header: RecordingHeader) -> Result<Recorder> {
        let writer = FrameWriter::create(&options.path, &header)?;
        Ok(Recorder {
            options,
            header,
            writer,
            records: 0,
            bytes: 0,
            rotations: 0,
        })
    }

    fn write(&mut self, kind: u32, payload: &[u8]) -> Result<()> {
        if let Some(max) = self.options.max_size {
            if self.writer.size + 8 + payload.len() as u64 > max && kind == frame::RECORD {
                self.rotate()?;
            }
        }
        let before = self.writer.size;
        self.writer
            .frame(kind, payload)
            .with_context(|| format!("writing {}", self.options.path.display()))?;
        self.bytes += self.writer.size - before;
        Ok(())
    }

    fn record(&mut self, payload: &[u8]) -> Result<()> {
        self.records += 1;
        self.write(frame::RECORD, payload)
    }

    /// Ends the current file (it stays readable on its own) and starts a new one; the oldest
    /// beyond --max-files is removed.
    fn rotate(&mut self) -> Result<()> {
        let path = self.options.path.clone();
        self.writer
            .frame(frame::END, &[])
            .and_then(|()| self.writer.out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        let keep = self.options.max_files.max(1);
        for n in (1..keep).rev() {
            let from = if n == 1 {
                path.clone()
            } else {
                rotated(&path, n - 1)
            };
            if from.exists() {
                std::fs::rename(&from, rotated(&path, n))
                    .with_context(|| format!("rotating {}", from.display()))?;
            }
        }
        self.rotations += 1;
        self.header.part += 1;
        self.writer = FrameWriter::create(&path, &self.header)?;
        Ok(())
    }

    fn finish(&mut self, counters: &KernelCounters) -> Result<()> {
        self.write(frame::COUNTERS, &counters_payload(counters))?;
        self.write(frame::END, &[])?;
        self.writer
            .out
            .flush()
            .with_context(|| format!("writing {}", self.options.path.display()))
    }
}

fn header(config: &Config, tracer: &Tracer, clock: &Clock) -> RecordingHeader {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let sysctl = |name: &str| read(&format!("/proc/sys/net/ipv4/{name}")).parse().ok();
    let (clock_offset_ns, utc_offset_s) = clock.parts();
    RecordingHeader {
        tcptrace_version: env!("CARGO_PKG_VERSION").into(),
        layout: super::format::Layout::this_build(),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
        clock_offset_ns,
        utc_offset_s,
        started_ktime_ns: Clock::ktime_now(),
        hz: keepalive::hz(),
        keepalive_sysctls: [
            sysctl("tcp_keepalive_time"),
            sysctl("tcp_keepalive_intvl"),
            sysctl("tcp_keepalive_probes"),
        ],
        reset_reasons: tracer.reset_reasons.clone(),
        usable_ports: forecast::host_usable_ports().ok(),
        filters: (!config.filter.is_empty()).then(|| config.filter.describe()),
        time_wait: config.traces_time_wait(),
        part: 0,
    }
}

/// Records until Ctrl-C, SIGTERM, SIGHUP or --duration.
pub fn record(config: Config, options: RecordOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(record_until_stopped(config, options))
}

async fn record_until_stopped(config: Config, options: RecordOptions) -> Result<()> {
    let mut tracer = Tracer::load(&config)?;
    let clock = Clock::now();
    let mut recorder = Recorder::create(options, header(&config, &tracer, &clock))?;
    let mut ring = async_ring(&mut tracer)?;
    let mut stops = StopSignals::install()?;
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut poll = interval(config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported_lost = 0;
    eprintln!(
        "tcptrace: tracing TCP via {} into {} (Ctrl-C to stop)",
        tracer.hooks.join(", "),
        recorder.options.path.display()
    );
    loop {
        tokio::select! {
            biased;
            _ = stops.recv() => break,
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                if !drain(guard.get_inner_mut(), &mut recorder)? {
                    guard.clear_ready();
                }
            }
            _ = poll.tick() => {
                drain(ring.get_mut(), &mut recorder)?;
            }
            _ = tick.tick() => {
                let counters = tracer.counters()?;
                recorder.write(frame::COUNTERS, &counters_payload(&counters))?;
                // At most a second of records is lost if the recorder is killed.
                recorder.writer.out.flush()
                    .with_context(|| format!("writing {}", recorder.options.path.display()))?;
                if counters.lost() > reported_lost {
                    eprintln!(
                        "tcptrace: warning: {} events lost ({} in all; see the report's summary)",
                        counters.lost() - reported_lost,
                        counters.lost()
                    );
                    reported_lost = counters.lost();
                }
            }
        }
    }
    tracer.detach()?;
    while drain(ring.get_mut(), &mut recorder)? {}
    let counters = tracer.counters()?;
    recorder.finish(&counters)?;
    eprintln!(
        "tcptrace: recorded {} records ({:.1} MB written{}) into {}; {} lost",
        recorder.records,
        recorder.bytes as f64 / 1e6,
        if recorder.rotations > 0 {
            format!(", {} rotations", recorder.rotations)
        } else {
            String::new()
        },
        recorder.options.path.display(),
        counters.lost()
    );
    Ok(())
}

/// Copies up to a batch of records; returns whether more may be pending.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    recorder: &mut Recorder,
) -> Result<bool> {
    for _ in 0..crate::events::pipeline::DRAIN_BATCH {
        let Some(item) = ring.next() else {
            return Ok(false);
        };
        recorder.record(&item)?;
    }
    Ok(true)
}
