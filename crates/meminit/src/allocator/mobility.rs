//! What an embedder can ask about mobility classes: a chunk's word of use, and a
//! consistency check of every chunk's word against its descriptors.
//!
//! The words are kept by the buddy lists (see [`crate::buddy`]'s "Mobility
//! classes") and stored in the section slots; this module only reads them. It
//! takes zone locks only to walk the free lists, and writes nothing.

use lock_api::RawMutex;

use super::Allocator;
use crate::memmap::MemmapBacking;
use crate::page::PageState;
use crate::section::{ChunkState, ChunkUse};
use crate::types::Pfn;

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// The word of use of the chunk holding `pfn`: how many of its pages are off
    /// the free lists (allocated, in a CPU cache, or away for free page
    /// reporting), and which [`MobilityClass`](crate::MobilityClass) it serves.
    /// [`ChunkUse::FREE`] for a chunk that is uninitialised or outside the
    /// memmap. A snapshot, read without a lock.
    pub fn chunk_use(&self, pfn: Pfn) -> ChunkUse {
        self.memmap
            .sections()
            .chunk_use(self.memmap.chunk_of(pfn.0))
    }

    /// A consistency check of the chunks' words of use: the number of chunks
    /// whose count of pages off the free lists differs from what their
    /// descriptors say (allocated and cached blocks), that have a class with
    /// nothing off the lists, or whose mark of pages of two zones differs from
    /// the memory map, plus the free blocks on another list than their
    /// chunk's word names (or than their own head names). Zero always, unless
    /// something corrupted them. It reads descriptors without a lock: call it when
    /// no operation is in flight (a test after any operation, a kernel's debug
    /// path on a quiet system).
    pub fn miscounted_chunks(&self) -> u64 {
        let sections = self.memmap.sections();
        let chunks_shift = sections.chunks_shift();
        let span = self.layout.memmap_sections();
        let mut wrong = 0;
        for chunk in span.start << chunks_shift..span.end << chunks_shift {
            let word = sections.chunk_use(chunk);
            let counted = match sections.state(chunk) {
                ChunkState::Ready => self.pages_off_lists(chunk),
                // Not on any list: nothing may be counted.
                _ => Some(0),
            };
            let shared = sections.state(chunk) == ChunkState::Ready && self.chunk_is_shared(chunk);
            if counted != Some(word.pages())
                || (word.pages() == 0 && word.class().is_some())
                || word.is_shared() != shared
            {
                wrong += 1;
            }
        }
        let shared = |chunk: usize| self.chunk_is_shared(chunk);
        wrong
            + self
                .zones
                .iter()
                .filter(|z| z.is_populated())
                .map(|z| z.misfiled(&self.memmap, shared))
                .sum::<u64>()
    }

    /// Pages of a `Ready` chunk in allocated or cached blocks, by its
    /// descriptors; `None` if a walk by blocks lands on a tail.
    fn pages_off_lists(&self, chunk: usize) -> Option<u64> {
        let (start, end) = self.memmap.chunk_pfns(chunk);
        let mut off = 0;
        let mut pfn = start;
        while pfn < end {
            match self.memmap.page(pfn).ok()?.state() {
                PageState::Free { order } => pfn += 1 << order,
                PageState::Allocated { order } | PageState::Cached { order } => {
                    off += 1 << order;
                    pfn += 1 << order;
                }
                PageState::Reserved => pfn += 1,
                PageState::Tail => return None,
            }
        }
        Some(off)
    }

    /// Whether chunk `chunk` has usable pages of more than one zone.
    fn chunk_is_shared(&self, chunk: usize) -> bool {
        let (start, end) = self.memmap.chunk_pfns(chunk);
        let mut runs = self
            .layout
            .memory_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved);
        let Some(first) = runs.next() else {
            return false;
        };
        runs.any(|r| (r.node, r.zone) != (first.node, first.zone))
    }
}
