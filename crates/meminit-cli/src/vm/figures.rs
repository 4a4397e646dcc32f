//! What `meminit vm` keeps of each guest's runs: the samples, the spread of each
//! figure over them, and the report that the JSON serialises and the table
//! prints. It reads figures out of what the harness measured; it runs nothing
//! and prints nothing.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use meminit_vm::{Accel, VmRun};
use serde::Serialize;
use serde_json::Value;

use crate::repeated::Spread;

/// One boot of one guest.
#[derive(Serialize)]
pub(super) struct Sample {
    #[serde(flatten)]
    pub(super) host: VmRun,
    /// What the guest printed (meminit: its JSON line; Linux: its console figures).
    pub(super) guest: Value,
    pub(super) ok: bool,
    /// Why the guest did not succeed, from its console; absent when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) failure: Option<String>,
}

/// One column of the table: a meminit strategy or the peer, over its runs.
#[derive(Serialize)]
pub(super) struct Column {
    pub(super) name: String,
    /// The first run's figures, flattened; `samples` holds every run and `spread`
    /// the minimum, median and maximum of each figure over them.
    #[serde(flatten)]
    pub(super) first: Sample,
    pub(super) samples: Vec<Sample>,
    pub(super) spread: BTreeMap<&'static str, Spread>,
    /// Whether every run succeeded.
    pub(super) all_ok: bool,
}

#[derive(Serialize)]
pub(super) struct VmReport {
    pub(super) memory_bytes: u64,
    pub(super) cpus: u32,
    pub(super) nodes: u32,
    pub(super) accel: Accel,
    pub(super) accel_reason: String,
    pub(super) runs_each: u32,
    /// The guests' workload (`spike:BYTES` for a spike).
    pub(super) workload: String,
    /// Whether the balloon device (free page reporting) was on QEMU's command line.
    pub(super) balloon: bool,
    /// Which figure the memory comparison is about.
    pub(super) memory_compared: &'static str,
    /// What Linux was and was not given of the meminit guests' options.
    pub(super) linux_notes: Vec<String>,
    pub(super) runs: Vec<Column>,
}

/// The figures whose spread is reported: name, and how to read it from a sample.
type Metric = (&'static str, fn(&Sample) -> Option<f64>);

/// The guest's RAM resident on the host at marker `name`.
fn guest_ram_at(s: &Sample, name: &str) -> Option<f64> {
    s.host
        .marks
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.guest_ram_rss_bytes as f64)
}

/// Bytes the guest freed (its own count: meminit's JSON, Linux's `/init`).
fn freed(s: &Sample) -> Option<f64> {
    s.guest["freed_bytes"].as_f64().filter(|&b| b > 0.0)
}

/// Of what the guest freed, the part its RAM on the host fell by from the
/// peak to after the release, in percent.
fn returned_pct(s: &Sample) -> Option<f64> {
    let fell = (guest_ram_at(s, "peak")? - guest_ram_at(s, "released")?).max(0.0);
    Some(fell * 100.0 / freed(s)?)
}

const METRICS: [Metric; 25] = [
    ("guest_ram_boot_bytes", |s| guest_ram_at(s, "boot")),
    ("guest_ram_peak_bytes", |s| guest_ram_at(s, "peak")),
    ("guest_ram_released_bytes", |s| guest_ram_at(s, "released")),
    ("freed_bytes", freed),
    ("returned_pct", returned_pct),
    ("release_90_ns", |s| s.host.release_90_ns.map(|t| t as f64)),
    ("qemu_rss_boot_bytes", |s| {
        s.host.qemu_rss_boot_bytes.map(|b| b as f64)
    }),
    ("qemu_rss_peak_bytes", |s| {
        s.host.qemu_rss_peak_bytes.map(|b| b as f64)
    }),
    ("qemu_rss_after_release_bytes", |s| {
        s.host.qemu_rss_after_release_bytes.map(|b| b as f64)
    }),
    ("reported_bytes", |s| s.guest["reported_bytes"].as_f64()),
    ("guest_ram_rss_bytes", |s| {
        Some(s.host.guest_ram_rss_bytes as f64)
    }),
    ("qemu_own_rss_bytes", |s| {
        Some(s.host.qemu_own_rss_bytes as f64)
    }),
    ("qemu_rss_bytes", |s| Some(s.host.qemu_rss_bytes as f64)),
    ("qemu_peak_rss_bytes", |s| {
        Some(s.host.qemu_peak_rss_bytes as f64)
    }),
    ("wall_ns", |s| Some(s.host.wall_ns as f64)),
    ("ready_ns", |s| s.guest["ready_ns"].as_f64()),
    ("workers_ns", |s| s.guest["workers_ns"].as_f64()),
    ("boot_allocs_ns", |s| s.guest["boot_allocs_ns"].as_f64()),
    ("ap_start_ns", |s| s.guest["ap_start_ns"].as_f64()),
    ("full_init_ns", |s| s.guest["full_init_ns"].as_f64()),
    ("grow_ns", |s| s.guest["grow_ns"].as_f64()),
    ("tsc_hz", |s| s.guest["tsc_hz"].as_f64()),
    ("early_memmap_ns", |s| {
        s.guest["early_memmap_ms"].as_f64().map(|m| m * 1e6)
    }),
    // The slowest node's deferred-init threads: Linux's deferred initialisation
    // ends when the last of them does.
    ("deferred_init_ns", |s| {
        s.guest["deferred_init_ms"]
            .as_array()?
            .iter()
            .filter_map(|p| p[1].as_f64())
            .reduce(f64::max)
            .map(|m| m * 1e6)
    }),
    ("tsc_khz", |s| s.guest["tsc_khz"].as_f64()),
];

pub(super) fn column(name: String, samples: Vec<Sample>) -> Result<Column> {
    let mut spread = BTreeMap::new();
    for (metric, read) in METRICS {
        if let Some(s) = Spread::of(samples.iter().filter_map(read).collect()) {
            spread.insert(metric, s);
        }
    }
    let all_ok = samples.iter().all(|s| s.ok);
    let mut samples = samples.into_iter();
    let first = samples.next().context("a column with no runs")?;
    Ok(Column {
        name,
        first,
        samples: samples.collect(),
        spread,
        all_ok,
    })
}
