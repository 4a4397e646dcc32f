//! The figures for people and for JSON: per workload, thread count and allocator,
//! the spread over rounds, ratios between allocators, and the aims checked
//! on them. It formats what was measured; it measures nothing.

use std::fmt::Write as _;

use crate::harness::Sample;

/// min, median, max.
pub(crate) fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Which figure of a [`Sample`].
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Metric {
    /// Ops per second of wall-clock time.
    Wall,
    /// Ops per second of CPU time the threads got.
    PerCpu,
}

/// The figures of one workload: per thread count, per allocator, one per round.
pub(crate) struct Table {
    pub(crate) workload: &'static str,
    pub(crate) title: &'static str,
    pub(crate) threads: Vec<usize>,
    pub(crate) names: Vec<&'static str>,
    /// `[thread count][allocator][round]`.
    pub(crate) samples: Vec<Vec<Vec<Sample>>>,
}

impl Table {
    pub(crate) fn runs(&self, t: usize, a: usize, m: Metric) -> Vec<f64> {
        self.samples[t][a]
            .iter()
            .map(|s| match m {
                Metric::Wall => s.mops,
                Metric::PerCpu => s.per_cpu,
            })
            .collect()
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    /// Median over rounds of the per-round ratio of allocator `a` here at thread
    /// index `t` to allocator `b` in `other` at thread index `to` (the same table, or
    /// the batch table for producer/consumer), with its min and max. Within a round,
    /// allocators run back to back, so each ratio compares figures measured under the
    /// same noise.
    pub(crate) fn paired(
        &self,
        m: Metric,
        t: usize,
        a: &str,
        other: &Table,
        to: usize,
        b: &str,
    ) -> Option<(f64, f64, f64)> {
        let x = self.runs(t, self.index(a)?, m);
        let y = other.runs(to, other.index(b)?, m);
        let r: Vec<f64> = x.iter().zip(&y).map(|(x, y)| x / y).collect();
        Some(summary(&r))
    }

    pub(crate) fn render(&self, out: &mut String, baseline: Option<&Table>) {
        let _ = writeln!(out, "\n{}", self.title);
        self.render_metric(out, baseline, Metric::Wall);
        self.render_metric(out, baseline, Metric::PerCpu);
    }

    pub(crate) fn render_metric(&self, out: &mut String, baseline: Option<&Table>, m: Metric) {
        let rounds = self.samples[0][0].len();
        let _ = writeln!(
            out,
            "{}, median [min-max] of {rounds} rounds",
            match m {
                Metric::Wall => "Mops/s (alloc+free pairs per second, all threads together)",
                Metric::PerCpu => {
                    "Mops per CPU-second (alloc+free pairs per second of CPU time the threads \
                     got; flat from 1 thread to N = no slow-down from sharing, whatever the \
                     machine gave)"
                }
            }
        );
        let _ = write!(out, "{:>7}", "threads");
        for n in &self.names {
            let _ = write!(out, " | {n:>20}");
        }
        let _ = writeln!(out);
        for (t, &threads) in self.threads.iter().enumerate() {
            let _ = write!(out, "{threads:>7}");
            for a in 0..self.names.len() {
                let (lo, med, hi) = summary(&self.runs(t, a, m));
                let cell = format!("{med:.1} [{lo:.1}-{hi:.1}]");
                let _ = write!(out, " | {cell:>20}");
            }
            let _ = writeln!(out);
        }
        // Ratios: meminit against LLFree at each count, and against its own 1 thread.
        let ours: Vec<&str> = self
            .names
            .iter()
            .copied()
            .filter(|n| n.starts_with("meminit"))
            .collect();
        if ours.is_empty() {
            return;
        }
        let base = baseline.unwrap_or(self);
        let one = base.threads.iter().position(|&n| n == 1);
        let none = self.names.contains(&"none");
        let _ = writeln!(
            out,
            "  ratios of the above, median [min-max] of per-round ratios; x/1t: against {}{}",
            if baseline.is_some() {
                "the same allocator's 1-thread batch figure of the same round"
            } else {
                "the same allocator's 1-thread figure of the same round"
            },
            if none && m == Metric::Wall {
                "; none/1t: no allocator, so the parallelism the machine gave"
            } else {
                ""
            }
        );
        let _ = write!(out, "{:>7}", "threads");
        for m in &ours {
            let short = m.trim_start_matches("meminit-");
            let _ = write!(
                out,
                " | {:>18} | {:>18}",
                format!("{short}/llfree"),
                format!("{short}/1t")
            );
        }
        if none {
            let _ = write!(out, " | {:>18}", "none/1t");
        }
        let _ = writeln!(out);
        let cell = |r: Option<(f64, f64, f64)>| match r {
            Some((lo, med, hi)) => format!("{med:.2} [{lo:.2}-{hi:.2}]"),
            None => "-".into(),
        };
        for (t, &threads) in self.threads.iter().enumerate() {
            let _ = write!(out, "{threads:>7}");
            for &a in &ours {
                let vs_llfree = self.paired(m, t, a, self, t, "llfree");
                let vs_one = one.and_then(|one| self.paired(m, t, a, base, one, a));
                let _ = write!(out, " | {:>18} | {:>18}", cell(vs_llfree), cell(vs_one));
            }
            if none {
                let r = one.and_then(|one| self.paired(m, t, "none", base, one, "none"));
                let _ = write!(out, " | {:>18}", cell(r));
            }
            let _ = writeln!(out);
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let points: Vec<_> = self
            .threads
            .iter()
            .enumerate()
            .map(|(t, &threads)| {
                let per: serde_json::Map<_, _> = self
                    .names
                    .iter()
                    .enumerate()
                    .map(|(a, n)| {
                        let figures = |m| {
                            let runs = self.runs(t, a, m);
                            let (lo, med, hi) = summary(&runs);
                            serde_json::json!({"min": lo, "median": med, "max": hi, "runs": runs})
                        };
                        (
                            n.to_string(),
                            serde_json::json!({
                                "mops": figures(Metric::Wall),
                                "mops_per_cpu_second": figures(Metric::PerCpu),
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({"threads": threads, "allocators": per})
            })
            .collect();
        serde_json::json!({"workload": self.workload, "title": self.title, "points": points})
    }
}

/// The aims, checked on the batch table: (aim, met, figure). The verdict is
/// on wall-clock throughput, as the issue states them; each line also gives the
/// figure per CPU-second, which a shared machine disturbs far less.
pub(crate) fn verdicts(batch: &Table, name: &str) -> Vec<(String, bool, String)> {
    let mut v = Vec::new();
    let (w, c) = (Metric::Wall, Metric::PerCpu);
    let median = |m, t, a: &str, to, b: &str| batch.paired(m, t, a, batch, to, b).map(|r| r.1);
    let one = batch.threads.iter().position(|&n| n == 1);
    if let Some(one) = one {
        if let (Some(r), Some(rc)) = (
            median(w, one, name, one, "llfree"),
            median(c, one, name, one, "llfree"),
        ) {
            v.push((
                format!("{name}: 1 thread >= 2x llfree"),
                r >= 2.0,
                format!("{r:.2}x; per CPU-second {rc:.2}x"),
            ));
        }
    }
    for (t, &threads) in batch.threads.iter().enumerate().skip(1) {
        if let (Some(r), Some(rc)) = (
            median(w, t, name, t, "llfree"),
            median(c, t, name, t, "llfree"),
        ) {
            v.push((
                format!("{name}: {threads} threads >= llfree"),
                r >= 1.0,
                format!("{r:.2}x; per CPU-second {rc:.2}x"),
            ));
        }
    }
    if let (Some(one), Some(two)) = (one, batch.threads.iter().position(|&n| n == 2)) {
        if let Some(r) = median(w, two, name, one, name) {
            let machine = match median(w, two, "none", one, "none") {
                Some(m) => format!("; no allocator at all: {m:.2}x"),
                None => String::new(),
            };
            let per_cpu = match median(c, two, name, one, name) {
                Some(c) => format!(
                    "; per CPU-second {c:.2}x, so about {:.2}x on 2 free cores",
                    2.0 * c
                ),
                None => String::new(),
            };
            v.push((
                format!("{name}: 2 threads >= 1.6x its 1 thread"),
                r >= 1.6,
                format!("{r:.2}x{machine}{per_cpu}"),
            ));
        }
    }
    v
}
