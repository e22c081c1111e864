//! The tracer modes `cargo xtask bench` measures, each a row: (key for `--modes`, the row's
//! name, tcptrace's arguments).
use anyhow::{bail, Result};

/// The empty program's row: every mode's kernel time is a multiple of its.
pub const FLOOR_ROW: &str = "empty hook (floor)";
/// The row of the flow-state probe in a hash: the floor a per-socket state costs.
pub const HASH_PROBE_ROW: &str = "state in a hash (probe)";
/// tcptrace's arguments for the hash-state probe (its row, and beside every other row).
pub const HASH_PROBE_ARGS: &[&str] = &["hook-floor", "--variant", "hash"];
/// The row of the flow-state probe in socket storage.
pub const STORAGE_PROBE_ROW: &str = "state in sk_storage (probe)";

pub const MODES: [(&str, &str, &[&str]); 19] = [
    ("transitions", "transitions -> file", &[]),
    ("flows", "flows -> file", &["flows"]),
    // Without the drop hook (skb:kfree_skb): what it costs, in the same run.
    (
        "flows-no-drops",
        "flows, no drop hook",
        &["flows", "--no-drops"],
    ),
    (
        "flows-no-tw",
        "flows, no TIME_WAIT",
        &["flows", "--no-time-wait"],
    ),
    // A conntrack table of 1,000,000 entries in a namespace of its own (a big node's): each
    // flow that ends is looked up in it (ctnetlink, at most 5,000 a second).
    (
        "flows-conntrack",
        "flows, 1M-entry conntrack table",
        &["flows"],
    ),
    ("json", "json -> file", &["--json"]),
    (
        "metrics",
        "metrics only",
        &["metrics", "--metrics", "127.0.0.1:0"],
    ),
    (
        "metrics-no-drops",
        "metrics, no drop hook",
        &["metrics", "--metrics", "127.0.0.1:0", "--no-drops"],
    ),
    // Every flow's end sent for the RTT histogram and bytes per destination.
    (
        "metrics-vitals",
        "metrics, --metrics-vitals",
        &["metrics", "--metrics", "127.0.0.1:0", "--metrics-vitals"],
    ),
    (
        "flows-on-demand",
        "flows, table on demand",
        &[
            "flows",
            "--flow-memory",
            "on-demand",
            "--max-flows",
            "1048576",
        ],
    ),
    (
        "metrics-on-demand",
        "metrics, table on demand",
        &[
            "metrics",
            "--metrics",
            "127.0.0.1:0",
            "--flow-memory",
            "on-demand",
            "--max-flows",
            "1048576",
        ],
    ),
    // Flows kept in each socket's own storage instead of a table.
    (
        "flows-socket",
        "flows, socket storage",
        &["flows", "--flow-memory", "socket"],
    ),
    (
        "metrics-socket",
        "metrics, socket storage",
        &[
            "metrics",
            "--metrics",
            "127.0.0.1:0",
            "--flow-memory",
            "socket",
        ],
    ),
    // Every connection of the load is filtered out in the kernel (remote port 1).
    ("filtered", "flows, all filtered out", &["flows", "-D", "1"]),
    // An empty program on the same tracepoint: the floor any hook pays here.
    ("floor", FLOOR_ROW, &["hook-floor"]),
    // Only a small flow state, kept in socket-local storage or in a global hash: what
    // the place a flow's state lives costs (no records, no filters).
    (
        "storage",
        STORAGE_PROBE_ROW,
        &["hook-floor", "--variant", "sk-storage"],
    ),
    ("storage", HASH_PROBE_ROW, HASH_PROBE_ARGS),
    // The hash probe and a 104-byte record per transition (every transition's mode, at its
    // least): into one ring all CPUs share (the tracer's), or into its CPU's own.
    (
        "ring-probe",
        "probe + a record, one ring",
        &["hook-floor", "--variant", "hash-ring"],
    ),
    (
        "ring-probe",
        "probe + a record, ring per CPU",
        &["hook-floor", "--variant", "hash-ring-per-cpu"],
    ),
];

/// The `--modes` keys of rows measured outside [`MODES`].
const OTHER_KEYS: [&str; 4] = ["record", "libbpf-tools", "bpftrace", "bulk"];

/// Refuses a `--modes` key no row has, naming the known ones.
pub fn check(keys: &[String]) -> Result<()> {
    let mut known: Vec<&str> = MODES.iter().map(|(k, _, _)| *k).collect();
    known.dedup(); // a key of several rows stands beside itself
    known.extend(OTHER_KEYS);
    if let Some(unknown) = keys.iter().find(|k| !known.contains(&k.as_str())) {
        bail!("--modes: no row {unknown:?} (rows: {})", known.join(", "));
    }
    Ok(())
}

/// Whether a row runs one of the benchmark's probes (`tcptrace hook-floor`: no summary).
pub fn is_probe(args: &[&str]) -> bool {
    args.first() == Some(&"hook-floor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_key_is_accepted_and_a_misspelt_one_is_refused() {
        let all: Vec<String> = MODES
            .iter()
            .map(|(k, _, _)| (*k).to_string())
            .chain(OTHER_KEYS.iter().map(|k| (*k).to_string()))
            .collect();
        check(&all).expect("every known row accepted");
        let err = check(&["flows".into(), "flow".into()]).expect_err("a misspelt row refused");
        assert!(
            err.to_string().contains("no row \"flow\"") && err.to_string().contains("ring-probe"),
            "the error names the row and the known ones: {err}"
        );
    }

    #[test]
    fn the_probe_rows_are_told_by_their_command() {
        for (key, name, args) in MODES {
            let probe = matches!(key, "floor" | "storage" | "ring-probe");
            assert_eq!(is_probe(args), probe, "{name}: a probe row is {probe}");
        }
    }
}
