//! The figures a simulated boot reports, one [`StrategyReport`] per strategy
//! in a [`Report`], and their serialisation (the JSON of `meminit report`). It
//! holds and summarises figures; measuring them is `sim`'s (re-exported there),
//! printing them the command line's.

use meminit::Strategy;
use serde::Serialize;

use crate::spike::SpikeReport;

/// Latency of a set of allocations, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Allocations measured.
    pub count: u64,
    /// Median.
    pub median_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Maximum.
    pub max_ns: u64,
}

impl Latency {
    pub(crate) fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Latency {
            count: samples.len() as u64,
            median_ns: at(0.5),
            p99_ns: at(0.99),
            max_ns: *samples.last().unwrap(),
        }
    }
}

/// One zone after the run, in pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZoneRow {
    /// Node.
    pub node: u8,
    /// Linux's zone name.
    pub zone: &'static str,
    /// Pages spanned.
    pub spanned: u64,
    /// Pages present.
    pub present: u64,
    /// Pages managed.
    pub managed: u64,
    /// Pages free.
    pub free: u64,
    /// Pages not yet initialised.
    pub uninitialised: u64,
}

/// What one early allocation asked for and got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EarlyResult {
    /// What Linux calls it.
    pub name: String,
    /// Bytes asked for.
    pub bytes: u64,
    /// Order of each block.
    pub order: u32,
    /// Blocks asked for, per node.
    pub blocks_per_node: Vec<u64>,
    /// Zones allowed: `any`, `dma32` or `dma`.
    pub constraint: &'static str,
    /// Blocks that could not be allocated.
    pub failures: u64,
}

/// The figures of one strategy on one machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StrategyReport {
    /// `eager`, `deferred` or `ondemand`.
    pub strategy: &'static str,
    /// Why the strategy was not run, if it was not.
    pub skipped: Option<String>,
    /// Time until the allocator could serve (ns).
    pub ready_ns: u64,
    /// Time until every chunk was initialised (ns); `None` if never (on-demand).
    pub full_init_ns: Option<u64>,
    /// Deferred worker threads used.
    pub worker_threads: usize,
    /// Wall time spent initialising memmap: start-up, workers and growth (ns).
    pub init_ns: u64,
    /// Allocations that grew a zone.
    pub grows: u64,
    /// Time they spent growing (ns).
    pub grow_ns: u64,
    /// Bytes of memory per chunk, the unit of initialisation.
    pub chunk_bytes: u64,
    /// Chunks initialised at start-up, by workers, by growth, by look-ups.
    pub chunks_by_boot: u64,
    /// See `chunks_by_boot`.
    pub chunks_by_workers: u64,
    /// See `chunks_by_boot`.
    pub chunks_by_growth: u64,
    /// See `chunks_by_boot`.
    pub chunks_by_lookup: u64,
    /// Chunks with present memory.
    pub chunks_present: u64,
    /// Memmap bytes populated at the end.
    pub memmap_populated_bytes: u64,
    /// Memmap bytes resident on the host after boot (after deferred init), from
    /// `mincore`.
    pub memmap_resident_boot_bytes: u64,
    /// Memmap bytes resident on the host after the workload, from `mincore`.
    pub memmap_resident_end_bytes: u64,
    /// Memmap bytes if every present section were initialised (the eager cost).
    pub memmap_full_bytes: u64,
    /// Whether chunks were accepted (zeroed) before first use.
    pub accept: bool,
    /// Bytes of memory accepted when the allocator could serve.
    pub accepted_ready_bytes: u64,
    /// Bytes accepted after boot (boot allocations, deferred workers).
    pub accepted_boot_bytes: u64,
    /// Bytes accepted after the workload.
    pub accepted_end_bytes: u64,
    /// Whether chunks that stayed free were given back (by the idle passes of
    /// the `spike` workload).
    pub give_back: bool,
    /// Initialised free memory each zone kept when giving back (bytes).
    pub give_back_reserve_bytes: u64,
    /// The `spike` workload's figures, when it ran.
    pub spike: Option<SpikeReport>,
    /// Fast-path allocations (free lists of the first or a fallback zone).
    pub alloc_fast: Latency,
    /// Slow-path allocations (the ones that grew a zone).
    pub alloc_slow: Latency,
    /// Allocations that failed.
    pub alloc_failures: u64,
    /// Time for one core to fill `memmap_populated_bytes` of fresh memory (ns):
    /// the best of the honest fills ([`Fills`](crate::limit::Fills)) by its mean
    /// of one fill before the run and one after.
    pub limit_fill_ns: u64,
    /// Which fill that was: `whole` (fault in everything, then write),
    /// `chunked` (fault in and write 2 MiB at a time, in cache) or
    /// `chunked-nt` (the same with non-temporal stores).
    pub limit_method: &'static str,
    /// `limit_fill_ns / init_ns`: 1.0 means initialisation ran at the physical
    /// limit of one core; above 1 it used more than one.
    pub limit_ratio: f64,
    /// Time for `limit_parallel_threads` cores, together, to fill the same bytes
    /// of fresh memory 2 MiB at a time (ns): the limit for deferred
    /// initialisation, which runs on all of them.
    pub limit_parallel_fill_ns: u64,
    /// Threads of that fill: the deferred worker threads (this host's cores by
    /// default).
    pub limit_parallel_threads: usize,
    /// Of `init_ns`, the time the host spent committing memmap in the backing's
    /// populate (ns): its kernel zeroing the pages, which the allocator waits
    /// for and does not control. The deferred workers' commits, side by side,
    /// count as their mean.
    pub init_populate_ns: u64,
    /// The fill's writes alone, less its commits (ns): for deferred, the
    /// parallel fill's (its threads' mean commits taken out); otherwise the
    /// chunked fill's, the mean of the one before the run and the one after.
    pub limit_writes_ns: u64,
    /// `limit_writes_ns` over initialisation less its populate (`init_ns -
    /// init_populate_ns`): the allocator's own work (descriptor writes and
    /// bookkeeping) against `memset` of the same bytes, with the host's
    /// zeroing, which varies with the pages it hands out, out of both. 0 where
    /// the run did not write every chunk's descriptors exactly once (on-demand,
    /// or chunks given back and initialised again), or did not commit and
    /// write as the fill does (acceptance on, a premapped memmap, chunk
    /// granularity): there the two are not the same work.
    pub limit_writes_ratio: f64,
    /// The boot allocations and what they got.
    pub boot: Vec<EarlyResult>,
    /// Per node and zone, after the workload.
    pub zones: Vec<ZoneRow>,
}

impl StrategyReport {
    pub(crate) fn skipped(strategy: Strategy, why: String) -> StrategyReport {
        StrategyReport {
            strategy: strategy.name(),
            skipped: Some(why),
            ..StrategyReport::default()
        }
    }
}

/// A whole report: one machine, every strategy asked for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The machine's name.
    pub machine: String,
    /// Its memory: present bytes.
    pub present_bytes: u64,
    /// Nodes.
    pub nodes: usize,
    /// CPUs.
    pub cpus: u32,
    /// Section size in bytes.
    pub section_bytes: u64,
    /// The workload.
    pub workload: String,
    /// The strategies.
    pub strategies: Vec<StrategyReport>,
}
