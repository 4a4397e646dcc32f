//! Give-back's side of the section states: taking a chunk out of `Ready` back to
//! `Uninit` ([`Retiring`]), and a section's memmap out of `Populated` back to
//! `Unpopulated` ([`MemmapRetiring`]), with the store-buffer pair that keeps the
//! latter from racing a chunk claimant (see the parent module).
//!
//! It owns these transitions and their orderings, and nothing else: which chunk
//! may go, and what happens to its blocks and memmap, is decided by the caller.

use super::{
    ChunkState, SectionSlot, Sections, MEMMAP_POPULATED, MEMMAP_POPULATING, MEMMAP_UNPOPULATED,
    OWNED,
};
use crate::sync::fence;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

impl<'a> Sections<'a> {
    /// Takes chunk `chunk` out of `Ready` to give it back: the caller holds the
    /// lock of the one zone whose pages the chunk holds and has checked that all
    /// of them are free on its lists. Look-ups see `Initialising` from now on, and
    /// the off switch is off until the chunk is initialised again.
    pub(crate) fn retire(&self, chunk: usize) -> Option<Retiring<'_, 'a>> {
        let (slot, shift) = self.locate(chunk)?;
        let word = slot.chunks.load(Relaxed);
        if ChunkState::from_bits(word >> shift) != ChunkState::Ready {
            return None;
        }
        // Ready (11) to Initialising (10). AcqRel: the Acquire half pairs with the
        // Release of this chunk's `publish`; the Release half has no reader that
        // needs more than the state. Only give-back leaves `Ready`, and it runs
        // under the zone lock, so the exchange fails only when a neighbour's bits
        // changed: retry on those.
        let mut word = word;
        loop {
            match slot
                .chunks
                .compare_exchange_weak(word, word ^ (1 << shift), AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(now) if ChunkState::from_bits(now >> shift) == ChunkState::Ready => word = now,
                Err(_) => return None,
            }
        }
        // Relaxed: the caller's zone lock orders this before the blocks leave the
        // lists, and an allocation that finds them gone reads the count after
        // taking that lock.
        self.unfinished.fetch_add(1, Relaxed);
        Some(Retiring {
            sections: self,
            chunk,
            absent: false,
        })
    }

    /// Under [`crate::memmap::Granularity::Section`], takes section `section`'s
    /// memmap out of `Populated` to depopulate it, if it holds none of the
    /// section's own pages and no chunk of the section is `Initialising` or
    /// `Ready`.
    pub(crate) fn retire_memmap(&self, section: usize) -> Option<MemmapRetiring<'_>> {
        let slot = self.slot(section)?;
        // The retirement's side of the store-buffer pair with a chunk claimant
        // (claim, fence, look at the memmap word): this exchange, the fence, then
        // the look at the chunk word. The two fences are ordered; if the
        // claimant's comes first, the load below sees its claim; if this one
        // does, the claimant's look sees `Populating` and waits. Acquire pairs
        // with the Release of the memmap's `publish`.
        slot.memmap
            .compare_exchange(
                OWNED | MEMMAP_POPULATED,
                OWNED | MEMMAP_POPULATING,
                Acquire,
                Relaxed,
            )
            .ok()?;
        fence(SeqCst);
        // Relaxed: ordered by the fence above (see there).
        let chunks = slot.chunks.load(Relaxed);
        // Any chunk in Initialising (10) or Ready (11): the high bit of its pair.
        if chunks & 0xaaaa_aaaa_aaaa_aaaa != 0 {
            // Release: pairs with the Acquire of a claimant that saw `Populating`
            // and waited.
            slot.memmap.store(OWNED | MEMMAP_POPULATED, Release);
            return None;
        }
        Some(MemmapRetiring { slot, done: false })
    }

    /// Under [`crate::memmap::Granularity::Chunk`], whether chunk `chunk`'s memmap
    /// was populated by an earlier claimant (the memmap word is then a bitmap of
    /// the section's populated chunks). Read by the chunk's claimant only.
    ///
    /// Acquire: pairs with the Release in `set_chunk_memmap_populated`.
    pub(crate) fn chunk_memmap_populated(&self, chunk: usize) -> bool {
        self.locate(chunk)
            .is_some_and(|(slot, shift)| slot.memmap.load(Acquire) >> (shift / 2) & 1 == 1)
    }

    /// Records that chunk `chunk`'s memmap is populated; its claimant only.
    pub(crate) fn set_chunk_memmap_populated(&self, chunk: usize) {
        if let Some((slot, shift)) = self.locate(chunk) {
            // Release: pairs with the Acquire in `chunk_memmap_populated` of a later
            // claimant of the chunk.
            slot.memmap.fetch_or(1 << (shift / 2), Release);
        }
    }

    /// Under [`crate::memmap::Granularity::Chunk`], records that chunk `chunk`'s
    /// memmap is depopulated; the holder of its [`Retiring`] only.
    pub(crate) fn clear_chunk_memmap_populated(&self, chunk: usize) {
        if let Some((slot, shift)) = self.locate(chunk) {
            // Release: pairs with the Acquire in `chunk_memmap_populated` of the
            // chunk's next claimant.
            slot.memmap.fetch_and(!(1 << (shift / 2)), Release);
        }
    }
}

/// A chunk being given back: `Initialising`, its blocks off the free lists, its
/// memmap about to be depopulated. Dropping it makes the chunk `Uninit`, to be
/// initialised again by whoever claims it next.
pub(crate) struct Retiring<'s, 'a> {
    sections: &'s Sections<'a>,
    chunk: usize,
    /// Removed by hot-plug: dropping it makes the chunk `Absent`, not `Uninit`.
    absent: bool,
}

impl Retiring<'_, '_> {
    /// The chunk.
    pub(crate) fn chunk(&self) -> usize {
        self.chunk
    }

    /// The chunk leaves for good (hot-remove): dropping this makes it `Absent`,
    /// no longer present nor counted unfinished.
    pub(crate) fn into_absent(mut self) -> Self {
        self.absent = true;
        self
    }
}

impl Drop for Retiring<'_, '_> {
    fn drop(&mut self) {
        if let Some((slot, shift)) = self.sections.locate(self.chunk) {
            // Initialising (10) to Uninit (01), or to Absent (00). Release: pairs
            // with the Acquire of the next `claim`, which then sees the memmap's
            // state as this left it (or, for Absent, with that of `state`).
            let bits = if self.absent { 2 } else { 3 };
            slot.chunks.fetch_xor(bits << shift, Release);
            if self.absent {
                self.sections.forget_chunks(1);
            }
        }
    }
}

/// A section's memmap being depopulated. [`MemmapRetiring::finish`] makes it
/// `Unpopulated`; dropping it without (the backing kept the memory) leaves it
/// `Populated`.
pub(crate) struct MemmapRetiring<'s> {
    slot: &'s SectionSlot,
    done: bool,
}

impl MemmapRetiring<'_> {
    /// The memmap is gone: the next claimant populates it again.
    pub(crate) fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for MemmapRetiring<'_> {
    fn drop(&mut self) {
        let word = if self.done {
            MEMMAP_UNPOPULATED
        } else {
            MEMMAP_POPULATED
        };
        // Release: pairs with the Acquire of claimants that waited while it was
        // `Populating`.
        self.slot.memmap.store(OWNED | word, Release);
    }
}
