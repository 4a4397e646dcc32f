//! Compaction: moving the allocated blocks of a nearly empty chunk of movable
//! memory out, through the embedder's [`Migrate`] hook, so that the chunk is
//! wholly free and the next give-back pass returns it.
//!
//! Hints cannot always be right: a file page's lifetime is unknown when it is
//! allocated, and a few long-lived pages scattered among short-lived movable
//! ones pin every chunk. [`Allocator::compact`] covers for that, as Linux's
//! compaction does, with two scanners over each zone:
//!
//! - the **source** scanner walks chunks from the bottom up and picks those
//!   that serve the movable class, are in use by at most
//!   [`Config::compact_max_used`](crate::Config::compact_max_used) bytes, hold
//!   only blocks allocated movable (none in a CPU cache or away for reporting)
//!   and have a free block;
//! - the **target** scanner walks chunks from the top down and takes free
//!   blocks only in chunks of movable memory in use (never a wholly free chunk,
//!   never by growing): pages gather at the top, and the pass ends where the two
//!   scanners meet.
//!
//! For a source chunk, under the zone lock, every free block of it is taken off
//! the lists and held (so nothing is allocated into it meanwhile); then, one
//! block at a time, a target of the same order is taken, the hook is called
//! (inside [`Allocator::in_callback`](super::Allocator), with no lock held),
//! and on success the source block is held too; on a refusal the target is
//! freed and the chunk is left. Last, everything held goes back on the lists:
//! a chunk whose every block moved is then wholly free. Everything runs under
//! the zone lock and the chunk words the buddy lists keep; there is no new
//! lock-free protocol. A block is moved only by the hook; nothing held by a
//! caller is touched otherwise.
//!
//! This module is policy over the buddy lists; it has no `unsafe` code (the
//! hook's trait is `unsafe` to implement).

use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

use lock_api::RawMutex;

use super::Allocator;
use crate::memmap::MemmapBacking;
use crate::page::PageState;
use crate::section::ChunkState;
use crate::types::{MobilityClass, Pfn, PAGE_SHIFT};
use crate::zone::Zone;

/// The embedder's hook that moves an allocated movable block.
///
/// # Safety
///
/// When [`migrate`](Migrate::migrate) returns `Ok`, the block at `from` must no
/// longer be used by anyone: its contents are at `to` (a block of the same
/// order the allocator allocated for it) and every reference to it was changed
/// to `to`. The allocator then frees `from`; a reference left behind would
/// see that memory handed out again. On `Err`, `from` must be as it was (still
/// in use by its owner) and `to` unused: the allocator frees `to`.
pub unsafe trait Migrate {
    /// Moves the allocated block of 2^`order` pages at `from` to `to`, or
    /// refuses (the block is pinned, its owner busy, or unknown). Called with no
    /// allocator lock held, inside a callback record: an allocation it makes is
    /// served from initialised free memory or fails with
    /// [`AllocError::Reentrant`](crate::AllocError::Reentrant), never waits. It
    /// must not wait for an allocation: the chunk being emptied is held
    /// meanwhile.
    fn migrate(&mut self, from: Pfn, to: Pfn, order: u32) -> Result<(), MigrateError>;
}

/// Why a [`Migrate`] hook did not move a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateError {
    /// What went wrong, in the hook's words.
    pub reason: &'static str,
}

impl core::error::Error for MigrateError {}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the block could not be moved: {}", self.reason)
    }
}

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Chunks whose blocks the pass tried to move out.
    pub chunks_tried: u64,
    /// Of those, chunks left wholly free.
    pub chunks_emptied: u64,
    /// Blocks the hook moved.
    pub blocks_moved: u64,
    /// Pages in them.
    pub pages_moved: u64,
    /// Blocks the hook refused to move.
    pub blocks_refused: u64,
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// One compaction pass over every zone (see the module docs): drains the
    /// CPU caches, then moves the blocks of nearly empty chunks of movable
    /// memory out through `migrate`, so that the next give-back pass
    /// ([`report_free`](Self::report_free), [`give_back`](Self::give_back),
    /// [`tick`](Self::tick)) returns those chunks. Does nothing with
    /// [`Config::compact_max_used`](crate::Config::compact_max_used) at 0.
    /// Never grows a zone and never fills a wholly free chunk.
    pub fn compact(&self, migrate: &mut impl Migrate) -> CompactStats {
        let mut stats = CompactStats::default();
        if self.config.compact_max_used == 0 {
            return stats;
        }
        self.drain_all_cpus();
        for zone in self.zones.iter().filter(|z| z.is_populated()) {
            self.compact_zone(zone, migrate, &mut stats);
        }
        stats
    }

    /// Whether chunk `chunk` is one of movable memory in use, of one zone, and
    /// ready: a source (if at most `max_used` pages are used) or a target.
    fn movable_in_use(&self, chunk: usize, max_used: u64) -> bool {
        let sections = self.memmap.sections();
        let word = sections.chunk_use(chunk);
        word.class() == Some(MobilityClass::Movable)
            && (1..=max_used).contains(&word.pages())
            && !word.is_shared()
            && sections.state(chunk) == ChunkState::Ready
    }

    fn compact_zone(&self, zone: &Zone<R>, migrate: &mut impl Migrate, stats: &mut CompactStats) {
        let shift = self.memmap.chunk_shift();
        let (first, end) = zone.chunks(shift);
        let max_used = self.config.compact_max_used >> PAGE_SHIFT;
        let chunk_pages = 1u64 << shift;
        // The target scanner: its chunk, and where in it to look next.
        let mut target = end;
        let mut target_from = 0;
        for source in first..end {
            if source >= target {
                return;
            }
            if !self.movable_in_use(source, max_used) {
                continue;
            }
            let (start, stop) = self.memmap.chunk_pfns(source);
            let held = zone.with_free(|area| {
                // Re-checked under the lock: only give-back leaves `Ready`,
                // under it, and the word changes only under it.
                if !self.movable_in_use(source, max_used)
                    || !area.chunk_movable(&self.memmap, start, stop)
                {
                    return 0;
                }
                let held = area.hold_chunk(&self.memmap, start, stop);
                // Relaxed: changed under the zone lock; read as a snapshot.
                zone.isolated.fetch_add(held, Relaxed);
                held
            });
            if held == 0 {
                continue;
            }
            stats.chunks_tried += 1;
            let mut cursor = start;
            while let Some((pfn, order)) =
                zone.with_free(|area| area.next_allocated(&self.memmap, cursor, stop))
            {
                cursor = pfn + (1 << order);
                // A target above the source, in a chunk of movable memory in use.
                let to = loop {
                    if target <= source + 1 {
                        break None;
                    }
                    let chunk = target - 1;
                    let (t_start, t_stop) = self.memmap.chunk_pfns(chunk);
                    let from = target_from.max(t_start);
                    let found = zone.with_free(|area| {
                        self.movable_in_use(chunk, chunk_pages - 1)
                            .then(|| area.take_in(&self.memmap, from, t_stop, order))
                            .flatten()
                    });
                    match found {
                        Some(to) => {
                            target_from = to + (1 << order);
                            break Some(to);
                        }
                        None => {
                            target -= 1;
                            target_from = 0;
                        }
                    }
                };
                let Some(to) = to else {
                    break;
                };
                let moved = self.in_callback(|| migrate.migrate(Pfn(pfn), Pfn(to), order));
                let index = zone_index_of(zone);
                if moved.is_ok() {
                    stats.blocks_moved += 1;
                    stats.pages_moved += 1 << order;
                    zone.with_free(|area| {
                        if area.hold_moved(&self.memmap, pfn, order) {
                            // Relaxed: as above.
                            zone.isolated.fetch_add(1 << order, Relaxed);
                        }
                    });
                } else {
                    stats.blocks_refused += 1;
                    zone.with_free(|area| {
                        let head = self.memmap.page(to).map(|p| p.state());
                        if head == Ok(PageState::Allocated { order }) {
                            area.free(&self.memmap, to, order, index);
                        }
                    });
                    break;
                }
            }
            zone.with_free(|area| {
                let back = area.put_back_held(&self.memmap, start, stop);
                // Relaxed: as above.
                zone.isolated.fetch_sub(back, Relaxed);
            });
            if self.memmap.sections().chunk_use(source).pages() == 0 {
                stats.chunks_emptied += 1;
            }
        }
    }
}

/// The index descriptors of `zone`'s pages store.
fn zone_index_of<R: RawMutex>(zone: &Zone<R>) -> u32 {
    crate::page::zone_index(crate::types::NodeId(zone.node as u32), zone.kind)
}
