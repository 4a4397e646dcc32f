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

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::ops::Range;

use meminit::memmap::{BackingError, Granularity, MemmapBacking, MemmapPiece, Populated};
use meminit::source::PageSource;
use meminit::{Layout, Page, PAGE_SIZE};

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
    granularity: Granularity,
    /// Simulated physical memory to zero on acceptance, if acceptance is on.
    accept_into: Option<Arc<Region>>,
    accepted: AtomicU64,
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
            granularity,
            accept_into: None,
            accepted: AtomicU64::new(0),
        })
    }

    /// Reserves and commits the whole memmap of `layout` now, as a kernel whose
    /// memmap is mapped from the start: residency is the eager strategy's
    /// whatever the strategy, and the grow path pays for initialisation alone.
    pub fn premapped(layout: &Layout) -> io::Result<Self> {
        let backing = Self::new(layout)?;
        backing.region.populate(0, backing.region.len())?;
        Ok(backing)
    }

    /// Accepts each chunk before its first use by zeroing its usable pages in
    /// `physical`, the simulated physical memory (pfn `p` at offset `p * 4096`).
    pub fn accepting(mut self, physical: Arc<Region>) -> Self {
        self.accept_into = Some(physical);
        self
    }

    /// Bytes of simulated memory accepted so far.
    pub fn accepted_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.accepted.load(Relaxed)
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
// pages are taken; the granularity is fixed at creation.
unsafe impl MemmapBacking for HostBacking {
    fn descriptors(&self) -> NonNull<Page> {
        self.region.base().cast()
    }

    fn granularity(&self) -> Granularity {
        self.granularity
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
            .present_runs(chunk.start..chunk.end)
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
        let first = layout.memmap_start().0;
        let offset = piece.start.0.saturating_sub(first) as usize * size_of::<Page>();
        self.region
            .populate(offset, piece.memmap_bytes() as usize)
            .map_err(|e| BackingError {
                section: piece.section,
                reason: if e.raw_os_error() == Some(libc::ENOMEM) {
                    "the host is out of memory"
                } else {
                    "the host refused to commit memory for the memmap"
                },
            })?;
        Ok(Populated::ELSEWHERE)
    }
}
