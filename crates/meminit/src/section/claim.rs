//! The handles of the claim protocols: a [`Claim`] on a run of chunks (one
//! chunk, or consecutive `Uninit` chunks of one section) and what it becomes
//! once published ([`Published`]), and a [`MemmapClaim`] on a section's memmap.
//! Each handle is the only proof of its right, and its drop undoes what it
//! held. The transitions they make, and their orderings, are the parent
//! module's (see there); the handles are made only by [`Sections::claim_run`]
//! and [`Sections::claim_memmap`].
//!
//! Like the rest of `section`, this knows nothing of descriptors, zones or
//! the layout, and takes no lock.

use super::{
    decode_memmap, shift_of, ChunkState, MemmapState, SectionSlot, Sections, MEMMAP_POPULATED,
    MEMMAP_POPULATING, MEMMAP_UNPOPULATED, OWNED, TAKEN_MASK,
};
use crate::sync::fence;
use core::ops::Range;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Release, SeqCst};

impl<'a> Sections<'a> {
    /// Tries to take chunk `chunk` out of `Uninit`. On failure returns the state
    /// found: someone else owns or finished it, or it has no memory. (The
    /// allocator claims through [`claim_run`](Self::claim_run), a run of one
    /// for a single chunk.)
    #[cfg(any(test, loom))]
    pub fn claim(&self, chunk: usize) -> Result<Claim<'_, 'a>, ChunkState> {
        self.claim_run(chunk, 1)
    }

    /// Tries to take chunk `first` out of `Uninit`, and with it the chunks after
    /// it in its section that are `Uninit` too, up to `most` chunks in all (at
    /// least one): a run, claimed with one compare-and-swap and one fence, which
    /// is published and finished as one. The run stops at the first chunk that
    /// is not `Uninit` (someone else's, or without memory) and at the end of the
    /// section. On failure returns the state of `first`.
    pub fn claim_run(&self, first: usize, most: usize) -> Result<Claim<'_, 'a>, ChunkState> {
        let (slot, shift) = self.locate(first).ok_or(ChunkState::Absent)?;
        let per = 1usize << self.chunks_shift;
        let most = most.clamp(1, per - first % per);
        // Acquire on success pairs with the Release in `Claim::drop` (or
        // `Claim::give_back_from`), when an earlier claimant gave a chunk back
        // after a failure, and in `Retiring::drop`; on failure it pairs with
        // `publish`, so a caller told `Ready` may read the descriptors. Other
        // chunks of the section changing under us only make the exchange retry.
        let mut word = slot.chunks.load(Acquire);
        loop {
            let state = ChunkState::from_bits(word >> shift);
            if state != ChunkState::Uninit {
                return Err(state);
            }
            let count = (1..most)
                .take_while(|i| {
                    ChunkState::from_bits(word >> (shift + shift_of(*i))) == ChunkState::Uninit
                })
                .count()
                + 1;
            // Uninit (01) to Initialising (10), for each chunk of the run.
            let claimed = word ^ (run_pattern(count, 3) << shift);
            match slot
                .chunks
                .compare_exchange_weak(word, claimed, Acquire, Acquire)
            {
                Ok(_) => {
                    // The fence of the claimant's side of the store-buffer pair
                    // with `retire_memmap`: this claim, the fence, then (in
                    // populating) the look at the memmap word. Either that look
                    // sees a retirement's `Populating`, or the retirement's look
                    // at this word after its own fence sees this claim.
                    fence(SeqCst);
                    return Ok(Claim::new(self, first, count));
                }
                Err(now) => word = now,
            }
        }
    }

    /// Tries to take section `section`'s memmap out of `Unpopulated`, to populate
    /// it. On failure returns the state found.
    pub fn claim_memmap(&self, section: usize) -> Result<MemmapClaim<'_>, MemmapState> {
        let slot = self.slot(section).ok_or(MemmapState::Unpopulated)?;
        // Acquire on success pairs with the Release of a failed claimant giving it
        // back, or of a retirement; on failure with `publish`. (After the fence
        // in `claim_run`: see `retire_memmap`.)
        match slot.memmap.compare_exchange(
            OWNED | MEMMAP_UNPOPULATED,
            OWNED | MEMMAP_POPULATING,
            Acquire,
            Acquire,
        ) {
            Ok(_) => Ok(MemmapClaim::new(slot)),
            Err(found) => Err(decode_memmap(found)),
        }
    }

    /// Whether `claim` was taken from this table.
    pub(crate) fn owns(&self, claim: &Claim<'_, '_>) -> bool {
        core::ptr::eq(
            self as *const Self as *const u8,
            claim.sections as *const Sections<'_> as *const u8,
        )
    }
}

/// `count` two-bit fields, from the lowest, each holding `bits`.
#[inline]
const fn run_pattern(count: usize, bits: u64) -> u64 {
    let ones = match shift_of(count) {
        64.. => u64::MAX,
        n => (1u64 << n) - 1,
    };
    (0x5555_5555_5555_5555 & ones) * bits
}

/// Exclusive ownership of a run of chunks of one section, all in
/// `Initialising`, from [`Sections::claim_run`] (a run of one for a single
/// chunk). Dropping it without
/// [`publish`](Claim::publish) gives them back (`Uninit`) for another try.
pub struct Claim<'s, 'a> {
    sections: &'s Sections<'a>,
    first: usize,
    count: usize,
    published: bool,
}

impl<'s, 'a> Claim<'s, 'a> {
    /// The claim on the `count` chunks from `first` on, which the caller has
    /// just moved to `Initialising`.
    fn new(sections: &'s Sections<'a>, first: usize, count: usize) -> Self {
        Claim {
            sections,
            first,
            count,
            published: false,
        }
    }

    /// The first claimed chunk.
    pub fn chunk(&self) -> usize {
        self.first
    }

    /// The claimed chunks: consecutive, in one section.
    pub fn chunks(&self) -> Range<usize> {
        self.first..self.first + self.count
    }

    /// Gives back chunks `from..` of the run (`Uninit`, for another try), and
    /// keeps the chunks before them. `from` must be past the first chunk;
    /// otherwise, or past the run, nothing changes.
    pub fn give_back_from(&mut self, from: usize) {
        if from <= self.first || from >= self.first + self.count {
            return;
        }
        let kept = from - self.first;
        flip(self.sections, from, self.count - kept, ChunkState::Uninit);
        self.count = kept;
    }

    /// Marks every chunk of the run `Ready`: their descriptors may be read from
    /// now on.
    ///
    /// Release (in `flip`): pairs with the Acquire of [`Sections::state`] and of a
    /// failed [`Sections::claim_run`]; everything written before this is visible to
    /// them.
    pub fn publish(mut self) -> Published<'s, 'a> {
        self.published = true;
        flip(self.sections, self.first, self.count, ChunkState::Ready);
        Published {
            sections: self.sections,
            count: self.count,
        }
    }
}

/// Moves the `count` chunks from `first` on (one section's, all
/// `Initialising`, held by the caller's claim) to `to`, with one atomic.
fn flip(sections: &Sections<'_>, first: usize, count: usize, to: ChunkState) {
    let Some((slot, shift)) = sections.locate(first) else {
        return;
    };
    // Initialising (10) to Ready (11) or Uninit (01), each chunk. Release: pairs
    // with the Acquire of `Sections::state` and of the next `claim_run`.
    let bits = run_pattern(count, to as u64 ^ ChunkState::Initialising as u64) << shift;
    slot.chunks.fetch_xor(bits, Release);
}

impl Drop for Claim<'_, '_> {
    fn drop(&mut self) {
        if !self.published {
            flip(self.sections, self.first, self.count, ChunkState::Uninit);
        }
    }
}

/// A run of chunks that is `Ready` but whose pages may not all be on free
/// lists yet.
#[must_use = "published chunks must be finished once their pages are on the free lists"]
pub struct Published<'s, 'a> {
    sections: &'s Sections<'a>,
    count: usize,
}

impl Published<'_, '_> {
    /// Counts the run's chunks done. Returns true if they were the last ones, in
    /// which case the off switch is now set.
    pub fn finish(self) -> bool {
        // AcqRel: the Release half orders these chunks' splices before the count
        // drops (pairs with the Acquire in `all_initialised`); the Acquire half
        // lets the last finisher see every earlier one.
        self.sections.unfinished.fetch_sub(self.count, AcqRel) == self.count
    }
}

/// Exclusive right to populate one section's memmap. Dropping it without
/// [`publish`](MemmapClaim::publish) gives it back (`Unpopulated`).
pub struct MemmapClaim<'s> {
    slot: &'s SectionSlot,
    published: bool,
}

impl<'s> MemmapClaim<'s> {
    /// The claim on `slot`'s memmap, which the caller has just moved to
    /// `Populating`.
    fn new(slot: &'s SectionSlot) -> Self {
        MemmapClaim {
            slot,
            published: false,
        }
    }

    /// Marks the memmap populated, with `taken` (offsets in the section, below
    /// [`MAX_TAKEN_OFFSET`]; the caller checks) the pages the backing took from the
    /// section for it.
    ///
    /// Release: pairs with the Acquire of [`Sections::memmap_state`] and of a
    /// failed [`Sections::claim_memmap`].
    pub fn publish(mut self, taken: Range<u64>) {
        self.published = true;
        let len = taken.end.saturating_sub(taken.start);
        let start = if len == 0 { 0 } else { taken.start };
        let word = OWNED | MEMMAP_POPULATED | (start & TAKEN_MASK) << 2 | (len & TAKEN_MASK) << 32;
        self.slot.memmap.store(word, Release);
    }
}

impl Drop for MemmapClaim<'_> {
    fn drop(&mut self) {
        if !self.published {
            // Release: pairs with the Acquire of the next successful claim.
            self.slot.memmap.store(OWNED | MEMMAP_UNPOPULATED, Release);
        }
    }
}
