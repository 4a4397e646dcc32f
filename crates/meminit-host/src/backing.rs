//! The host's memmap backing: the descriptor array in reserved address space,
//! committed a section or a chunk at a time, and acceptance of simulated memory.
//!
//! By default one section's descriptors (2 MiB for 128 MiB sections) are committed
//! with `MADV_POPULATE_WRITE` over transparent huge pages the first time the
//! allocator initialises a chunk of that section; with [`Granularity::Chunk`], each
//! chunk's descriptors (64 KiB for 4 MiB chunks) over small pages, so that
//! residency follows initialised chunks. Residency is read back from the OS with
//! `mincore`, not computed. Optionally, each chunk of simulated physical memory is
//! *accepted* (zeroed, as a confidential guest's memory is accepted) before its
//! first use, and the bytes accepted are counted.
//!
//! When the allocator gives chunks back, the backing releases the memmap under
//! the piece they emptied with `MADV_DONTNEED` and keeps the mapping (the trait's
//! safety rules: the range stays valid for reads and writes, and reads zeroes
//! until it is populated again); the bytes released are counted. A premapped
//! backing keeps its memmap: it stands for a kernel whose memmap is mapped once,
//! for good. This module owns the memmap's memory and its figures; it never
//! touches descriptors, and it releases nothing the allocator did not give back.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::ops::Range;

use meminit::PageSource;
use meminit::{BackingError, Granularity, MemmapBacking, MemmapPiece, Populated};
use meminit::{Layout, Page, Pfn, PAGE_SIZE};

use crate::region::Region;

/// The calling thread, as a [`meminit::Config::context`]: a small number per
/// thread, so that a call back into the allocator from inside a backing fails
/// rather than waits for its own caller.
pub fn thread_context() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        // Relaxed: only uniqueness matters.
        static ID: u64 = NEXT.fetch_add(1, Relaxed);
    }
    ID.with(|id| *id)
}

/// Memmap memory on a host.
pub struct HostBacking {
    region: Region,
    /// The pfn whose descriptor starts the region: the layout's memmap start.
    first: u64,
    granularity: Granularity,
    /// Simulated physical memory to zero on acceptance, if acceptance is on.
    accept_into: Option<Arc<Region>>,
    accepted: AtomicU64,
    /// Committed whole at creation, and kept so: `depopulate` releases nothing.
    premapped: bool,
    /// Bytes of memmap released by `depopulate`.
    released: AtomicU64,
    /// Bytes of reported memory the allocator took again.
    reused_reported: AtomicU64,
    /// Nanoseconds spent in `populate`, summed over the threads that called it.
    populate_ns: AtomicU64,
}

impl HostBacking {
    /// Reserves address space for the whole memmap of `layout`, to be committed a
    /// section at a time; commits nothing.
    pub fn new(layout: &Layout) -> io::Result<Self> {
        Self::with_granularity(layout, Granularity::Section)
    }

    /// The same, committed in pieces of `granularity`.
    pub fn with_granularity(layout: &Layout, granularity: Granularity) -> io::Result<Self> {
        Ok(HostBacking {
            region: Region::reserve_with(
                layout.memmap_bytes(),
                granularity == Granularity::Section,
            )?,
            first: layout.memmap_start().0,
            granularity,
            accept_into: None,
            accepted: AtomicU64::new(0),
            premapped: false,
            released: AtomicU64::new(0),
            reused_reported: AtomicU64::new(0),
            populate_ns: AtomicU64::new(0),
        })
    }

    /// Reserves and commits the whole memmap of `layout` now, as a kernel whose
    /// memmap is mapped from the start: residency is the eager strategy's
    /// whatever the strategy, and the grow path pays for initialisation alone.
    /// Give-back releases none of it: such a kernel has no way to unmap part of a
    /// static memmap, and residency stays the eager strategy's by design.
    pub fn premapped(layout: &Layout) -> io::Result<Self> {
        let mut backing = Self::new(layout)?;
        backing.region.populate(0, backing.region.len())?;
        backing.premapped = true;
        Ok(backing)
    }

    /// Accepts each chunk before its first use by zeroing its usable pages in
    /// `physical`, the simulated physical memory (pfn `p` at offset `p * 4096`).
    /// A chunk given back is accepted again when it is initialised again, and its
    /// memory, discarded if it was reported, is committed again by the zeroing (as
    /// a confidential guest's accept makes its host back the page again).
    pub fn accepting(mut self, physical: Arc<Region>) -> Self {
        self.accept_into = Some(physical);
        self
    }

    /// Bytes of simulated memory accepted so far.
    pub fn accepted_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.accepted.load(Relaxed)
    }

    /// Bytes of memmap released by give-back so far ([`MemmapBacking::depopulate`]).
    pub fn released_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.released.load(Relaxed)
    }

    /// Bytes of memory reported to the host that the allocator used again
    /// ([`MemmapBacking::reuse_reported`]).
    pub fn reused_reported_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.reused_reported.load(Relaxed)
    }

    /// Time spent committing memmap in [`MemmapBacking::populate`] so far (ns),
    /// summed over the threads that called it: the host kernel's zeroing of the
    /// pages, which initialisation waits for and does not control. The premapped
    /// backing's commit at creation is not counted.
    pub fn populate_time_ns(&self) -> u64 {
        // Relaxed: a statistic.
        self.populate_ns.load(Relaxed)
    }

    /// Bytes of memmap resident on the host now.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        self.region.resident_bytes()
    }

    /// Address space reserved for the memmap.
    pub fn reserved_bytes(&self) -> u64 {
        self.region.len() as u64
    }
}

// SAFETY: `descriptors` is the 2 MiB-aligned base of one mapping of at least
// `layout.memmap_bytes()` bytes that lives as long as the backing; `populate` commits
// exactly the piece's descriptors and never hands the memory to anyone else; no
// pages are taken; the granularity is fixed at creation; `depopulate` drops the
// piece's pages with `MADV_DONTNEED` but never unmaps them, so the range stays
// valid for reads (zeroes) and writes until the next `populate`.
unsafe impl MemmapBacking for HostBacking {
    fn descriptors(&self) -> NonNull<Page> {
        self.region.base().cast()
    }

    fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// `MADV_POPULATE_WRITE` has the host kernel zero each page it commits, so
    /// the memmap is in cache right after; a premapped memmap was committed at
    /// creation, long before.
    fn populate_leaves_memmap_cached(&self) -> bool {
        !self.premapped
    }

    fn accept(
        &self,
        chunk: MemmapPiece,
        _: Range<u64>,
        layout: &Layout,
    ) -> Result<(), BackingError> {
        let Some(physical) = &self.accept_into else {
            return Ok(());
        };
        for run in layout
            .memory_runs(chunk.start..chunk.end)
            .filter(|r| !r.reserved)
        {
            let (offset, len) = (run.start.addr(), run.pages() * PAGE_SIZE);
            if offset + len > physical.len() as u64 {
                return Err(BackingError {
                    section: chunk.section,
                    reason: "the simulated physical memory is smaller than the layout",
                });
            }
            // SAFETY: the chunk's pages are in no one's hands before acceptance: the
            // allocator calls this before any of them reaches a free list.
            unsafe { physical.fill(offset as usize, len as usize, 0) };
            // Relaxed: a statistic.
            self.accepted.fetch_add(len, Relaxed);
        }
        Ok(())
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        _: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        // The region holds the descriptors from the layout's memmap start on.
        let _ = layout;
        let offset = piece.start.0.saturating_sub(self.first) as usize * size_of::<Page>();
        let started = std::time::Instant::now();
        let committed = self.region.populate(offset, piece.memmap_bytes() as usize);
        // Relaxed: a statistic.
        self.populate_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        committed.map_err(|e| BackingError {
            section: piece.section,
            reason: if e.raw_os_error() == Some(libc::ENOMEM) {
                "the host is out of memory"
            } else {
                "the host refused to commit memory for the memmap"
            },
        })?;
        Ok(Populated::ELSEWHERE)
    }

    fn depopulate(&self, piece: MemmapPiece) -> bool {
        if self.premapped {
            return false;
        }
        let offset = piece.start.0.saturating_sub(self.first) as usize * size_of::<Page>();
        let len = piece.memmap_bytes();
        // A refusal keeps the memmap populated, which the trait allows: the
        // allocator then never asks to populate it again.
        if self.region.discard(offset, len as usize).is_err() {
            return false;
        }
        // Relaxed: a statistic.
        self.released.fetch_add(len, Relaxed);
        true
    }

    fn reuse_reported(&self, pages: Range<Pfn>) {
        // Nothing to do for the memory itself: the host's `MADV_DONTNEED` left
        // zeroes that the next write commits again. Relaxed: a statistic.
        self.reused_reported
            .fetch_add((pages.end.0 - pages.start.0) * PAGE_SIZE, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meminit::{LayoutBuilder, RangeKind};

    /// 256 MiB on one node: two 128 MiB sections, 2 MiB of memmap each.
    fn layout() -> Layout {
        let mut b = LayoutBuilder::new();
        b.add(1 << 20, 256 << 20, RangeKind::Usable, meminit::NodeId(0));
        b.build().unwrap()
    }

    fn populate(backing: &HostBacking, piece: MemmapPiece, layout: &Layout) {
        let mut source = PageSource::new(layout, piece, backing.granularity());
        backing.populate(piece, layout, &mut source).unwrap();
    }

    fn section(layout: &Layout, section: usize) -> MemmapPiece {
        let pages = layout.section_pages();
        MemmapPiece {
            section,
            start: Pfn(section as u64 * pages),
            end: Pfn((section as u64 + 1) * pages),
        }
    }

    #[test]
    fn depopulate_releases_the_piece_and_keeps_it_mapped() {
        let layout = layout();
        let backing = HostBacking::new(&layout).unwrap();
        let piece = section(&layout, 1);
        populate(&backing, piece, &layout);
        assert_eq!(backing.resident_bytes().unwrap(), 2 << 20);
        // SAFETY: no allocator uses this backing; the piece is populated.
        unsafe {
            backing
                .descriptors()
                .as_ptr()
                .add(piece.start.0 as usize + 7)
                .write_bytes(0xa5, 1)
        };
        assert!(backing.depopulate(piece));
        assert_eq!(backing.resident_bytes().unwrap(), 0);
        assert_eq!(backing.released_bytes(), 2 << 20);
        // Still mapped: it reads zeroes, and can be populated and written again.
        // SAFETY: as above; depopulate keeps the range valid for reads and writes.
        let byte = unsafe {
            backing
                .descriptors()
                .as_ptr()
                .add(piece.start.0 as usize + 7)
                .cast::<u8>()
                .read()
        };
        assert_eq!(byte, 0);
        populate(&backing, piece, &layout);
        assert_eq!(backing.resident_bytes().unwrap(), 2 << 20);
    }

    #[test]
    fn chunk_pieces_release_their_small_pages_only() {
        let layout = layout();
        let backing = HostBacking::with_granularity(&layout, Granularity::Chunk).unwrap();
        let chunk = |i: u64| MemmapPiece {
            section: 0,
            start: Pfn(i * 1024),
            end: Pfn((i + 1) * 1024),
        };
        populate(&backing, chunk(1), &layout);
        populate(&backing, chunk(2), &layout);
        assert_eq!(backing.resident_bytes().unwrap(), 128 << 10);
        assert!(backing.depopulate(chunk(1)));
        assert_eq!(backing.resident_bytes().unwrap(), 64 << 10);
        assert_eq!(backing.released_bytes(), 64 << 10);
    }

    #[test]
    fn a_premapped_memmap_is_kept() {
        let layout = layout();
        let backing = HostBacking::premapped(&layout).unwrap();
        let resident = backing.resident_bytes().unwrap();
        assert!(resident >= 4 << 20);
        assert!(!backing.depopulate(section(&layout, 0)));
        assert_eq!(backing.resident_bytes().unwrap(), resident);
        assert_eq!(backing.released_bytes(), 0);
    }

    #[test]
    fn reuse_of_reported_memory_is_counted() {
        let backing = HostBacking::new(&layout()).unwrap();
        backing.reuse_reported(Pfn(512)..Pfn(1024));
        assert_eq!(backing.reused_reported_bytes(), 2 << 20);
    }
}
