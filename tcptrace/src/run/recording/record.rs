//! `tcptrace record -o FILE`: the raw records, as the kernel wrote them, straight from the
//! ring buffer to a file (no decoding, no formatting), with the kernel counters every second;
//! `--max-size` rotates FILE → FILE.1 → … so a long capture cannot fill a disk. The network
//! namespaces that hold TIME_WAITs are read as they appear and written beside the records, so
//! that `report` forecasts each with its own ports.
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::format::{counters_payload, frame, FrameWriter, RecordingHeader};
use crate::{
    cli::{Config, RecordOptions},
    host::{
        clock::Clock, identity_resolver::IdentityResolver, netns::Namespace,
        netns_reader::NamespaceReader,
    },
    kernel::loader::Tracer,
    model::counters::KernelCounters,
    model::{facts::HostFacts, workload::Identity},
    output::consumer::{Begin, Consumer, End, Flow, Seen, Tick, Wants},
};
use tcptrace_common::{record_kind, time_wait, TimeWaitEvent};

/// The recording's current file: writes frames and rotates it.
struct RotatingFile {
    options: RecordOptions,
    header: RecordingHeader,
    writer: FrameWriter,
    records: u64,
    bytes: u64,
    rotations: u64,
    /// The identity frames written so far, written again at the start of each new file.
    identities: Vec<Vec<u8>>,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingFile {
    fn create(options: RecordOptions, header: RecordingHeader) -> Result<RotatingFile> {
        let writer = FrameWriter::create(&options.path, &header)?;
        Ok(RotatingFile {
            options,
            header,
            writer,
            records: 0,
            bytes: 0,
            rotations: 0,
            identities: Vec::new(),
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
        // Each file names the workloads of its records on its own.
        for json in &self.identities {
            self.writer
                .frame(frame::IDENTITY, json)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn identity(&mut self, identity: &Identity) -> Result<()> {
        // Serialising plain fields cannot fail.
        let json = serde_json::to_vec(identity).unwrap_or_default();
        self.write(frame::IDENTITY, &json)?;
        self.identities.push(json);
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

fn header(
    config: &Config,
    tracer: &Tracer,
    host: &HostFacts,
    clock: &Clock,
    namespaces: Vec<Namespace>,
) -> RecordingHeader {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let (clock_offset_ns, utc_offset_s) = clock.parts();
    RecordingHeader {
        tcptrace_version: env!("CARGO_PKG_VERSION").into(),
        layout: super::format::Layout::this_build(),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
        clock_offset_ns,
        utc_offset_s,
        started_ktime_ns: Clock::ktime_now(),
        hz: host.hz,
        keepalive_sysctls: host.keepalive_sysctls,
        reset_reasons: tracer.reset_reasons.clone(),
        drop_reasons: tracer.drop_reasons.clone(),
        usable_ports: namespaces
            .iter()
            .find(|ns| ns.own)
            .and_then(|ns| Some(ns.settings.as_ref()?.usable_ports)),
        namespaces,
        filters: (!config.filter.is_empty()).then(|| config.filter.describe()),
        time_wait: config.traces_time_wait(),
        part: 0,
    }
}

/// The recorder as the session's consumer: the raw records in, the counters every second,
/// the file ended cleanly when the session ends.
pub struct Recorder {
    config: Config,
    options: RecordOptions,
    recorder: Option<RotatingFile>,
    /// Reads the namespaces TIME_WAITs start in (only where TIME_WAIT is recorded).
    namespaces: Option<NamespaceReader>,
    /// Namespaces seen in TIME_WAIT starts since the last tick.
    seen: HashSet<u32>,
    /// Who the records' cgroups are.
    identities: IdentityResolver,
    /// cgroups whose identity frame is written (or given up on), and those still to
    /// resolve with the tries left.
    identified: HashSet<u64>,
    unidentified: HashMap<u64, u32>,
}

/// How many walks of the cgroup tree look for a cgroup before its records keep the bare id.
const IDENTIFY_TRIES: u32 = 5;

/// The owner's cgroup of a record that names one, read in place.
fn record_cgroup(record: &[u8]) -> Option<u64> {
    use std::mem::offset_of;
    use tcptrace_common::{
        KeepaliveProbeEvent, PortFailureEvent, RetransmitEvent, TransitionEvent,
    };
    let kind = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    let at = match kind {
        record_kind::TRANSITION => offset_of!(TransitionEvent, cgroup),
        record_kind::FLOW_END => super::format::layout::FLOW_END_CGROUP,
        record_kind::RETRANSMIT => offset_of!(RetransmitEvent, cgroup),
        record_kind::KEEPALIVE_PROBE => offset_of!(KeepaliveProbeEvent, cgroup),
        record_kind::PORT_FAILURE => offset_of!(PortFailureEvent, cgroup),
        _ => return None,
    };
    let id = u64::from_ne_bytes(record.get(at..at + 8)?.try_into().ok()?);
    (id != 0).then_some(id)
}

/// The namespace of a TIME_WAIT start record, read in place.
fn time_wait_start_netns(record: &[u8]) -> Option<u32> {
    let field = |at: usize| -> Option<[u8; 4]> { record.get(at..at + 4)?.try_into().ok() };
    let kind = u32::from_ne_bytes(field(0)?);
    let what = *record.get(std::mem::offset_of!(TimeWaitEvent, what))?;
    (kind == record_kind::TIME_WAIT && what == time_wait::START).then_some(())?;
    Some(u32::from_ne_bytes(field(std::mem::offset_of!(
        TimeWaitEvent,
        netns
    ))?))
}

impl Recorder {
    pub fn new(config: &Config, options: RecordOptions) -> Recorder {
        Recorder {
            config: config.clone(),
            options,
            recorder: None,
            namespaces: None,
            seen: HashSet::new(),
            identities: IdentityResolver::new(config.identity.sources.clone()),
            identified: HashSet::new(),
            unidentified: HashMap::new(),
        }
    }

    /// Writes the identity of `cgroup` if it resolves now; else tries again at the tick.
    fn identify(&mut self, cgroup: u64) -> io::Result<()> {
        let (workload, _) = self.identities.resolve(cgroup);
        match workload.identity {
            Some(identity) => {
                self.unidentified.remove(&cgroup);
                self.identified.insert(cgroup);
                self.recorder()?.identity(&identity).map_err(io_error)
            }
            None => {
                let tries = self.unidentified.entry(cgroup).or_insert(IDENTIFY_TRIES);
                *tries -= 1;
                if *tries == 0 {
                    // Gone, or outside the tree: its records keep the bare id.
                    self.unidentified.remove(&cgroup);
                    self.identified.insert(cgroup);
                }
                Ok(())
            }
        }
    }

    fn recorder(&mut self) -> io::Result<&mut RotatingFile> {
        self.recorder
            .as_mut()
            .ok_or_else(|| io::Error::other("the recording was not started"))
    }
}

/// A recorder's error as an output error (the session stops with it).
fn io_error(e: anyhow::Error) -> io::Error {
    io::Error::other(format!("{e:#}"))
}

impl Consumer for Recorder {
    type Input = std::convert::Infallible;

    fn wants(&self) -> Wants {
        Wants {
            raw: true,
            ..Wants::default()
        }
    }

    fn begin(&mut self, b: &Begin) -> Result<()> {
        let namespaces = self.config.traces_time_wait().then(NamespaceReader::new);
        let known: Vec<Namespace> = namespaces
            .as_ref()
            .map(|n| n.namespaces.by_inode.values().cloned().collect())
            .unwrap_or_default();
        let header = header(&self.config, b.tracer, b.host, &Clock::now(), known);
        self.namespaces = namespaces;
        let recorder = RotatingFile::create(self.options.clone(), header)?;
        eprintln!(
            "tcptrace: tracing TCP via {} into {} (Ctrl-C to stop)",
            b.hooks,
            recorder.options.path.display()
        );
        self.recorder = Some(recorder);
        Ok(())
    }

    fn seen(&mut self, event: Seen) -> io::Result<()> {
        let Seen::Raw(record) = event else {
            return Ok(());
        };
        if self.namespaces.is_some() {
            if let Some(netns) = time_wait_start_netns(record) {
                self.seen.insert(netns);
            }
        }
        if let Some(cgroup) = record_cgroup(record) {
            if !self.identified.contains(&cgroup) && !self.unidentified.contains_key(&cgroup) {
                self.identify(cgroup)?;
            }
        }
        self.recorder()?.record(record).map_err(io_error)
    }

    fn tick(&mut self, t: &Tick) -> Result<Flow> {
        // cgroups not found at their first record (made since the last walk of the tree): one
        // more walk a second, until they resolve or the recording ends.
        let pending: Vec<u64> = self.unidentified.keys().copied().collect();
        for cgroup in pending {
            self.identify(cgroup)?;
        }
        if let Some(reader) = self.namespaces.as_mut() {
            let refreshed = reader.refresh(self.seen.drain(), Instant::now());
            let recorder = self.recorder()?;
            for ns in refreshed.changed {
                // Serialising plain fields cannot fail.
                let json = serde_json::to_vec(&ns).unwrap_or_default();
                recorder.write(frame::NAMESPACE, &json)?;
            }
        }
        let recorder = self.recorder()?;
        recorder.write(frame::COUNTERS, &counters_payload(t.kernel))?;
        // At most a second of records is lost if the recorder is killed.
        recorder
            .writer
            .out
            .flush()
            .with_context(|| format!("writing {}", recorder.options.path.display()))?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, end: &End) -> Result<()> {
        let Some(recorder) = self.recorder.as_mut() else {
            return Ok(());
        };
        let counters = end.kernel.cloned().unwrap_or_default();
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
}
