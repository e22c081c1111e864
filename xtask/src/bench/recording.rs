//! The record row's files: how fast `tcptrace report` renders them, and what they hold.
use std::{
    cell::RefCell,
    fs::{self, File},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

/// Totals over the record row's rounds.
#[derive(Default)]
pub struct Reports {
    records: u64,
    bytes: u64,
    flows_secs: f64,
    states_secs: f64,
}

impl Reports {
    pub fn flows_per_s(&self) -> Option<f64> {
        (self.flows_secs > 0.0).then(|| self.records as f64 / self.flows_secs)
    }
    pub fn states_per_s(&self) -> Option<f64> {
        (self.states_secs > 0.0).then(|| self.records as f64 / self.states_secs)
    }
    pub fn bytes_per_record(&self) -> Option<f64> {
        (self.records > 0).then(|| self.bytes as f64 / self.records as f64)
    }
}

/// Renders `file` as flows (JSON, whose summary gives the row's events and losses) and with
/// every record printed (to /dev/null), timing both; removes the file.
pub fn report_rates(bin: &Path, file: &Path, totals: &RefCell<Reports>) -> Result<(u64, u64, u64)> {
    let json = file.with_extension("report.json");
    let started = Instant::now();
    let status = Command::new(bin)
        .arg("report")
        .arg(file)
        .args(["--mode", "flows", "--json"])
        .stdout(File::create(&json).with_context(|| format!("create {}", json.display()))?)
        .status()
        .context("run tcptrace report")?;
    let flows_secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("tcptrace report {} failed ({status})", file.display());
    }
    let started = Instant::now();
    let status = Command::new(bin)
        .arg("report")
        .arg(file)
        .args(["--mode", "states"])
        .stdout(Stdio::null())
        .status()
        .context("run tcptrace report")?;
    let states_secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("tcptrace report {} failed ({status})", file.display());
    }
    let text = fs::read_to_string(&json)?;
    let summary: serde_json::Value = text
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"type\":\"summary\""))
        .map(serde_json::from_str)
        .transpose()?
        .context("no summary in the report")?;
    let records = summary["records_delivered"].as_u64().unwrap_or(0);
    let numbers = super::summary_numbers(&json)?;
    let mut t = totals.borrow_mut();
    t.records += records;
    t.bytes += fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    t.flows_secs += flows_secs;
    t.states_secs += states_secs;
    let _ = fs::remove_file(file);
    let _ = fs::remove_file(&json);
    Ok(numbers)
}
