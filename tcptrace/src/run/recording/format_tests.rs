use super::*;
use tcptrace_common::{record_kind, FlowEndEvent, TransitionEvent};

pub fn header() -> RecordingHeader {
    RecordingHeader {
        tcptrace_version: "0.1.0".into(),
        layout: Layout::this_build(),
        kernel: "6.18.0-test".into(),
        hostname: "host".into(),
        clock_offset_ns: 1_700_000_000_000_000_000,
        utc_offset_s: 0,
        started_ktime_ns: 5,
        hz: Some(250),
        keepalive_sysctls: [Some(7200), Some(75), Some(9)],
        reset_reasons: vec![(15, "TCP_KEEPALIVE_TIMEOUT".into())],
        drop_reasons: vec![(12, "SKB_DROP_REASON_NETFILTER_DROP".into())],
        usable_ports: Some(28_232),
        namespaces: Vec::new(),
        filters: None,
        time_wait: true,
        part: 0,
    }
}

/// A whole recording in memory: the header, `records`, a counters frame, the end frame.
pub fn recording(records: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_header(&mut bytes, &header()).expect("in memory");
    for r in records {
        write_frame(&mut bytes, frame::RECORD, r).expect("in memory");
    }
    let counters = KernelCounters {
        transitions: vec![0; 256],
        missed: 3,
        ..Default::default()
    };
    write_frame(&mut bytes, frame::COUNTERS, &counters_payload(&counters)).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    bytes
}

/// A frame as read, owned.
#[derive(Debug, PartialEq)]
enum Read {
    Record(Vec<u8>),
    Counters(Box<KernelCounters>),
    Namespace(Box<Namespace>),
    Identity(Box<Identity>),
    End,
}

fn read_all(bytes: &[u8]) -> Result<(RecordingHeader, Vec<Read>)> {
    read_all_from(bytes)
}

fn read_all_from(input: impl BufRead) -> Result<(RecordingHeader, Vec<Read>)> {
    let mut reader = RecordingReader::new(input, Path::new("t.rec"))?;
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame()? {
        frames.push(match f {
            Frame::Record(r) => Read::Record(r.to_vec()),
            Frame::Counters(c) => Read::Counters(c),
            Frame::Namespace(n) => Read::Namespace(n),
            Frame::Identity(i) => Read::Identity(i),
            Frame::End => Read::End,
        });
    }
    Ok((reader.header, frames))
}

#[test]
fn frames_round_trip() {
    let bytes = recording(&[vec![1, 0, 0, 0, 9], vec![2, 0, 0, 0]]);
    let (h, frames) = read_all(&bytes).expect("reads back");
    assert_eq!(h, header());
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0], Read::Record(vec![1, 0, 0, 0, 9]));
    assert_eq!(frames[1], Read::Record(vec![2, 0, 0, 0]));
    assert!(matches!(&frames[2], Read::Counters(c) if c.missed == 3));
    assert_eq!(frames[3], Read::End);
}

/// Frames that lie whole in the reader's buffer are read in place, the others copied out: both
/// give the same frames, with buffers that cut the file anywhere.
#[test]
fn frames_read_in_place_or_copied_are_the_same() {
    let records: Vec<Vec<u8>> = (0..50u8).map(|i| vec![1, 0, 0, i, i, i]).collect();
    let bytes = recording(&records);
    let (_, whole) = read_all(&bytes).expect("reads back");
    assert_eq!(whole.len(), 52);
    for capacity in [1, 7, 8, 9, 13, 14, 15, 64, 1000] {
        let (_, cut) = read_all_from(BufReader::with_capacity(capacity, &bytes[..]))
            .unwrap_or_else(|e| panic!("a {capacity}-byte buffer: {e:#}"));
        assert_eq!(cut, whole, "a {capacity}-byte buffer");
    }
    // A cut file is refused whichever path reads its last frame.
    for capacity in [9, 14, 1000] {
        let short = &bytes[..bytes.len() - 20];
        let err = read_all_from(BufReader::with_capacity(capacity, short)).expect_err("cut");
        assert!(format!("{err:#}").contains("offset"), "{err:#}");
    }
}

#[test]
fn every_truncation_is_an_error_naming_an_offset() {
    let bytes = recording(&[vec![1, 0, 0, 0, 9, 9, 9, 9]]);
    for cut in 0..bytes.len() {
        let err = read_all(&bytes[..cut]).expect_err("a cut file is refused");
        let text = format!("{err:#}");
        assert!(text.starts_with("t.rec"), "cut at {cut}: {text}");
        assert!(
            text.contains("offset") || text.contains("magic"),
            "cut at {cut}: {text}"
        );
        assert_eq!(text.lines().count(), 1, "one line: {text}");
    }
}

#[test]
fn foreign_and_corrupt_files_are_refused_with_the_reason() {
    let good = recording(&[vec![1, 0, 0, 0]]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GIF89a....".to_vec(), "not a tcptrace recording"),
        (
            {
                let mut b = good.clone();
                b[8] = 9;
                b
            },
            "format version 9",
        ),
        (
            {
                let mut b = good.clone();
                b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
                b
            },
            "header length",
        ),
        (
            {
                let mut b = Vec::new();
                let mut h = header();
                h.layout.transition += 8;
                write_header(&mut b, &h).expect("in memory");
                b
            },
            "record layout",
        ),
        (
            {
                let mut b = Vec::new();
                write_header(&mut b, &header()).expect("in memory");
                write_frame(&mut b, 77, &[1]).expect("in memory");
                b
            },
            "unknown frame kind 77",
        ),
        (
            {
                let mut b = Vec::new();
                write_header(&mut b, &header()).expect("in memory");
                b.extend_from_slice(&u32::MAX.to_le_bytes());
                b.extend_from_slice(&1u32.to_le_bytes());
                b
            },
            "claims",
        ),
        (
            {
                let mut b = Vec::new();
                write_header(&mut b, &header()).expect("in memory");
                write_frame(&mut b, frame::COUNTERS, b"{nope").expect("in memory");
                b
            },
            "counters frame at offset",
        ),
        (
            {
                let mut b = Vec::new();
                write_header(&mut b, &header()).expect("in memory");
                write_frame(&mut b, frame::RECORD, &[1, 0, 0, 0]).expect("in memory");
                b
            },
            "without an end frame",
        ),
    ];
    for (bytes, needle) in cases {
        let err = read_all(&bytes).expect_err(needle);
        assert!(format!("{err:#}").contains(needle), "{needle}: {err:#}");
    }
}

/// A TIME_WAIT start record of `len` bytes (64: layout 1; 72: this build's) in namespace 9.
fn time_wait_start(len: usize) -> Vec<u8> {
    let mut r = vec![0u8; len];
    r[..4].copy_from_slice(&record_kind::TIME_WAIT.to_ne_bytes());
    r[4] = tcptrace_common::time_wait::START;
    r[16] = 0xaa; // a byte of the timer address
    if len > V1_TIME_WAIT {
        r[V1_TIME_WAIT..V1_TIME_WAIT + 4].copy_from_slice(&9u32.to_ne_bytes());
    }
    r
}

#[test]
fn layout_1_recordings_are_read_with_their_time_waits_widened() {
    let mut bytes = Vec::new();
    let mut old = header();
    old.layout = Layout::version_1();
    old.namespaces.clear();
    write_header(&mut bytes, &old).expect("in memory");
    let other = vec![3, 0, 0, 0, 1, 2, 3];
    write_frame(&mut bytes, frame::RECORD, &time_wait_start(64)).expect("in memory");
    write_frame(&mut bytes, frame::RECORD, &other).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    for capacity in [9, 100, 1000] {
        let (h, frames) = read_all_from(BufReader::with_capacity(capacity, &bytes[..]))
            .unwrap_or_else(|e| panic!("a {capacity}-byte buffer: {e:#}"));
        assert_eq!(h.layout.version, 1);
        let mut widened = time_wait_start(64);
        widened.resize(72, 0);
        assert_eq!(
            frames[0],
            Read::Record(widened),
            "namespace 0, the recorder's"
        );
        assert_eq!(
            frames[1],
            Read::Record(other.clone()),
            "other kinds as they are"
        );
    }
    // This build's records are never touched, and a layout neither 1 nor this build's is
    // refused.
    let (_, frames) = read_all(&recording(&[time_wait_start(72)])).expect("reads back");
    assert_eq!(frames[0], Read::Record(time_wait_start(72)));
    let mut odd = header();
    odd.layout.version = 99;
    let mut bytes = Vec::new();
    write_header(&mut bytes, &odd).expect("in memory");
    let err = read_all(&bytes).expect_err("unknown layout");
    assert!(format!("{err:#}").contains("record layout"), "{err:#}");
}

#[test]
fn namespace_frames_round_trip() {
    let ns = Namespace {
        conntrack: None,
        inode: 4026532770,
        name: Some("ka".into()),
        own: false,
        settings: Some(crate::host::netns::PortSettings::kernel_defaults()),
    };
    let mut bytes = Vec::new();
    write_header(&mut bytes, &header()).expect("in memory");
    let json = serde_json::to_vec(&ns).expect("json");
    write_frame(&mut bytes, frame::NAMESPACE, &json).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    let (_, frames) = read_all(&bytes).expect("reads back");
    assert_eq!(frames[0], Read::Namespace(Box::new(ns)));
}

#[test]
fn layout_3_recordings_are_read_with_cgroup_zero() {
    let mut old = header();
    old.layout = Layout::version_3();
    let mut bytes = Vec::new();
    write_header(&mut bytes, &old).expect("in memory");
    let mut transition = vec![0x11u8; V3_TRANSITION];
    transition[..4].copy_from_slice(&record_kind::TRANSITION.to_ne_bytes());
    let mut flow_end = vec![0x22u8; V3_FLOW_END];
    flow_end[..4].copy_from_slice(&record_kind::FLOW_END.to_ne_bytes());
    write_frame(&mut bytes, frame::RECORD, &transition).expect("in memory");
    write_frame(&mut bytes, frame::RECORD, &flow_end).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    let (h, frames) = read_all(&bytes).expect("layout 3 is read");
    assert_eq!(h.layout.version, 3);
    let Read::Record(t) = &frames[0] else {
        panic!("a record: {frames:?}")
    };
    assert_eq!(t.len(), size_of::<TransitionEvent>());
    assert_eq!(&t[V3_TRANSITION..], &[0; 8], "the cgroup is appended, 0");
    assert_eq!(&t[..V3_TRANSITION], &transition[..]);
    let Read::Record(f) = &frames[1] else {
        panic!("a record: {frames:?}")
    };
    assert_eq!(f.len(), size_of::<FlowEndEvent>());
    assert_eq!(
        &f[FLOW_END_CGROUP..FLOW_END_CGROUP + 8],
        &[0; 8],
        "inside the flow"
    );
    assert_eq!(&f[..FLOW_END_CGROUP], &flow_end[..FLOW_END_CGROUP]);
    assert_eq!(
        &f[FLOW_END_CGROUP + 8..V4_FLOW_END],
        &flow_end[FLOW_END_CGROUP..],
        "the keepalive settings move along"
    );
    assert_eq!(&f[V4_FLOW_END..], &[0; 40], "no vitals");
}

#[test]
fn layout_4_flows_are_read_without_vitals() {
    let mut old = header();
    old.layout = Layout::version_4();
    let mut bytes = Vec::new();
    write_header(&mut bytes, &old).expect("in memory");
    let mut flow_end = vec![0x22u8; V4_FLOW_END];
    flow_end[..4].copy_from_slice(&record_kind::FLOW_END.to_ne_bytes());
    write_frame(&mut bytes, frame::RECORD, &flow_end).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    let (h, frames) = read_all(&bytes).expect("layout 4 is read");
    assert_eq!(h.layout.version, 4);
    let Read::Record(f) = &frames[0] else {
        panic!("a record: {frames:?}")
    };
    assert_eq!(f.len(), size_of::<FlowEndEvent>());
    assert_eq!(&f[..V4_FLOW_END], &flow_end[..]);
    assert_eq!(&f[V4_FLOW_END..], &[0; 40], "the vitals are appended, 0");
}

#[test]
fn identity_frames_round_trip() {
    let identity = Identity {
        cgroup_id: 4242,
        path: "/kubepods/burstable/podx/y".into(),
        namespace: Some("shop".into()),
        pod: Some("cart-0".into()),
        container: Some("server".into()),
        ..Identity::default()
    };
    let mut bytes = Vec::new();
    write_header(&mut bytes, &header()).expect("in memory");
    let json = serde_json::to_vec(&identity).expect("json");
    write_frame(&mut bytes, frame::IDENTITY, &json).expect("in memory");
    write_frame(&mut bytes, frame::END, &[]).expect("in memory");
    let (_, frames) = read_all(&bytes).expect("reads back");
    assert_eq!(frames[0], Read::Identity(Box::new(identity)));
}
