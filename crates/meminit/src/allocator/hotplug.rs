//! Memory that becomes present after start-up, and leaves again: hot-add and
//! hot-remove of chunks of the layout's hot-pluggable ranges
//! ([`RangeKind::Hotplug`](crate::RangeKind::Hotplug)).
//!
//! The layout declares every hot-pluggable range at start-up, so their section
//! slots and the memmap's address space exist from the start, and their chunks
//! start `Absent`: not present, no descriptor, counted nowhere.
//!
//! - [`Allocator::add_memory`] makes whole chunks present and *uninitialised*
//!   (`Absent → Uninit`), writing no descriptor, in time proportional to the
//!   sections added; the grow path initialises them when an allocation needs
//!   them, like any other chunk. Order of updates: the zone's `present` (its
//!   plugged pages), then its uninitialised count, then the off switch's count of
//!   unfinished chunks, then (Release) the chunks' states. A grower that sees one
//!   of the chunks `Uninit` has therefore seen its counts, and at every instant
//!   `present` covers `free + allocated + uninitialised + reserved`, equal to it
//!   whenever no operation is in flight.
//! - [`Allocator::remove_memory`] takes chunks out again: first every
//!   uninitialised chunk of the range becomes `Absent` at once (a
//!   compare-and-swap per section, so no grower or look-up can claim one of them
//!   any more), then the CPU caches are drained, then each initialised chunk,
//!   highest first, goes if every usable page of it is free on its zone's lists:
//!   under the zone lock its blocks leave the lists (a give-back), it becomes
//!   `Absent` and its memmap (the chunk's, or the section's once none of the
//!   section's chunks is left) is released through
//!   [`MemmapBacking::depopulate`]. Counters move in the reverse order of an add:
//!   the chunk's state, then its uninitialised count, then `present`. A chunk
//!   with any page allocated, in a CPU cache or out for reporting, is kept and
//!   said so in the [`Removed`] answer; so is a chunk holding the memmap of
//!   its section's other chunks while any of them is still present. No page
//!   held by a caller is ever removed.
//!
//! **Hot-plugged memory takes movable allocations** (Linux's `online_movable`):
//! a zone whose memory is all hot-pluggable (the usual case: a virtio-mem region
//! above a guest's boot memory) comes last for [`MobilityClass::Unmovable`]
//! allocations, after every other zone of the zone list, growth and steals in
//! them included; movable allocations take it in zone-list order. So unmovable
//! memory lands there only as a last resort, when the rest of memory is full. In
//! a zone that holds both boot memory and hot-pluggable memory the rule is not
//! kept: the lists do not tell the two apart.
//!
//! One add or remove runs at a time ([`HotplugError::Busy`] otherwise); either
//! runs beside any number of allocations, frees, growths and give-backs.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::Ordering::{Relaxed, Release};

use lock_api::RawMutex;

use super::Allocator;
use crate::memmap::MemmapBacking;
use crate::page::zone_index;
use crate::section::{ChunkState, Retiring};
use crate::types::{MobilityClass, Pfn};
use crate::zone::Zone;

/// Why an add or remove of memory was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotplugError {
    /// The range is empty or inverted.
    Empty {
        /// The range.
        range: Range<Pfn>,
    },
    /// The range does not start and end on chunk boundaries.
    Misaligned {
        /// The range.
        range: Range<Pfn>,
        /// Pages in a chunk.
        chunk_pages: u64,
    },
    /// Some of the range was not declared hot-pluggable in the layout.
    NotHotpluggable {
        /// The range.
        range: Range<Pfn>,
    },
    /// An add found a chunk of the range present already.
    AlreadyPresent {
        /// The range.
        range: Range<Pfn>,
        /// The first pfn of the first chunk found present.
        pfn: Pfn,
    },
    /// Another add or remove is in flight.
    Busy {
        /// The range.
        range: Range<Pfn>,
    },
}

impl core::error::Error for HotplugError {}

impl fmt::Display for HotplugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |r: &Range<Pfn>| (r.start.addr(), r.end.addr());
        match self {
            HotplugError::Empty { range } => {
                let (s, e) = show(range);
                write!(f, "memory range [{s:#x}, {e:#x}) is empty")
            }
            HotplugError::Misaligned { range, chunk_pages } => {
                let (s, e) = show(range);
                write!(
                    f,
                    "memory range [{s:#x}, {e:#x}) is not whole chunks of {chunk_pages} pages"
                )
            }
            HotplugError::NotHotpluggable { range } => {
                let (s, e) = show(range);
                write!(
                    f,
                    "memory range [{s:#x}, {e:#x}) was not declared hot-pluggable at start-up"
                )
            }
            HotplugError::AlreadyPresent { range, pfn } => {
                let (s, e) = show(range);
                write!(
                    f,
                    "memory range [{s:#x}, {e:#x}) is present already at {:#x}",
                    pfn.addr()
                )
            }
            HotplugError::Busy { range } => {
                let (s, e) = show(range);
                write!(
                    f,
                    "memory range [{s:#x}, {e:#x}): another add or remove of memory is in flight"
                )
            }
        }
    }
}

/// What [`Allocator::remove_memory`] did, in pages of the range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Pages this call made absent: the host may take their memory back.
    pub pages: u64,
    /// Pages that were absent already.
    pub absent: u64,
    /// Pages still present: chunks with a page allocated, cached or out for
    /// reporting (or holding a memmap still in use). The range must not be
    /// taken from the guest while any are.
    pub kept: u64,
    /// The first kept chunk's first pfn, if any was kept.
    pub first_kept: Option<Pfn>,
    /// Bytes of memmap the backing released.
    pub memmap_bytes_released: u64,
}

impl Removed {
    /// Whether every page of the range is absent now.
    pub const fn is_complete(&self) -> bool {
        self.kept == 0
    }
}

/// Whether `zone` has any present page now.
#[inline]
pub(super) fn has_present<R: RawMutex>(zone: &Zone<R>) -> bool {
    // Relaxed: a zone whose first plug this misses is skipped by an allocation
    // that began before the plug finished, as if it came first.
    zone.span.present > 0 || zone.plugged.load(Relaxed) > 0
}

/// Whether allocations of `class` try zones whose memory is all hot-pluggable
/// after every other zone of their list (unmovable memory there would keep it
/// from being unplugged).
#[inline]
pub(super) fn defers_hotplug_only(class: MobilityClass) -> bool {
    class == MobilityClass::Unmovable
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Makes the hot-pluggable chunks of `range` present and uninitialised: the
    /// next allocation that needs memory of their zone initialises them. Writes
    /// no descriptor and populates no memmap; costs a few atomic operations per
    /// section. Returns the pages added.
    ///
    /// `range` must be whole chunks ([`Config::chunk_size`](crate::Config::chunk_size)),
    /// declared hot-pluggable in the layout, and wholly absent; call it once the
    /// memory is usable (a virtio-mem device answered the plug).
    pub fn add_memory(&self, range: Range<Pfn>) -> Result<u64, HotplugError> {
        let chunks = self.hotplug_chunks(&range)?;
        let sections = self.memmap.sections();
        let guard = sections.begin_hotplug().ok_or(HotplugError::Busy {
            range: range.clone(),
        })?;
        // Holding the flag, no one else moves a chunk out of Absent.
        if let Some(chunk) = sections.first_not_absent(chunks.clone()) {
            let pfn = Pfn(self.memmap.chunk_pfns(chunk).0);
            return Err(HotplugError::AlreadyPresent { range, pfn });
        }
        let mut pages = 0;
        for run in self.layout.hotplug_runs(range.clone()) {
            let zone = &self.zones[zone_index(run.node, run.zone) as usize];
            // Relaxed: both are published by the Release of the chunks' states
            // in `plug`; `present` first, so it never falls below the sum.
            zone.plugged.fetch_add(run.pages(), Relaxed);
            zone.uninit.fetch_add(run.pages(), Relaxed);
            pages += run.pages();
        }
        if !sections.plug(chunks, &guard) {
            // Hot-pluggable sections are in the memmap's, which have slots.
            self.uncount(range.clone());
            return Err(HotplugError::NotHotpluggable { range });
        }
        Ok(pages)
    }

    /// Takes the hot-pluggable chunks of `range` out of use: each uninitialised
    /// chunk, and each initialised one whose usable pages are all free, becomes
    /// absent (its memmap released through the backing); a chunk holding any
    /// page in use stays, and the answer says how much did. Allocations never
    /// get a page of a chunk once it is removed. `range` must be whole chunks,
    /// declared hot-pluggable; absent chunks in it are counted, not refused.
    pub fn remove_memory(&self, range: Range<Pfn>) -> Result<Removed, HotplugError> {
        let chunks = self.hotplug_chunks(&range)?;
        let sections = self.memmap.sections();
        let _guard = sections.begin_hotplug().ok_or(HotplugError::Busy {
            range: range.clone(),
        })?;
        let chunk_pages = 1u64 << self.memmap.chunk_shift();
        let mut out = Removed::default();
        for chunk in chunks.clone() {
            if sections.state(chunk) == ChunkState::Absent {
                out.absent += chunk_pages;
            }
        }
        // Uninitialised chunks first, all at once: no claim can take them now.
        sections.unplug_uninit(chunks.clone(), |chunk| out.pages += self.forget(chunk));
        self.drain_all_cpus();
        for chunk in chunks.rev() {
            loop {
                match sections.state(chunk) {
                    ChunkState::Absent => {}
                    // Given back just now: it goes as uninitialised.
                    ChunkState::Uninit => {
                        let gone = sections
                            .unplug_uninit(chunk..chunk + 1, |c| out.pages += self.forget(c));
                        if gone == 0 {
                            continue;
                        }
                    }
                    ChunkState::Initialising if !self.reentrant() => {
                        sections.wait_while_initialising(chunk);
                        continue;
                    }
                    ChunkState::Ready => {
                        if let Some((pages, bytes)) = self.remove_ready(chunk) {
                            out.pages += pages;
                            out.memmap_bytes_released += bytes;
                            break;
                        }
                        // A give-back took it out of `Ready` first: look again.
                        if sections.state(chunk) != ChunkState::Ready {
                            continue;
                        }
                        self.kept(chunk, &mut out);
                    }
                    ChunkState::Initialising => self.kept(chunk, &mut out),
                }
                break;
            }
        }
        Ok(out)
    }

    /// The chunks of `range`, checked: not empty, whole chunks, hot-pluggable.
    fn hotplug_chunks(&self, range: &Range<Pfn>) -> Result<Range<usize>, HotplugError> {
        if range.start >= range.end {
            return Err(HotplugError::Empty {
                range: range.clone(),
            });
        }
        let shift = self.memmap.chunk_shift();
        let chunk_pages = 1u64 << shift;
        if range.start.0 % chunk_pages != 0 || range.end.0 % chunk_pages != 0 {
            return Err(HotplugError::Misaligned {
                range: range.clone(),
                chunk_pages,
            });
        }
        if !self.layout.is_hotplug(range.clone()) {
            return Err(HotplugError::NotHotpluggable {
                range: range.clone(),
            });
        }
        // Below MAX_PFN (2^40): fits in usize on 64-bit targets.
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(to_usize(range.start.0 >> shift)..to_usize(range.end.0 >> shift))
    }

    /// Takes `range`'s pages out of its zones' present and uninitialised
    /// counts, uninitialised first. Returns the pages.
    fn uncount(&self, range: Range<Pfn>) -> u64 {
        let mut pages = 0;
        for run in self.layout.hotplug_runs(range) {
            let zone = &self.zones[zone_index(run.node, run.zone) as usize];
            // Release: pairs with the Acquire in `grow_and_take`; the chunk's
            // state changed before (a grower that reads this count after finds
            // it absent).
            zone.uninit.fetch_sub(run.pages(), Release);
            // Relaxed: a counter, exact when quiescent.
            zone.plugged.fetch_sub(run.pages(), Relaxed);
            pages += run.pages();
        }
        pages
    }

    /// Counts chunk `chunk`, made absent from `Uninit`, out of its zones.
    fn forget(&self, chunk: usize) -> u64 {
        let (start, end) = self.memmap.chunk_pfns(chunk);
        self.uncount(Pfn(start)..Pfn(end))
    }

    fn kept(&self, chunk: usize, out: &mut Removed) {
        out.kept += 1 << self.memmap.chunk_shift();
        let pfn = Pfn(self.memmap.chunk_pfns(chunk).0);
        out.first_kept = Some(out.first_kept.map_or(pfn, |p| p.min(pfn)));
    }

    /// Removes `Ready` chunk `chunk` if every usable page of it is free on its
    /// zone's lists, and if it holds its section's memmap, only once every other
    /// chunk of the section is absent. Returns the pages removed and the bytes
    /// of memmap released.
    fn remove_ready(&self, chunk: usize) -> Option<(u64, u64)> {
        let (start, end) = self.memmap.chunk_pfns(chunk);
        let mut runs = self.layout.hotplug_runs(Pfn(start)..Pfn(end));
        let first = runs.next()?;
        if runs.any(|r| (r.node, r.zone) != (first.node, first.zone)) {
            return None;
        }
        let index = zone_index(first.node, first.zone);
        let zone = &self.zones[index as usize];
        let usable = end - start;
        let taken = self.memmap.taken_in(chunk);
        let taken_pages = taken.end - taken.start;
        let sections = self.memmap.sections();
        if taken_pages > 0 {
            let per = 1usize << sections.chunks_shift();
            let first_chunk = chunk & !(per - 1);
            let others = (first_chunk..first_chunk + per).filter(|&c| c != chunk);
            if others
                .into_iter()
                .any(|c| sections.state(c) != ChunkState::Absent)
            {
                return None;
            }
        }
        let retiring: Retiring<'_, '_> = zone.with_free(|area| {
            // Under the lock: only give-back and this leave `Ready`, under it; the
            // word of use changes only under it.
            if sections.state(chunk) != ChunkState::Ready || sections.chunk_use(chunk).pages() != 0
            {
                return None;
            }
            let found = area.chunk_free(&self.memmap, start, end, index)?;
            if found.free + taken_pages != usable {
                return None;
            }
            // As give-back: counted uninitialised before its blocks leave the
            // lists, so a grower that misses them looks again. Relaxed: under
            // the zone lock, which such a grower takes before it reads again.
            zone.uninit.fetch_add(usable, Relaxed);
            zone.memmap_pages.fetch_sub(taken_pages, Relaxed);
            area.remove_chunk(&self.memmap, start, end);
            sections.retire(chunk).map(Retiring::into_absent)
        })?;
        // Dropping `retiring` inside makes the chunk `Absent`, then the section's
        // memmap may go.
        let bytes = self.in_callback(|| self.memmap.depopulate(retiring));
        self.uncount(Pfn(start)..Pfn(end));
        Some((usable, bytes))
    }
}
