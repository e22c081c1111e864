//! Fuzzing of everything that reads outside input: ring records (decode), filter values,
//! sock_diag responses, recording files. Inputs are arbitrary bytes and strings, and mutations
//! (byte edits, truncations) of the seed corpus in `tcptrace/fuzz-corpus/` (real records, a
//! real recording, sock_diag responses). Each target must return a value or an error, never
//! panic; errors are one line.
//!
//! `cargo test` runs a few thousand cases per target; `cargo xtask test --fuzz` sets
//! `TCPTRACE_FUZZ_SECS` and each target runs that long. A failing case is shrunk by proptest
//! and stored in `proptest-regressions/`, which is committed: it is run first from then on.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

use crate::{
    cli::filter::{parse_cidr, parse_pid, parse_ports},
    decode::decode,
    host::sockdiag,
    run::recording::format::RecordingReader,
};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-corpus");

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(CORPUS).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// How long each target runs: `TCPTRACE_FUZZ_SECS`, else one round of cases.
fn budget() -> Option<Duration> {
    std::env::var("TCPTRACE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
}

/// Runs `test` on inputs from `strategy` for the budget (or 2,000 cases); returns the cases.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let deadline = budget().map(|b| started + b);
    let mut cases = 0u64;
    loop {
        let round = 2_000;
        let mut runner = TestRunner::new(Config {
            cases: round,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
            )),
            source_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/fuzz_tests.rs")),
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        cases += u64::from(round);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cases
}

/// A seed with edits: (position, byte) replacements, then a cut.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        0..seeds.len(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
        any::<bool>(),
    )
        .prop_map(move |(i, edits, cut, truncate)| {
            let mut bytes = seeds[i].clone();
            for (at, byte) in edits {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = byte;
                }
            }
            if truncate && !bytes.is_empty() {
                bytes.truncate(cut % bytes.len());
            }
            bytes
        })
}

fn arbitrary_or_mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        mutated(seeds(target)),
    ]
}

fn one_line(e: &anyhow::Error) -> Result<(), TestCaseError> {
    let text = format!("{e:#}");
    prop_assert!(!text.contains('\n'), "a multi-line error: {text}");
    Ok(())
}

#[test]
fn fuzz_record_decoder() {
    fuzz("decode", arbitrary_or_mutated("decode"), |bytes| {
        if let Err(e) = decode(&bytes) {
            one_line(&e)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_recording_reader() {
    fuzz("recording", arbitrary_or_mutated("recording"), |bytes| {
        let result =
            RecordingReader::new(bytes.as_slice(), Path::new("f.rec")).and_then(|mut reader| {
                while let Some(frame) = reader.next_frame()? {
                    if let crate::run::recording::format::Frame::Record(r) = frame {
                        let _ = decode(r);
                    }
                }
                Ok(())
            });
        if let Err(e) = result {
            one_line(&e)?;
            let text = format!("{e:#}");
            prop_assert!(text.starts_with("f.rec"), "names the file: {text}");
        }
        Ok(())
    });
}

#[test]
fn fuzz_sock_diag_responses() {
    fuzz("sockdiag", arbitrary_or_mutated("sockdiag"), |bytes| {
        let mut sockets = Vec::new();
        if let Err(e) = sockdiag::parse_batch(&bytes, &mut sockets) {
            one_line(&e)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_filter_values() {
    let text = prop_oneof![
        ".{0,40}",
        "[0-9,\\-/:.a-f ]{0,30}",
        Just("65535-1".to_string()),
        Just("::ffff:10.0.0.1/200".to_string()),
    ];
    fuzz("filters", text, |text| {
        // (Names of namespaces and cgroups are paths: not fuzzed, they would open files.)
        for result in [
            parse_ports(&text, "-L").map(|_| ()),
            parse_cidr(&text, "--remote-addr").map(|_| ()),
            parse_pid(&text).map(|_| ()),
        ] {
            if let Err(e) = result {
                one_line(&e)?;
            }
        }
        Ok(())
    });
}

#[test]
fn the_seed_corpus_is_valid_input() {
    for seed in seeds("decode") {
        decode(&seed).unwrap_or_else(|e| panic!("a decode seed does not decode: {e:#}"));
    }
    for seed in seeds("recording") {
        let mut reader =
            RecordingReader::new(seed.as_slice(), Path::new("seed.rec")).expect("a recording");
        while reader.next_frame().expect("whole frames").is_some() {}
    }
    for seed in seeds("sockdiag") {
        let mut sockets = Vec::new();
        sockdiag::parse_batch(&seed, &mut sockets).expect("a sock_diag response");
        assert!(!sockets.is_empty(), "the seed holds sockets");
    }
}
