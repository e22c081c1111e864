//! The userspace pipeline's speed alone, without a kernel: tcptrace's `replay-bench`.
use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// The userspace pipeline alone, on synthetic records, one core: (decode + aggregate, flows
/// rendered) and (every record rendered as columns), in records/s.
pub fn replay(bin: &Path) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .args(["replay-bench", "--records", "5000000"])
        .output()?;
    if !out.status.success() {
        bail!(
            "replay-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["events_per_s"].as_f64().context("events_per_s")?,
        v["render_all_events_per_s"]
            .as_f64()
            .context("render_all_events_per_s")?,
    ))
}
