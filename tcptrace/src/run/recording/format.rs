//! The recording file: a versioned header, then frames of raw ring-buffer records and kernel
//! counter snapshots.
//!
//! ```text
//! offset 0   "TCPTRACE"                        8 bytes
//!            format version (u32 LE)           = FORMAT_VERSION
//!            header length (u32 LE)            N
//!            header (JSON, N bytes)            RecordingHeader
//! then       frame length (u32 LE)             payload bytes
//!            frame kind (u32 LE)               RECORD | COUNTERS | NAMESPACE | IDENTITY | END
//!            payload                           a ring record as the kernel wrote it (native
//!                                              byte order, checked in the header), the
//!                                              kernel counters (JSON), a network
//!                                              namespace's port settings (JSON), or a
//!                                              cgroup's identity (JSON)
//! ```
use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{host::netns::Namespace, model::counters::KernelCounters, model::workload::Identity};

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
pub const FORMAT_VERSION: u32 = 1;
/// Larger headers or frames are not ours (the largest record is a few hundred bytes).
const MAX_HEADER: u32 = 1 << 20;
const MAX_FRAME: u32 = 1 << 16;

pub mod frame {
    pub const RECORD: u32 = 1;
    pub const COUNTERS: u32 = 2;
    pub const END: u32 = 3;
    /// A network namespace holding TIME_WAITs, read (or read again after a change) while
    /// recording: the forecast's capacity.
    pub const NAMESPACE: u32 = 4;
    /// Who a cgroup was (container, pod, unit), written when the recorder first met it: a
    /// report on another machine names the same workloads.
    pub const IDENTITY: u32 = 5;
}

#[path = "layout.rs"]
pub(super) mod layout;
pub use layout::Layout;
use layout::*;

/// What a report needs to know of the machine and the run that recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingHeader {
    pub tcptrace_version: String,
    pub layout: Layout,
    pub kernel: String,
    pub hostname: String,
    /// unix_ns = ktime_ns + clock_offset_ns (sampled at start).
    pub clock_offset_ns: i64,
    pub utc_offset_s: i64,
    pub started_ktime_ns: u64,
    /// CONFIG_HZ, for keepalive settings kept in jiffies.
    pub hz: Option<u64>,
    /// tcp_keepalive_time, _intvl, _probes (the defaults a socket's keepalive falls back on).
    pub keepalive_sysctls: [Option<u64>; 3],
    /// The kernel's reset reasons (enum sk_rst_reason), by value.
    pub reset_reasons: Vec<(u32, String)>,
    /// The kernel's drop reasons (enum skb_drop_reason), by value; absent before layout 5.
    #[serde(default)]
    pub drop_reasons: Vec<(u32, String)>,
    /// The recorder's own namespace's usable ephemeral ports (what layout-1 recordings
    /// forecast with).
    pub usable_ports: Option<u32>,
    /// The namespaces read at start (the recorder's own); later ones come in NAMESPACE
    /// frames. Absent in recordings made before it was added.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// The in-kernel filters in force, in words.
    pub filters: Option<String>,
    /// Whether TIME_WAIT was traced.
    pub time_wait: bool,
    /// This file's number in a rotation (0 for the first).
    pub part: u32,
}

/// Writes the header of a new file.
pub fn write_header(out: &mut impl Write, header: &RecordingHeader) -> io::Result<u64> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&json)?;
    Ok(16 + json.len() as u64)
}

/// Writes one frame; returns its size on disk.
pub fn write_frame(out: &mut impl Write, kind: u32, payload: &[u8]) -> io::Result<u64> {
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(payload)?;
    Ok(8 + payload.len() as u64)
}

pub fn counters_payload(counters: &KernelCounters) -> Vec<u8> {
    // Serialising plain integers cannot fail.
    serde_json::to_vec(counters).unwrap_or_default()
}

/// One frame read back.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A ring-buffer record, borrowed from the reader until its next frame.
    Record(&'a [u8]),
    Counters(Box<KernelCounters>),
    Namespace(Box<Namespace>),
    Identity(Box<Identity>),
    End,
}

/// Reads a recording, checking everything; errors name the file and the offset.
pub struct RecordingReader<R> {
    input: R,
    path: PathBuf,
    pub header: RecordingHeader,
    /// Where the next frame starts.
    pub offset: u64,
    ended: bool,
    /// The last frame's payload when it had to be copied (one buffer for every frame: no
    /// allocation per record).
    payload: Vec<u8>,
    /// Bytes of the last frame still in the input's buffer (borrowed by that frame, consumed
    /// before the next one is read).
    borrowed: usize,
    /// A recording of an older layout: its records are widened as they are read.
    widen: bool,
    widened: Vec<u8>,
}

/// The reader's buffer (see `RecordingReader::open`).
const READ_BUFFER: usize = 128 << 10;

impl RecordingReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // 128 KiB: a buffer that stays in the core's L2 cache until its records are parsed.
        // With 1 MiB, `report` of a 1.07 M-record recording as flows in JSON took 0.42–0.46 s
        // against 0.31–0.40 s (6 alternating runs; the kernel's copy into the buffer alone
        // 0.07–0.16 s of system time against 0.02–0.04 s).
        RecordingReader::new(BufReader::with_capacity(READ_BUFFER, file), path)
    }
}

/// A frame's length and kind, when its 8-byte head is at the front of `bytes`.
fn frame_head(bytes: &[u8]) -> Option<(u32, u32)> {
    let head: &[u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((
        u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
    ))
}

/// Reads exactly `buf.len()` bytes, or says how many there were.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: BufRead> RecordingReader<R> {
    pub fn new(mut input: R, path: &Path) -> Result<Self> {
        let name = path.display();
        let mut start = [0u8; 16];
        let got = read_full(&mut input, &mut start).with_context(|| format!("reading {name}"))?;
        if got == 0 {
            bail!("{name} is empty (offset 0): not a tcptrace recording");
        }
        if got < 8 || &start[..8] != MAGIC {
            bail!("{name} is not a tcptrace recording (no TCPTRACE magic at offset 0)");
        }
        if got < 16 {
            bail!("{name} is truncated at offset {got}: the header's first 16 bytes are not all there");
        }
        let version = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
        if version != FORMAT_VERSION {
            bail!(
                "{name} has format version {version} (offset 8); this tcptrace reads version \
                 {FORMAT_VERSION}"
            );
        }
        let len = u32::from_le_bytes([start[12], start[13], start[14], start[15]]);
        if len > MAX_HEADER {
            bail!("{name}: header length {len} at offset 12 is not plausible (corrupt file)");
        }
        let mut json = vec![0u8; len as usize];
        let got = read_full(&mut input, &mut json).with_context(|| format!("reading {name}"))?;
        if got < json.len() {
            bail!(
                "{name} is truncated at offset {}: the header needs {len} bytes from offset 16",
                16 + got
            );
        }
        let header: RecordingHeader = serde_json::from_slice(&json)
            .with_context(|| format!("{name}: the header at offset 16 is not valid"))?;
        let ours = Layout::this_build();
        let widen = header.layout != ours;
        if !header.layout.readable() {
            bail!(
                "{name} was recorded by tcptrace {} with record layout {:?}; this build's is {:?}: \
                 report it with the tcptrace that recorded it",
                header.tcptrace_version,
                header.layout,
                ours
            );
        }
        Ok(RecordingReader {
            input,
            path: path.to_path_buf(),
            header,
            offset: 16 + u64::from(len),
            ended: false,
            payload: Vec::with_capacity(256),
            borrowed: 0,
            widen,
            widened: Vec::new(),
        })
    }

    /// The next frame; `None` after the end frame. A file cut short (a recorder killed
    /// before it wrote its end frame) is an error naming the offset.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.ended {
            return Ok(None);
        }
        self.input.consume(std::mem::take(&mut self.borrowed));
        let name = self.path.display();
        let at = self.offset;
        // A whole frame in the input's buffer is read where it lies, not copied out (a record
        // is read ~2 M times a second by `report`; the copy was ~5% of its time).
        let buffered = self
            .input
            .fill_buf()
            .with_context(|| format!("reading {name}"))?;
        let whole_record = match frame_head(buffered) {
            Some((len, kind)) if len <= MAX_FRAME && kind == frame::RECORD => {
                Some(8 + len as usize).filter(|&end| buffered.len() >= end)
            }
            _ => None,
        };
        if let Some(end) = whole_record {
            self.borrowed = end;
            self.offset = at + end as u64;
            // The same bytes again: the buffer is not empty, so nothing is read.
            let buffered = self
                .input
                .fill_buf()
                .with_context(|| format!("reading {name}"))?;
            let record = buffered
                .get(8..end)
                .with_context(|| format!("{name}: the frame at offset {at} left the buffer"))?;
            if self.widen {
                return Ok(Some(Frame::Record(widen_record(record, &mut self.widened))));
            }
            return Ok(Some(Frame::Record(record)));
        }
        let mut head = [0u8; 8];
        let got =
            read_full(&mut self.input, &mut head).with_context(|| format!("reading {name}"))?;
        if got == 0 {
            bail!(
                "{name} ends at offset {at} without an end frame: the recording was cut short \
                 (the recorder was killed, or the disk filled)"
            );
        }
        if got < 8 {
            bail!(
                "{name} is truncated at offset {}: a frame header at offset {at} needs 8 bytes",
                at + got as u64
            );
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let kind = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME {
            bail!("{name}: frame at offset {at} claims {len} bytes (corrupt file)");
        }
        let payload = &mut self.payload;
        payload.resize(len as usize, 0);
        let got = read_full(&mut self.input, payload).with_context(|| format!("reading {name}"))?;
        if got < payload.len() {
            bail!(
                "{name} is truncated at offset {}: the frame at offset {at} needs {len} bytes",
                at + 8 + got as u64
            );
        }
        self.offset = at + 8 + u64::from(len);
        match kind {
            frame::RECORD if self.widen => Ok(Some(Frame::Record(widen_record(
                payload,
                &mut self.widened,
            )))),
            frame::RECORD => Ok(Some(Frame::Record(payload))),
            frame::COUNTERS => serde_json::from_slice(payload)
                .map(|c| Some(Frame::Counters(c)))
                .with_context(|| format!("{name}: counters frame at offset {at} is not valid")),
            frame::NAMESPACE => serde_json::from_slice(payload)
                .map(|n| Some(Frame::Namespace(n)))
                .with_context(|| format!("{name}: namespace frame at offset {at} is not valid")),
            frame::IDENTITY => serde_json::from_slice(payload)
                .map(|i| Some(Frame::Identity(i)))
                .with_context(|| format!("{name}: identity frame at offset {at} is not valid")),
            frame::END => {
                self.ended = true;
                Ok(Some(Frame::End))
            }
            other => bail!("{name}: unknown frame kind {other} at offset {at} (corrupt file)"),
        }
    }
}

/// A file being written, counting its size.
pub struct FrameWriter {
    pub out: BufWriter<File>,
    pub size: u64,
}

impl FrameWriter {
    pub fn create(path: &Path, header: &RecordingHeader) -> Result<FrameWriter> {
        let file = File::create(path)
            .with_context(|| format!("cannot create the recording {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // On disk at once: a recorder killed at any point leaves a file that says what it is.
        let size = write_header(&mut out, header)
            .and_then(|size| out.flush().map(|()| size))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(FrameWriter { out, size })
    }

    pub fn frame(&mut self, kind: u32, payload: &[u8]) -> io::Result<()> {
        self.size += write_frame(&mut self.out, kind, payload)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
pub(crate) mod tests;
