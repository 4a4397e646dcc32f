//! The `mixed` and `churn` workloads: what placement (mobility hints) and
//! compaction give back to the host once short-lived memory is freed among
//! long-lived memory.
//!
//! - `mixed:SIZE:KEEP`: SIZE of order-0 allocations, of which a fraction KEEP,
//!   drawn at random, are kept (long-lived) and the rest freed once all are made.
//! - `churn:SIZE:KEEP[:huge]`: compile-like. SIZE of allocations in all, of
//!   orders 0–3, made in [`CHURN_ROUNDS`] rounds; each lives 1 to
//!   [`CHURN_WINDOW`] rounds (a sliding window), except a trickle KEEP that is
//!   kept. With `huge`, [`HUGE_PER_MILLE`]‰ of the allocations are of order 9.
//!
//! KEEP (and a rate of wrong hints) is a fraction: `0.01` or `1%`. Two CPUs
//! allocate, alternately, through their caches; frees land on either. With
//! hints on, kept allocations are unmovable and the rest
//! [`AllocFlags::MOVABLE`](meminit::AllocFlags::MOVABLE); with hints off
//! everything is movable (the kernel cannot tell); a rate of wrong hints gives
//! that fraction the other class. With compaction on, a compaction pass
//! ([`meminit::Allocator::compact`]) runs before the idle passes, with a hook
//! that copies each block in the simulated physical memory and updates the
//! workload's table of what it holds.
//!
//! This module owns the workload's description, its parser and its figures;
//! [`run_mix`] runs it.

mod hook;
mod run;

use std::fmt;
use std::str::FromStr;

use meminit_boot::{parse_size, Size};
use serde::Serialize;

pub use run::run_mix;

/// Rounds of the churn workload.
pub const CHURN_ROUNDS: u64 = 400;
/// The longest life of a churn allocation, in rounds (the window).
pub const CHURN_WINDOW: u64 = 100;
/// With `huge`, allocations of order 9 among the churn's, per thousand
/// (0.3%).
pub const HUGE_PER_MILLE: f64 = 3.0;

/// Which mix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixKind {
    /// Order-0 pages, a fraction kept, the rest freed.
    Mixed,
    /// Orders 0–3 (and 9 with `huge`) in a sliding window, a trickle kept.
    Churn {
        /// Whether 0.3% of the allocations are of order 9.
        huge: bool,
    },
}

/// A `mixed` or `churn` workload.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Mix {
    /// Which.
    pub kind: MixKind,
    /// Bytes allocated in all.
    pub bytes: u64,
    /// The fraction kept (long-lived), from 0 to 1.
    pub keep: f64,
}

/// Why a workload string is not a `mixed` or `churn` workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadMix {
    /// Neither `mixed` nor `churn`.
    #[error("not a mixed or churn workload")]
    NotMix,
    /// A part is missing.
    #[error("{kind}: expected {kind}:SIZE:KEEP{extra}, e.g. {kind}:3G:1%")]
    Shape {
        /// `mixed` or `churn`.
        kind: &'static str,
        /// What may follow KEEP.
        extra: &'static str,
    },
    /// SIZE is not a size, or zero.
    #[error("{kind}: SIZE '{text}' is not a size of at least one page (examples: 512M, 3G)")]
    Size {
        /// `mixed` or `churn`.
        kind: &'static str,
        /// What was given.
        text: String,
    },
    /// KEEP is not a fraction.
    #[error("{kind}: KEEP '{text}' is not a fraction from 0 to 1 (examples: 0.01, 1%, 0.1%)")]
    Keep {
        /// `mixed` or `churn`.
        kind: &'static str,
        /// What was given.
        text: String,
    },
    /// Something after KEEP that is not known.
    #[error("churn: '{0}' after KEEP: the only option is 'huge' (0.3% of allocations of order 9)")]
    Option(String),
}

/// Parses a fraction: `0.01`, `1%`, `0.1%`, from 0 to 1.
pub fn parse_fraction(text: &str) -> Option<f64> {
    let (digits, scale) = match text.strip_suffix('%') {
        Some(d) => (d, 100.0),
        None => (text, 1.0),
    };
    let v: f64 = digits.trim().parse().ok()?;
    let v = v / scale;
    (v.is_finite() && (0.0..=1.0).contains(&v)).then_some(v)
}

impl FromStr for Mix {
    type Err = BadMix;

    fn from_str(s: &str) -> Result<Mix, BadMix> {
        let mut parts = s.split(':');
        let (kind, extra) = match parts.next() {
            Some("mixed") => ("mixed", ""),
            Some("churn") => ("churn", "[:huge]"),
            _ => return Err(BadMix::NotMix),
        };
        let (Some(size), Some(keep)) = (parts.next(), parts.next()) else {
            return Err(BadMix::Shape { kind, extra });
        };
        let bytes = parse_size(size)
            .ok()
            .filter(|&b| b >= meminit::PAGE_SIZE)
            .ok_or_else(|| BadMix::Size {
                kind,
                text: size.to_string(),
            })?;
        let keep = parse_fraction(keep).ok_or_else(|| BadMix::Keep {
            kind,
            text: keep.to_string(),
        })?;
        let kind = match (kind, parts.next()) {
            ("mixed", None) => MixKind::Mixed,
            ("mixed", Some(_)) => return Err(BadMix::Shape { kind, extra }),
            (_, None) => MixKind::Churn { huge: false },
            (_, Some("huge")) if parts.next().is_none() => MixKind::Churn { huge: true },
            (_, Some(other)) => return Err(BadMix::Option(other.to_string())),
        };
        Ok(Mix { kind, bytes, keep })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keep = self.keep * 100.0;
        match self.kind {
            MixKind::Mixed => write!(f, "mixed:{}:{keep}%", Size(self.bytes)),
            MixKind::Churn { huge } => write!(
                f,
                "churn:{}:{keep}%{}",
                Size(self.bytes),
                if huge { ":huge" } else { "" }
            ),
        }
    }
}

/// How to run a mix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MixOptions {
    /// Kept allocations unmovable, the rest movable (else all movable).
    pub hints: bool,
    /// The fraction of allocations given the other class (0 to 1).
    pub wrong_hints: f64,
    /// Run a compaction pass, with the simulator's hook, before the idle passes.
    pub compact: bool,
    /// The seed of the run's random draws.
    pub seed: u64,
}

impl Default for MixOptions {
    fn default() -> Self {
        MixOptions {
            hints: true,
            wrong_hints: 0.0,
            compact: false,
            seed: 1,
        }
    }
}

/// One run of a mix, measured. Bytes throughout.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MixReport {
    /// The workload, as given.
    pub workload: String,
    /// The seed.
    pub seed: u64,
    /// Memory still held by the workload at the end (its kept allocations).
    pub live_bytes: u64,
    /// Memory the workload brought in (chunks initialised at its peak) and no
    /// longer holds: what could go back.
    pub freed_bytes: u64,
    /// Of that, what went back after the idle passes: chunks given back to
    /// uninitialised, plus free memory reported to the host.
    pub returned_bytes: u64,
    /// What could go back at best: everything freed except the free part of
    /// the fewest chunks that could hold the live pages.
    pub ideal_bytes: u64,
    /// Memmap resident at the workload's peak.
    pub memmap_peak_bytes: u64,
    /// Memmap resident after the idle passes.
    pub memmap_kept_bytes: u64,
    /// Blocks the compaction pass moved through the hook.
    pub migrated_blocks: u64,
    /// Blocks it asked the hook to move and the hook refused.
    pub refused_blocks: u64,
    /// Chunks the compaction pass emptied.
    pub chunks_emptied: u64,
    /// Allocations that failed.
    pub failures: u64,
    /// Allocations of a class other than the chunk's (steals), all zones.
    pub steals: u64,
}

impl MixReport {
    /// Returned as a percentage of freed.
    pub fn of_freed(&self) -> f64 {
        percent(self.returned_bytes, self.freed_bytes)
    }

    /// Returned as a percentage of ideal.
    pub fn of_ideal(&self) -> f64 {
        percent(self.returned_bytes, self.ideal_bytes)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests;
