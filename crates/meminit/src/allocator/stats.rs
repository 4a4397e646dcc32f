//! Counters of initialisation work, and the snapshot [`Stats`] read from them and
//! from the zones.
//!
//! Statistics only: nothing here orders or decides anything.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::RawMutex;

use super::Allocator;
use crate::memmap::MemmapBacking;
use crate::types::PAGE_SIZE;

/// Who initialised a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitCause {
    Boot = 0,
    Worker = 1,
    Grow = 2,
    Lookup = 3,
}

/// Counters of initialisation work. All `Relaxed`: statistics, ordered by nothing.
pub(crate) struct InitCounters {
    pub(super) chunks_by: [AtomicU64; 4],
    /// Chunks given back to uninitialised.
    pub(crate) given_back: AtomicU64,
    pub(super) grows: AtomicU64,
    pub(super) grow_time: AtomicU64,
}

impl InitCounters {
    pub(crate) const fn new() -> Self {
        InitCounters {
            chunks_by: [const { AtomicU64::new(0) }; 4],
            given_back: AtomicU64::new(0),
            grows: AtomicU64::new(0),
            grow_time: AtomicU64::new(0),
        }
    }
}

/// The allocator as a whole: what initialisation has done so far, in chunks (the
/// unit of initialisation), the memmap, and the memory still to be had. Per-zone
/// counters are [`ZoneStats`](crate::ZoneStats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of memory per chunk.
    pub chunk_bytes: u64,
    /// Chunks with present pages.
    pub chunks_present: u64,
    /// Of those, chunks whose pages are all on the free lists.
    pub chunks_done: u64,
    /// Chunks initialised at start-up.
    pub by_boot: u64,
    /// Chunks initialised by deferred workers.
    pub by_workers: u64,
    /// Chunks initialised by the grow path.
    pub by_growth: u64,
    /// Chunks initialised by descriptor look-ups.
    pub by_lookup: u64,
    /// Allocations that grew a zone.
    pub grows: u64,
    /// Time those allocations spent growing, in the unit of [`Config::clock`](crate::Config::clock).
    pub grow_time: u64,
    /// Bytes of memmap populated.
    pub memmap_bytes: u64,
    /// Whether the off switch is set.
    pub fully_initialised: bool,
    /// Chunks given back to uninitialised so far ([`Config::give_back`](crate::Config::give_back)); each is
    /// counted again in the `by_*` figures when it is initialised anew.
    pub given_back: u64,
    /// Pages free or uninitialised across all zones: what a caller watching
    /// memory should count as available (pages in CPU caches and out for
    /// reporting are free).
    pub available_pages: u64,
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// A snapshot of the allocator's counters (exact when no operation is in
    /// flight). Takes no lock: reads every zone's counters as they stand.
    pub fn stats(&self) -> Stats {
        let by = |c: InitCause| self.counters.chunks_by[c as usize].load(Relaxed);
        let sections = self.memmap.sections();
        let present = sections.present() as u64;
        Stats {
            chunk_bytes: PAGE_SIZE << self.memmap.chunk_shift(),
            chunks_present: present,
            chunks_done: present - sections.unfinished() as u64,
            by_boot: by(InitCause::Boot),
            by_workers: by(InitCause::Worker),
            by_growth: by(InitCause::Grow),
            by_lookup: by(InitCause::Lookup),
            grows: self.counters.grows.load(Relaxed),
            grow_time: self.counters.grow_time.load(Relaxed),
            memmap_bytes: self.memmap.populated_bytes(),
            fully_initialised: sections.all_initialised(),
            given_back: self.counters.given_back.load(Relaxed),
            available_pages: self
                .zones
                .iter()
                .map(|z| z.available(self.cached_pages(z)))
                .sum(),
        }
    }
}
