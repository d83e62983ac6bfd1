//! The report of a bench run: everything measured ([`Report`], written as
//! report.json), the goals judged from it (`goals.rs`: one table of goal,
//! measurement and what limits it; `measure.rs`: the measurements),
//! report.md (`markdown.rs`) and the SVG plots (`plots.rs`).

mod goals;
mod ipv6;
mod markdown;
mod measure;
mod plots;
#[cfg(test)]
mod tests;

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

pub use goals::{Goal, goals};
pub use markdown::markdown;
pub use plots::plots;

use crate::{
    control::Control,
    controller::ControllerBench,
    e2e::{E2e, Mode, ScaleResult},
    load::{Kind, LoadResult},
    perpacket::PerPacket,
    scale::ScalePoint,
    stats::{self, Summary},
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub size: String,
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub started_unix: u64,
    pub duration_s: f64,
    pub load_average: String,
    pub per_packet: Option<PerPacket>,
    pub e2e: Option<E2e>,
    pub control: Option<Control>,
    pub controller: Option<ControllerBench>,
    /// The control plane at scale (100k services in a full run).
    #[serde(default)]
    pub scale: Vec<ScalePoint>,
}

/// Writes report.json, report.md and the plots into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<Goal>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let goals = goals(report);
    let json = serde_json::json!({ "report": report, "goals": goals });
    fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("write report.json")?;
    fs::write(dir.join("report.md"), markdown(report, &goals)).context("write report.md")?;
    for (name, contents) in plots(report) {
        fs::write(dir.join(name), contents).with_context(|| format!("write {name}"))?;
    }
    Ok(goals)
}

/// Reads a report.json written by [`write`].
pub fn read(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("parse report.json")?;
    let report = value
        .get("report")
        .cloned()
        .context("no `report` in report.json")?;
    serde_json::from_value(report).context("report.json has an unexpected shape")
}

/// A summary as `median (min–max)`, or `–` when there is none.
fn fmt_summary(s: Option<Summary>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.display(decimals))
}

/// `10k` for 10000 services.
fn scale_name(services: usize) -> String {
    if services >= 1000 && services.is_multiple_of(1000) {
        format!("{}k", services / 1000)
    } else {
        services.to_string()
    }
}

/// One number of every run of `mode` and load `kind` at `scale`.
fn rates(scale: &ScaleResult, mode: Mode, kind: Kind, f: impl Fn(&LoadResult) -> f64) -> Vec<f64> {
    scale
        .mode(mode)
        .map(|m| m.values(kind, f))
        .unwrap_or_default()
}

/// `a` ÷ `b` of one number, paired per repetition.
fn ratio(
    scale: &ScaleResult,
    a: Mode,
    b: Mode,
    kind: Kind,
    f: impl Fn(&LoadResult) -> f64 + Copy,
) -> Option<Summary> {
    stats::paired_ratio(&rates(scale, a, kind, f), &rates(scale, b, kind, f))
}
