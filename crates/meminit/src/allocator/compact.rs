//! Compaction: moving the allocated blocks of a nearly empty chunk of movable
//! memory out, through the embedder's [`Migrate`] hook, so that the chunk is
//! wholly free and the next give-back pass returns it.
//!
//! Hints cannot always be right: a file page's lifetime is unknown when it is
//! allocated, and a few long-lived pages scattered among short-lived movable
//! ones pin every chunk. [`Allocator::compact`] covers for that, as Linux's
//! compaction does, with two scanners over each zone:
//!
//! The pass orders a zone's chunks by section: first the chunks of
//! **anchored** sections (those with a chunk in use that no pass moves
//! anything out of: unmovable, or shared by two zones; their memmap stays
//! anyway), then the chunks of the others, each by address.
//! Memmap goes back a whole section at a time, so blocks should leave the
//! sections that can then go back whole, for the sections that stay.
//!
//! - the **source** scanner walks that order from the back (unanchored
//!   sections, top down, then anchored ones) and picks chunks that serve the
//!   movable class, are in use by at most
//!   [`Config::compact_max_used`](crate::Config::compact_max_used) bytes, hold
//!   only blocks allocated movable (none in a CPU cache or away for reporting)
//!   and have a free block;
//! - the **target** scanner walks it from the front (anchored sections, bottom
//!   up, then the others) and takes free blocks only in chunks of movable
//!   memory in use (never a wholly free chunk, never by growing): pages gather
//!   low in the sections that stay, and the pass ends where the two scanners
//!   meet.
//!
//! A section's anchoring is read from its chunks' words, without a lock, when
//! a scanner enters it: it orders the pass and decides nothing else. Moving
//! movable blocks does not change it (only allocations and frees of other
//! classes do), so both scanners see one order, and both only move on: a pass
//! ends.
//! [`Allocator::compact_up_to`] bounds a pass by the pages it moves, for an
//! idle loop that spreads the work over its rounds.
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
        self.compact_up_to(migrate, u64::MAX)
    }

    /// [`compact`](Self::compact), bounded: the pass takes no new chunk once
    /// it moved `max_pages` pages (it finishes the chunk it is emptying, at
    /// most [`Config::compact_max_used`](crate::Config::compact_max_used)
    /// more). An idle loop calls it again and again to spread a long pass over
    /// several of its rounds; each call starts over from the ends of the
    /// order, and finds the chunks already emptied free.
    pub fn compact_up_to(&self, migrate: &mut impl Migrate, max_pages: u64) -> CompactStats {
        let mut stats = CompactStats::default();
        if self.config.compact_max_used == 0 || max_pages == 0 {
            return stats;
        }
        self.drain_all_cpus();
        for zone in self.zones.iter().filter(|z| z.is_populated()) {
            self.compact_zone(zone, migrate, max_pages, &mut stats);
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

    fn compact_zone(
        &self,
        zone: &Zone<R>,
        migrate: &mut impl Migrate,
        budget: u64,
        stats: &mut CompactStats,
    ) {
        let shift = self.memmap.chunk_shift();
        let (first, end) = zone.chunks(shift);
        if first >= end {
            return;
        }
        let max_used = self.config.compact_max_used >> PAGE_SHIFT;
        let chunk_pages = 1u64 << shift;
        let shift_in_section = self.memmap.sections().chunks_shift();
        let mut sources = Scanner::new(first, end, shift_in_section, Direction::Down);
        let mut targets = Scanner::new(first, end, shift_in_section, Direction::Up);
        targets.next(|s| self.anchored(s));
        // Where in the target scanner's chunk to look next.
        let mut target_from = 0;
        while let Some(source) = sources.next(|s| self.anchored(s)) {
            if stats.pages_moved >= budget || source <= targets.place() {
                return;
            }
            if !self.movable_in_use(source.chunk, max_used) {
                continue;
            }
            let (start, stop) = self.memmap.chunk_pfns(source.chunk);
            let held = zone.with_free(|area| {
                // Re-checked under the lock: only give-back leaves `Ready`,
                // under it, and the word changes only under it.
                if !self.movable_in_use(source.chunk, max_used)
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
                // A target before the source in the pass's order, in a chunk of
                // movable memory in use.
                let to = loop {
                    let place = targets.place();
                    if place.chunk >= end || place >= source {
                        break None;
                    }
                    let (t_start, t_stop) = self.memmap.chunk_pfns(place.chunk);
                    let from = target_from.max(t_start);
                    let found = zone.with_free(|area| {
                        self.movable_in_use(place.chunk, chunk_pages - 1)
                            .then(|| area.take_in(&self.memmap, from, t_stop, order))
                            .flatten()
                    });
                    match found {
                        Some(to) => {
                            target_from = to + (1 << order);
                            break Some(to);
                        }
                        None => {
                            targets.next(|s| self.anchored(s));
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
            if self.memmap.sections().chunk_use(source.chunk).pages() == 0 {
                stats.chunks_emptied += 1;
            }
        }
    }

    /// Whether section `section`'s memmap stays whatever compaction does: it
    /// has a chunk in use that no pass moves anything out of (unmovable, shared
    /// by two zones, or not ready). Movable chunks do not anchor, however full:
    /// a pass fills its targets, and a section it fills must keep its place in
    /// the order. A hint read from the chunks' words without a lock: it only
    /// orders the pass.
    fn anchored(&self, section: usize) -> bool {
        let sections = self.memmap.sections();
        let shift = sections.chunks_shift();
        let first = section << shift;
        (first..first + (1 << shift)).any(|chunk| {
            sections.chunk_use(chunk).pages() > 0 && !self.movable_in_use(chunk, u64::MAX)
        })
    }
}

/// A chunk's place in a pass's order: the chunks of anchored sections first
/// (`phase` 0), then the others (`phase` 1), each by address. Targets are taken
/// from the front, sources from the back, and the pass ends where they meet:
/// blocks leave sections that can then go back whole, for sections that stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    phase: u8,
    chunk: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the front of the order: the target scanner.
    Up,
    /// From the back: the source scanner.
    Down,
}

/// A walk over one zone's chunks `[first, end)` in [`Place`] order, one way,
/// each section's anchoring read when the walk enters it.
struct Scanner {
    first: usize,
    end: usize,
    /// log2 of the chunks in a section.
    shift: u32,
    direction: Direction,
    /// Where the walk stands: at the chunk last returned; before it started,
    /// at the front (targets: sources may not pass it) or after the back
    /// (sources); once over, after the back (targets) or before the front
    /// (sources).
    place: Place,
    started: bool,
    /// The section last asked about, and its answer.
    section: Option<(usize, bool)>,
}

/// Before every place: where a finished source walk stands.
const BEFORE: Place = Place { phase: 0, chunk: 0 };
/// After every place: where a finished target walk stands.
const AFTER: Place = Place { phase: 2, chunk: 0 };

impl Scanner {
    fn new(first: usize, end: usize, shift: u32, direction: Direction) -> Self {
        Scanner {
            first,
            end,
            shift,
            direction,
            place: match direction {
                Direction::Up => Place {
                    phase: 0,
                    chunk: first,
                },
                Direction::Down => AFTER,
            },
            started: false,
            section: None,
        }
    }

    /// Where the scanner stands (see the field).
    fn place(&self) -> Place {
        self.place
    }

    /// The place after `at` (or the first, with `None`) in the walk's
    /// direction, whatever the anchoring; `None` past the end of the order.
    fn step(&self, at: Option<Place>) -> Option<Place> {
        let (first_phase, last_phase, start) = match self.direction {
            Direction::Up => (0, 1, self.first),
            Direction::Down => (1, 0, self.end - 1),
        };
        let Some(at) = at else {
            return Some(Place {
                phase: first_phase,
                chunk: start,
            });
        };
        let chunk = match self.direction {
            Direction::Up => Some(at.chunk + 1).filter(|&c| c < self.end),
            Direction::Down => Some(at.chunk).filter(|&c| c > self.first).map(|c| c - 1),
        };
        match chunk {
            Some(chunk) => Some(Place { chunk, ..at }),
            None if at.phase == first_phase => Some(Place {
                phase: last_phase,
                chunk: start,
            }),
            None => None,
        }
    }

    /// Moves to the next chunk in the scanner's direction whose section's
    /// anchoring (`anchored`, asked each time the walk enters a section)
    /// matches its phase, and returns it; `None` once the walk is over.
    fn next(&mut self, mut anchored: impl FnMut(usize) -> bool) -> Option<Place> {
        let mut at = self.started.then_some(self.place);
        self.started = true;
        loop {
            let Some(next) = self.step(at) else {
                self.place = match self.direction {
                    Direction::Up => AFTER,
                    Direction::Down => BEFORE,
                };
                return None;
            };
            let section = next.chunk >> self.shift;
            let is_anchored = match self.section {
                Some((s, answer)) if s == section && at.is_some_and(|a| a.phase == next.phase) => {
                    answer
                }
                _ => {
                    let answer = anchored(section);
                    self.section = Some((section, answer));
                    answer
                }
            };
            at = Some(next);
            if is_anchored == (next.phase == 0) {
                self.place = next;
                return Some(next);
            }
        }
    }
}

/// The index descriptors of `zone`'s pages store.
fn zone_index_of<R: RawMutex>(zone: &Zone<R>) -> u32 {
    crate::page::zone_index(crate::types::NodeId(zone.node as u32), zone.kind)
}
