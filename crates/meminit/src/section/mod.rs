//! Per-section state: whether the section's memmap is populated, and where each of
//! its chunks is in its initialisation. The claim protocols.
//!
//! A section (128 MiB by default) is the unit of memmap backing; a chunk (one
//! max-order block, 4 MiB, by default; a power of two up to a section, at most
//! [`MAX_CHUNKS_PER_SECTION`] per section) is the unit of initialisation. Each
//! section has one [`SectionSlot`]: two words.
//!
//! - The **chunk word** holds two bits per chunk. Every chunk moves once through
//!   `Uninit → Initialising → Ready`; chunks with no present page are `Absent` and
//!   stay so. Whoever wins the compare-and-swap out of `Uninit` (the boot path, a
//!   deferred worker, an allocation growing its zone, a descriptor look-up) holds a
//!   [`Claim`], the only proof that it may write the chunk's descriptors; everyone
//!   else sees `Initialising` or `Ready` and waits or goes elsewhere. A claim
//!   becomes `Ready` with [`Claim::publish`] once every descriptor is written, and
//!   is counted done with [`Published::finish`] once its free pages are on their
//!   zones' lists; the last finish flips the off switch
//!   ([`Sections::all_initialised`]). A pass over many chunks (start-up, a
//!   deferred worker) claims a run of a section's `Uninit` chunks at once
//!   ([`Sections::claim_run`]): one compare-and-swap, one fence, one publish
//!   and one finish for the run, which moves every chunk of it through the same
//!   states together, since they share one word. The claims and their
//!   handles are in `claim`.
//! - The **memmap word** says whether the section's part of the memmap is
//!   populated, for backings that populate a section at a time; the first chunk
//!   claimant to need it takes a [`MemmapClaim`](claim::MemmapClaim)
//!   (`Unpopulated → Populating`),
//!   others wait, and it is published with the pages the backing took from the
//!   section for it. A section's memmap is populated at most once. For backings
//!   that populate chunk by chunk it is instead a bitmap of the chunks whose
//!   memmap is populated, each bit set once by that chunk's claimant.
//!
//! - **Give-back** (`retire`) runs the chunk's cycle backwards: the holder of a `Retiring`
//!   (taken `Ready → Initialising` under the zone lock, once every page of the
//!   chunk is free) returns the chunk to `Uninit`, and the off switch turns off
//!   again until the chunk is initialised anew. A section's memmap may be retired
//!   (`Populated → Populating → Unpopulated`) once none of its chunks is
//!   `Initialising` or `Ready`: `Sections::retire_memmap` and a chunk claimant's
//!   look at the memmap word form a store-buffer pair (each writes its own word,
//!   then a `SeqCst` fence, then reads the other's), so of a retirement and an
//!   initialisation racing in one section, at least one sees the other and backs
//!   off.
//!
//! - **Hot-plug** (`hotplug`) moves chunks `Absent → Uninit` when memory is
//!   added and `Uninit → Absent` (or, given back, `Initialising → Absent`) when
//!   it is removed, one add or remove at a time.
//!
//! - The **use words**, one per chunk (`usage`): the pages of the chunk off the
//!   free lists and the mobility class it serves, kept by the buddy lists under
//!   the zone lock and read by give-back without it.
//!
//! This module owns the states and their memory orderings. It knows nothing of
//! descriptors, zones or the layout, and it takes no lock.

mod claim;
mod hotplug;
mod retire;
mod usage;

pub use claim::{Claim, Published};

pub(crate) use retire::Retiring;
pub use usage::ChunkUse;
pub(crate) use usage::MAX_CHUNK_PAGES;

use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Backoff};
use core::ops::Range;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// The most chunks a section may be divided into (two bits each in a 64-bit word).
pub const MAX_CHUNKS_PER_SECTION: u32 = 32;

/// Where a chunk is in its initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkState {
    /// No present page: no descriptors, ever.
    Absent = 0,
    /// Present pages, descriptors not written yet.
    Uninit = 1,
    /// Claimed: its owner is writing descriptors.
    Initialising = 2,
    /// Every descriptor is written and may be read.
    Ready = 3,
}

impl ChunkState {
    #[inline]
    const fn from_bits(v: u64) -> ChunkState {
        match v & 3 {
            1 => ChunkState::Uninit,
            2 => ChunkState::Initialising,
            3 => ChunkState::Ready,
            _ => ChunkState::Absent,
        }
    }
}

/// Where a section's memmap is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemmapState {
    /// Not populated.
    Unpopulated,
    /// Being populated by a `MemmapClaim`'s holder.
    Populating,
    /// Populated; the pfns the backing took from the section for it (empty if
    /// none).
    Populated(Range<u64>),
}

/// The pages taken from a section for its memmap are recorded as offsets in the
/// section below this bound (30 bits each in the memmap word): the taken range
/// must end below it.
pub const MAX_TAKEN_OFFSET: u64 = 1 << 30;

const MEMMAP_UNPOPULATED: u64 = 0;
const MEMMAP_POPULATING: u64 = 1;
const MEMMAP_POPULATED: u64 = 2;
/// Bits 2–31 of the memmap word: the first taken page.
const TAKEN_MASK: u64 = MAX_TAKEN_OFFSET - 1;
/// Bit 63 of the memmap word: the slot belongs to a live allocator. Set with a
/// compare-and-swap from a fresh (all-zero) word when an allocator starts, cleared
/// when it is dropped, so that two allocators can never share a slot array.
const OWNED: u64 = 1 << 63;

/// The state of one section. The embedder lends a slice of these, one per section
/// ([`crate::Layout::section_count`]), by shared reference: they are atomics, so a
/// kernel may keep them in a plain `static`. The allocator owns their contents for
/// its life; a slot in use by a live allocator is refused to any other
/// ([`crate::InitError::SlotsInUse`]), and dropping the allocator makes it fresh
/// again.
pub struct SectionSlot {
    /// Two bits per chunk, chunk 0 in the lowest.
    chunks: AtomicU64,
    /// Bits 0–1: memmap state. Bits 2–31: first taken page, as an offset in the
    /// section. Bits 32–61: taken pages. Bit 63: owned by a live allocator. (For
    /// backings that populate chunk by chunk, bits 0–31 are instead a bitmap of
    /// the chunks whose memmap is populated.)
    memmap: AtomicU64,
    /// Per chunk, its word of use ([`ChunkUse`]): pages off the free lists and
    /// its class. 128 bytes, so a slot is 144.
    uses: [AtomicU32; MAX_CHUNKS_PER_SECTION as usize],
}

impl SectionSlot {
    /// A fresh slot.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SectionSlot {
            chunks: AtomicU64::new(0),
            memmap: AtomicU64::new(0),
            uses: [const { AtomicU32::new(0) }; MAX_CHUNKS_PER_SECTION as usize],
        }
    }

    /// A fresh slot.
    #[cfg(loom)]
    pub fn new() -> Self {
        SectionSlot {
            chunks: AtomicU64::new(0),
            memmap: AtomicU64::new(0),
            uses: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Whether a live allocator owns the slot.
    pub fn is_owned(&self) -> bool {
        // Relaxed: an observation for the embedder; ownership itself is decided by
        // the compare-and-swap in `Sections::new`.
        self.memmap.load(Relaxed) & OWNED != 0
    }

    /// Takes the slot if it is fresh.
    fn take(&self) -> bool {
        // Acquire: pairs with the Release in `release` of the allocator that owned
        // the slot before, so its last writes are not seen after ours.
        let taken = self
            .memmap
            .compare_exchange(0, OWNED, Acquire, Relaxed)
            .is_ok();
        if taken {
            // Relaxed: ours alone until the allocator is shared (see `Sections::new`).
            self.chunks.store(0, Relaxed);
            self.uses.iter().for_each(|u| u.store(0, Relaxed));
        }
        taken
    }

    /// Makes the slot fresh again.
    fn release(&self) {
        self.chunks.store(0, Relaxed);
        // Relaxed: ordered for the next owner by the Release below.
        self.uses.iter().for_each(|u| u.store(0, Relaxed));
        // Release: pairs with the Acquire in `take` of the next owner.
        self.memmap.store(0, Release);
    }
}

impl Default for SectionSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`Sections::new`] refused its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotsError {
    /// Fewer slots than sections, or a present chunk past them.
    TooFew,
    /// More than [`MAX_CHUNKS_PER_SECTION`] chunks per section.
    TooManyChunks,
    /// Slot `index` is owned by another live allocator.
    InUse {
        /// The first slot found owned.
        index: usize,
    },
}

/// The state of every section and chunk, and how many chunks are not finished.
pub struct Sections<'a> {
    slots: &'a [SectionSlot],
    /// The section number of `slots[0]`: sections and chunks are numbered from
    /// pfn 0, the slots from the first section with present memory.
    first: usize,
    /// log2 of chunks per section.
    chunks_shift: u32,
    /// Chunks with present pages: set at start-up, changed by hot-plug.
    present: AtomicUsize,
    /// Held by the one add or remove of memory in flight (`hotplug`).
    hotplug_busy: AtomicU32,
    /// Chunks with present pages that are not yet finished (or were given back).
    /// Zero is the off switch: growth is off until a chunk is given back.
    unfinished: AtomicUsize,
    /// The embedder's wait hook, called between re-checks once a wait has spun
    /// a while ([`crate::Config::wait`]).
    wait: Option<fn()>,
}

/// The bits of chunk `i` of its section's word.
#[inline]
const fn shift_of(i: usize) -> u32 {
    2 * i as u32
}

impl<'a> Sections<'a> {
    /// Takes `slots` (at least `count` sections of them, for sections `first..`;
    /// each must be fresh, and is marked owned with a compare-and-swap) for
    /// sections of `2^chunks_shift` chunks, marks every chunk `Absent`, then the
    /// chunks that `present` spans (ranges `[start, end)` of chunk numbers, counted
    /// from pfn 0) `Uninit`. The cost is two words per
    /// section plus one per section a present range touches: nothing is looked up
    /// per page or chunk. On failure every slot this call took is fresh again; of
    /// two calls racing for one slot array at most one succeeds.
    pub fn new(
        slots: &'a [SectionSlot],
        first: usize,
        count: usize,
        chunks_shift: u32,
        present: impl Iterator<Item = (usize, usize)>,
    ) -> Result<Self, SlotsError> {
        if 1u64 << chunks_shift.min(63) > MAX_CHUNKS_PER_SECTION as u64 {
            return Err(SlotsError::TooManyChunks);
        }
        let slots = slots.get(..count).ok_or(SlotsError::TooFew)?;
        for (index, slot) in slots.iter().enumerate() {
            if !slot.take() {
                slots[..index].iter().for_each(SectionSlot::release);
                return Err(SlotsError::InUse { index });
            }
        }
        // From here on the slots are ours: `Sections` releases them when dropped.
        let mut sections = Sections {
            slots,
            first,
            chunks_shift,
            present: AtomicUsize::new(0),
            hotplug_busy: AtomicU32::new(0),
            unfinished: AtomicUsize::new(0),
            wait: None,
        };
        let per = 1usize << chunks_shift;
        // Chunks [from, to) of one section, all `Uninit` (01): one mask, no loop, so
        // that start-up costs a word per section however many chunks it holds.
        let uninit_bits = |from: usize, to: usize| -> u64 {
            let below = |chunks: usize| match shift_of(chunks) {
                64.. => u64::MAX,
                bits => (1u64 << bits) - 1,
            };
            0x5555_5555_5555_5555 & below(to) & !below(from)
        };
        // Present ranges that share a chunk set it twice: count only new bits.
        // Relaxed throughout: no other thread can reach these slots before the
        // allocator that holds them is shared, which orders these writes itself.
        let mut unfinished = 0;
        for (start, end) in present {
            let mut chunk = start;
            while chunk < end {
                let section = chunk >> chunks_shift;
                let upto = end.min((section + 1) * per);
                let bits = uninit_bits(chunk % per, (upto - 1) % per + 1);
                // Dropping `sections` releases every slot on this early return.
                let slot = section
                    .checked_sub(first)
                    .and_then(|i| slots.get(i))
                    .ok_or(SlotsError::TooFew)?;
                let old = slot.chunks.fetch_or(bits, Relaxed);
                unfinished += (bits & !old).count_ones() as usize;
                chunk = upto;
            }
        }
        sections.present = AtomicUsize::new(unfinished);
        sections.unfinished = AtomicUsize::new(unfinished);
        Ok(sections)
    }

    /// The same table, whose waits call `wait` between re-checks once a short
    /// spin is over (see [`crate::Config::wait`]). It changes no transition:
    /// only what a waiter does between two loads.
    pub fn with_wait(mut self, wait: Option<fn()>) -> Self {
        self.wait = wait;
        self
    }

    /// Chunks with present pages (not `Absent`).
    pub fn present(&self) -> usize {
        // Relaxed: a statistic, exact when no hot-plug is in flight.
        self.present.load(Relaxed)
    }

    /// log2 of the chunks in a section.
    pub fn chunks_shift(&self) -> u32 {
        self.chunks_shift
    }

    #[inline]
    fn locate(&self, chunk: usize) -> Option<(&SectionSlot, u32)> {
        let slot = self.slot(chunk >> self.chunks_shift)?;
        Some((slot, shift_of(chunk & ((1 << self.chunks_shift) - 1))))
    }

    /// The slot of section `section`, if the memmap covers it.
    #[inline]
    fn slot(&self, section: usize) -> Option<&SectionSlot> {
        self.slots.get(section.checked_sub(self.first)?)
    }

    /// The state of chunk `chunk` (`Absent` past the end).
    ///
    /// Acquire: pairs with the Release in [`Claim::publish`], so a caller that sees
    /// `Ready` also sees every descriptor the claimant wrote.
    #[inline]
    pub fn state(&self, chunk: usize) -> ChunkState {
        match self.locate(chunk) {
            Some((slot, shift)) => ChunkState::from_bits(slot.chunks.load(Acquire) >> shift),
            None => ChunkState::Absent,
        }
    }

    /// Waits while chunk `chunk` is `Initialising`, and returns the state it left
    /// that for (`Ready`, or `Uninit` if its claimant gave it back).
    /// Between re-checks it spins a while, then calls the wait hook.
    pub fn wait_while_initialising(&self, chunk: usize) -> ChunkState {
        let mut backoff = Backoff::new(self.wait);
        loop {
            match self.state(chunk) {
                ChunkState::Initialising => backoff.pause(),
                other => return other,
            }
        }
    }

    /// The state of section `section`'s memmap.
    ///
    /// Acquire: pairs with the Release in
    /// [`MemmapClaim::publish`](claim::MemmapClaim::publish), so a caller
    /// that sees `Populated` may use the memmap the backing mapped.
    pub fn memmap_state(&self, section: usize) -> MemmapState {
        let Some(slot) = self.slot(section) else {
            return MemmapState::Unpopulated;
        };
        decode_memmap(slot.memmap.load(Acquire))
    }

    /// Waits while section `section`'s memmap is `Populating`, and returns the
    /// state it left that for.
    /// Between re-checks it spins a while, then calls the wait hook.
    pub fn wait_while_populating(&self, section: usize) -> MemmapState {
        let mut backoff = Backoff::new(self.wait);
        loop {
            match self.memmap_state(section) {
                MemmapState::Populating => backoff.pause(),
                other => return other,
            }
        }
    }

    /// Chunks with present pages not yet finished.
    pub fn unfinished(&self) -> usize {
        // Relaxed: a statistic; decisions use `all_initialised`.
        self.unfinished.load(Relaxed)
    }

    /// The off switch: true while every chunk is initialised and its pages are on
    /// the free lists. Goes back to false only when a chunk is given back.
    ///
    /// Acquire: pairs with the Release in [`Published::finish`] of the last chunk.
    #[inline]
    pub fn all_initialised(&self) -> bool {
        self.unfinished.load(Acquire) == 0
    }
}

impl Drop for Sections<'_> {
    /// Gives the slots back, fresh, for another allocator.
    fn drop(&mut self) {
        self.slots.iter().for_each(SectionSlot::release);
    }
}

fn decode_memmap(word: u64) -> MemmapState {
    match word & 3 {
        MEMMAP_POPULATING => MemmapState::Populating,
        MEMMAP_POPULATED => {
            let offset = (word >> 2) & TAKEN_MASK;
            let len = (word >> 32) & TAKEN_MASK;
            MemmapState::Populated(offset..offset + len)
        }
        _ => MemmapState::Unpopulated,
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
