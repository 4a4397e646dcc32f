//! Zones: one lock around each zone's free lists, and its counters.
//!
//! A [`Zone`] owns its [`FreeArea`] behind a lock of the embedder's type and the
//! counters a caller watching memory needs: present, managed, free, uninitialised.
//! The lock is held only to move blocks on and off the lists (one block, or one
//! batch for a CPU cache), never while descriptors are written for a chunk.
//! Beside the lists, each zone has its [`Depot`]s of whole batches that CPU
//! caches exchange without this lock.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use lock_api::{Mutex, RawMutex};

use crate::buddy::{FreeArea, LISTS, WHOLE};
use crate::depot::Depot;
use crate::layout::ZoneSpan;
use crate::memmap::{Memmap, MemmapBacking};
use crate::types::{MobilityClass, NodeId, Pfn, ZoneType, MAX_ORDER};

/// A zone of one node.
pub(crate) struct Zone<R: RawMutex> {
    pub(crate) node: u8,
    pub(crate) kind: ZoneType,
    pub(crate) span: ZoneSpan,
    free: Mutex<R, FreeArea>,
    /// Mirror of the free-list page count, written under the lock, read without it.
    free_pages: AtomicU64,
    /// Mirror of the reported pages on the free lists, likewise.
    reported_pages: AtomicU64,
    /// Mirror of the free pages on each list (per class, then of wholly free
    /// chunks), likewise.
    list_pages: [AtomicU64; LISTS],
    /// Mirror of the steals, likewise.
    steals: AtomicU64,
    /// Free pages taken off the lists while free page reporting hands them to the
    /// host; they count as free. Changed under the lock.
    pub(crate) isolated: AtomicU64,
    /// Allocations waiting for blocks away for reporting: while any is, free
    /// page reporting isolates no more of this zone's blocks, so that the
    /// waiter's next look finds those that come back. Raised under the lock.
    pub(crate) report_waiters: AtomicU32,
    /// Usable pages whose chunks have not put them on the free lists yet.
    pub(crate) uninit: AtomicU64,
    /// Usable pages that a self-hosting backing took for the memmap.
    pub(crate) memmap_pages: AtomicU64,
    /// Where the grow path resumes its search for an uninitialised chunk.
    pub(crate) grow_cursor: AtomicUsize,
    /// Hot-pluggable pages present now (added, not removed): present beyond
    /// `span.present` (see `allocator::hotplug` for the order of updates).
    pub(crate) plugged: AtomicU64,
    /// Whole batches of free blocks between the CPU caches and the lists.
    pub(crate) depot: Depot<R>,
}

/// A snapshot of one zone's counters, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneStats {
    /// The node.
    pub node: NodeId,
    /// The zone.
    pub zone: ZoneType,
    /// First pfn of the zone's span.
    pub start_pfn: Pfn,
    /// Pages spanned, holes included.
    pub spanned: u64,
    /// Present pages.
    pub present: u64,
    /// Present pages the allocator manages: present less reserved.
    pub managed: u64,
    /// Present pages never handed out: reserved in the memory map, or holding the
    /// memmap.
    pub reserved: u64,
    /// Free pages: on the zone's free lists, in CPU caches or in its depots.
    pub free: u64,
    /// Of `free`, pages in CPU caches.
    pub cached: u64,
    /// Of `free`, pages in the zone's depots: whole batches of free blocks
    /// that CPU caches exchange without merging them (flushed to the lists by
    /// [`crate::Allocator::drain`], idle-time passes, and an allocation that
    /// needs merged memory).
    pub depot: u64,
    /// Of `free`, pages whose memory was reported to the host and not used since
    /// (see [`crate::Allocator::report_free`]), or is being reported now.
    pub reported: u64,
    /// Managed pages not initialised yet. They count as available.
    pub uninitialised: u64,
    /// Free blocks of each order on the zone's free lists (blocks in CPU caches
    /// and depots are not on them: drain first to see every block merged).
    pub free_blocks: [u64; MAX_ORDER as usize + 1],
    /// Of `free`, pages on the free lists in chunks of each [`MobilityClass`]
    /// (indexed by it): chunks that hold pages of that class. The rest of
    /// `free` is in CPU caches, depots, away for reporting, or in `free_whole`.
    pub free_by_class: [u64; crate::types::CLASSES],
    /// Of `free`, pages on the free lists in wholly free chunks: what the next
    /// give-back pass may return, and what either class takes before stealing.
    /// (A chunk with pages of two zones is the exception: each zone moves only
    /// its own blocks, so this zone's blocks of it may stay counted under a
    /// class until they are next touched. Such chunks are never given back.)
    pub free_whole: u64,
    /// Allocations served from a chunk of the other class, since start-up,
    /// because nothing of their own class, no wholly free chunk and no
    /// uninitialised memory was left in the zone (see
    /// [`AllocFlags::MOVABLE`](crate::AllocFlags::MOVABLE)).
    pub steals: u64,
}

impl ZoneStats {
    /// Pages a caller could still get: free now, or free once initialised.
    pub const fn available(&self) -> u64 {
        self.free.saturating_add(self.uninitialised)
    }

    /// Managed pages that are handed out.
    pub const fn allocated(&self) -> u64 {
        self.managed
            .saturating_sub(self.free)
            .saturating_sub(self.uninitialised)
    }
}

impl<R: RawMutex> Zone<R> {
    pub(crate) fn new(node: u8, kind: ZoneType, span: ZoneSpan, chunk_shift: u32) -> Self {
        Zone {
            node,
            kind,
            span,
            free: Mutex::new(FreeArea::new(crate::page::zone_index(
                NodeId(node as u32),
                kind,
            ))),
            free_pages: AtomicU64::new(0),
            reported_pages: AtomicU64::new(0),
            list_pages: [const { AtomicU64::new(0) }; LISTS],
            steals: AtomicU64::new(0),
            isolated: AtomicU64::new(0),
            report_waiters: AtomicU32::new(0),
            uninit: AtomicU64::new(span.present - span.reserved),
            memmap_pages: AtomicU64::new(0),
            grow_cursor: AtomicUsize::new((span.start_pfn.0 >> chunk_shift) as usize),
            plugged: AtomicU64::new(0),
            depot: Depot::new(),
        }
    }

    /// Whether the zone has any present page, or any that may become present.
    #[inline]
    pub(crate) fn is_populated(&self) -> bool {
        self.span.present > 0 || self.span.hotplug > 0
    }

    /// Whether all of the zone's memory is hot-pluggable (none present at
    /// start-up): such a zone comes last for unmovable allocations.
    #[inline]
    pub(crate) fn is_hotplug_only(&self) -> bool {
        self.span.present == 0 && self.span.hotplug > 0
    }

    /// Chunks `[first, end)` that the zone's span touches.
    pub(crate) fn chunks(&self, chunk_shift: u32) -> (usize, usize) {
        if self.span.spanned() == 0 {
            return (0, 0);
        }
        (
            (self.span.start_pfn.0 >> chunk_shift) as usize,
            ((self.span.end_pfn.0 - 1) >> chunk_shift) as usize + 1,
        )
    }

    /// Takes a block of `order` off the free lists for `class`: its own lists,
    /// then a wholly free chunk's, then (if `steal`) the other class's.
    #[inline]
    pub(crate) fn take<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        order: u32,
        class: MobilityClass,
        steal: bool,
    ) -> Option<u64> {
        self.with_free(|area| area.take(mm, order, class, steal))
    }

    /// Runs `f` with the free lists locked, then refreshes the free-page mirror.
    #[inline]
    pub(crate) fn with_free<T>(&self, f: impl FnOnce(&mut FreeArea) -> T) -> T {
        let mut area = self.free.lock();
        let out = f(&mut area);
        // Relaxed: mirrors for readers that do not take the lock.
        self.free_pages.store(area.pages(), Relaxed);
        self.reported_pages.store(area.reported_pages(), Relaxed);
        for (mirror, pages) in self.list_pages.iter().zip(area.list_pages()) {
            mirror.store(pages, Relaxed);
        }
        self.steals.store(area.steals(), Relaxed);
        out
    }

    /// Free blocks on the lists that should have merged with their buddy (takes the
    /// lock): zero unless the lists are corrupt.
    pub(crate) fn unmerged<B: MemmapBacking>(&self, mm: &Memmap<'_, B>) -> u64 {
        let zone_index = crate::page::zone_index(NodeId(self.node as u32), self.kind);
        self.free.lock().unmerged(mm, zone_index)
    }

    /// Free blocks on the wrong list (takes the lock): zero unless the lists or
    /// the chunks' words of use are corrupt. `shared` says which chunks have
    /// pages of another zone.
    pub(crate) fn misfiled<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        shared: impl Fn(usize) -> bool,
    ) -> u64 {
        self.free.lock().misfiled(mm, shared)
    }

    /// Free pages (on the lists, `cached` in CPU caches, in the depot, away
    /// for reporting)
    /// and uninitialised ones: what a caller could still get. Takes no lock.
    pub(crate) fn available(&self, cached: u64) -> u64 {
        // Relaxed: a snapshot, exact only when quiescent.
        self.free_pages(cached) + self.uninit.load(Relaxed)
    }

    /// Free pages: on the lists, `cached` in CPU caches, in the depot, away
    /// for reporting.
    fn free_pages(&self, cached: u64) -> u64 {
        // Relaxed: mirrors and counters read as a snapshot.
        self.free_pages.load(Relaxed) + cached + self.depot.pages() + self.isolated.load(Relaxed)
    }

    /// The zone's counters, with `cached` pages of it in CPU caches. Takes the
    /// lock for the block counts.
    pub(crate) fn stats(&self, cached: u64) -> ZoneStats {
        let free_blocks = self.free.lock().blocks();
        let free = self.free_pages(cached);
        // Relaxed throughout: counters are a snapshot, exact only when quiescent.
        let memmap = self.memmap_pages.load(Relaxed);
        let reserved = self.span.reserved + memmap;
        let isolated = self.isolated.load(Relaxed);
        let present = self.span.present + self.plugged.load(Relaxed);
        let depot = self.depot.pages();
        ZoneStats {
            node: NodeId(self.node as u32),
            zone: self.kind,
            start_pfn: self.span.start_pfn,
            spanned: self.span.spanned(),
            present,
            managed: present.saturating_sub(reserved),
            reserved,
            free,
            cached,
            depot,
            reported: self.reported_pages.load(Relaxed) + isolated,
            uninitialised: self.uninit.load(Relaxed),
            free_blocks,
            free_by_class: core::array::from_fn(|c| self.list_pages[c].load(Relaxed)),
            free_whole: self.list_pages[WHOLE].load(Relaxed),
            steals: self.steals.load(Relaxed),
        }
    }
}
