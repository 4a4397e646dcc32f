//! A report over repeated runs: the first run's figures, and the minimum,
//! median and maximum of each figure that varies from run to run. It computes
//! and serialises (and so does `vm` with [`Spread`]); the tables that print it
//! are `table`'s and `spike`'s.

use std::collections::BTreeMap;

use meminit_host::sim::{Report, StrategyReport};
use serde::Serialize;

/// The spread keys (over `--runs`) of the spike's memmap resident after boot, at
/// the peak and after the release.
pub(crate) const MEMMAP_BOOT: &str = "spike_memmap_resident_boot_bytes";
/// See [`MEMMAP_BOOT`].
pub(crate) const MEMMAP_PEAK: &str = "spike_memmap_resident_peak_bytes";
/// See [`MEMMAP_BOOT`].
pub(crate) const MEMMAP_RELEASE: &str = "spike_memmap_resident_release_bytes";
/// The same for simulated guest memory resident.
pub(crate) const GUEST_BOOT: &str = "spike_guest_resident_boot_bytes";
/// See [`GUEST_BOOT`].
pub(crate) const GUEST_PEAK: &str = "spike_guest_resident_peak_bytes";
/// See [`GUEST_BOOT`].
pub(crate) const GUEST_RELEASE: &str = "spike_guest_resident_release_bytes";

/// A report with the spread of its figures over repeated runs.
#[derive(serde::Serialize)]
pub(crate) struct Repeated {
    /// The first run's figures.
    #[serde(flatten)]
    pub(crate) first: Report,
    /// How many runs.
    pub(crate) runs: u32,
    /// Per strategy, the minimum, median and maximum of each figure that varies
    /// from run to run.
    pub(crate) spread: BTreeMap<&'static str, BTreeMap<&'static str, Spread>>,
}

/// Deferred workers' speed against all their cores filling together: the
/// parallel fill's time over the time initialising, each run's own.
pub(crate) const PARALLEL_RATIO: &str = "limit_parallel_ratio";

/// How to read one figure of a strategy's report.
type ReadFigure = fn(&StrategyReport) -> Option<f64>;

/// The figures of a strategy whose spread is reported.
const REPORT_METRICS: [(&str, ReadFigure); 17] = [
    ("ready_ns", |s| Some(s.ready_ns as f64)),
    ("full_init_ns", |s| s.full_init_ns.map(|t| t as f64)),
    ("init_ns", |s| Some(s.init_ns as f64)),
    ("grow_ns", |s| Some(s.grow_ns as f64)),
    ("limit_fill_ns", |s| Some(s.limit_fill_ns as f64)),
    ("limit_ratio", |s| Some(s.limit_ratio)),
    ("init_populate_ns", |s| Some(s.init_populate_ns as f64)),
    ("limit_writes_ratio", |s| {
        (s.limit_writes_ratio > 0.0).then_some(s.limit_writes_ratio)
    }),
    ("limit_parallel_fill_ns", |s| {
        Some(s.limit_parallel_fill_ns as f64)
    }),
    (PARALLEL_RATIO, |s| {
        (s.strategy == "deferred" && s.init_ns > 0)
            .then(|| s.limit_parallel_fill_ns as f64 / s.init_ns as f64)
    }),
    ("memmap_resident_end_bytes", |s| {
        Some(s.memmap_resident_end_bytes as f64)
    }),
    (MEMMAP_BOOT, |s| {
        s.spike
            .as_ref()
            .map(|p| p.memmap_resident_boot_bytes as f64)
    }),
    (MEMMAP_PEAK, |s| {
        s.spike
            .as_ref()
            .map(|p| p.memmap_resident_peak_bytes as f64)
    }),
    (MEMMAP_RELEASE, |s| {
        s.spike
            .as_ref()
            .map(|p| p.memmap_resident_release_bytes as f64)
    }),
    (GUEST_BOOT, |s| {
        s.spike.as_ref().map(|p| p.guest_resident_boot_bytes as f64)
    }),
    (GUEST_PEAK, |s| {
        s.spike.as_ref().map(|p| p.guest_resident_peak_bytes as f64)
    }),
    (GUEST_RELEASE, |s| {
        s.spike
            .as_ref()
            .map(|p| p.guest_resident_release_bytes as f64)
    }),
];

impl Repeated {
    /// The report of `all` runs (at least one), the first of which gives the
    /// figures that do not vary.
    pub(crate) fn of(mut all: Vec<Report>, runs: u32) -> Option<Repeated> {
        let mut spread: BTreeMap<&'static str, BTreeMap<&'static str, Spread>> = BTreeMap::new();
        for (i, s) in all.first()?.strategies.iter().enumerate() {
            if s.skipped.is_some() {
                continue;
            }
            let per = spread.entry(s.strategy).or_default();
            for (metric, read) in REPORT_METRICS {
                let values = all
                    .iter()
                    .filter_map(|r| r.strategies.get(i).and_then(read))
                    .collect();
                if let Some(sp) = Spread::of(values) {
                    per.insert(metric, sp);
                }
            }
        }
        Some(Repeated {
            first: all.swap_remove(0),
            runs,
            spread,
        })
    }
}

/// Minimum, median and maximum of one figure over the runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Spread {
    pub(crate) fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Spread {
            min: values[0],
            median,
            max: values[n - 1],
            n,
        })
    }
}
