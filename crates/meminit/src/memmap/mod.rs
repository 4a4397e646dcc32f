//! The descriptor array (memmap), and (in the private `contract` module) the
//! backing that provides its memory.
//!
//! This is the unsafe core of the crate. The memmap is one virtual range indexed by
//! pfn (vmemmap style), starting at the first section with present memory
//! ([`Layout::memmap_start`]): the descriptor of pfn `p` lives at
//! `base + (p - memmap_start)`. Memory under
//! the memmap is asked of the [`MemmapBacking`] the first time it is needed, in the
//! backing's own [`Granularity`]: a whole section's part at once (a huge page), or
//! each chunk's part as that chunk is initialised. It is asked exactly once per
//! piece, by the one holder of the chunk's claim (and, for sections, of the
//! section's memmap claim; both are crate-private, in `section`). The module keeps one invariant, on which every
//! `unsafe` block in it relies:
//!
//! > **A descriptor is read only in a chunk whose state is `Ready`, and a chunk
//! > becomes `Ready` only after the memmap under it was populated and every one of
//! > its descriptors written.**
//!
//! The `ChunkWriter` enforces the second half by construction: it is made only
//! from a claim whose populate succeeded, it writes descriptors strictly in pfn
//! order, and it publishes only when it has reached the end of its claimed run
//! of chunks.
//!
//! Policy (what each descriptor should say, which list a page goes on) is not here.

mod contract;
pub(crate) mod reentry;
mod slice;
mod source;
mod store;
#[cfg(test)]
mod tests;

pub use contract::{BackingError, Granularity, LookupError, MemmapBacking, MemmapPiece, Populated};
pub use reentry::MAX_BACKING_CONTEXTS;
pub use slice::{SliceBacking, StaticMemmap};
pub use source::{PageSource, SourceError, MAX_SOURCE_PAGES};

use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::layout::Layout;
use crate::page::{Page, PageState};
use crate::section::{
    ChunkState, Claim, MemmapState, Published, Retiring, Sections, MAX_TAKEN_OFFSET,
};
use crate::types::Pfn;
use source::merge;
pub(crate) use store::Stores;

/// What one pass of initialisation (start-up's, a deferred worker's, or a single
/// chunk's) remembers between its chunks: the section whose memmap it populated
/// last, if the backing says `populate` leaves that memory in cache. A pass
/// writes a section's chunks one after another right after populating it, so
/// they are written with ordinary stores; a chunk of a section populated
/// earlier, by someone else, gets non-temporal ones.
#[derive(Debug)]
pub(crate) struct InitPass {
    warm_section: Option<usize>,
}

impl InitPass {
    /// A pass that has populated nothing yet.
    pub const fn new() -> InitPass {
        InitPass { warm_section: None }
    }
}

/// The descriptor array and the state of its sections and chunks.
pub(crate) struct Memmap<'a, B> {
    backing: B,
    /// The descriptor of `start`.
    base: NonNull<Page>,
    /// The first pfn the memmap describes: every pfn of a chunk in `sections` is
    /// at or above it.
    start: u64,
    sections: Sections<'a>,
    chunk_shift: u32,
    section_shift: u32,
    populated_bytes: AtomicU64,
    /// Set once a chunk was given back: from then on descriptors are written with
    /// atomic stores, since a stale reference to one may still be in use.
    gave_back: AtomicBool,
}

// SAFETY: the raw `base` pointer is only dereferenced under the module invariant
// (Ready chunks, or a chunk owned through a `Claim`); descriptors are atomics,
// and the backing is required to be shareable (`B: Sync`).
unsafe impl<B: Sync> Sync for Memmap<'_, B> {}
// SAFETY: as above; moving the memmap moves the ownership of the backing with it.
unsafe impl<B: Send> Send for Memmap<'_, B> {}

impl<B> Memmap<'_, B> {
    /// The place of `pfn`'s descriptor in the memmap. Only for a pfn of a chunk
    /// with a slot, which is at or above `start`.
    #[inline]
    fn index_of(&self, pfn: u64) -> usize {
        (pfn - self.start) as usize
    }
}

impl<'a, B: MemmapBacking> Memmap<'a, B> {
    /// A memmap over `backing` for `layout`, with chunks of `2^chunk_shift` pages
    /// whose states are in `sections` (whose slots start at the layout's first
    /// memmap section). `None` if the backing's descriptors are not 64-byte
    /// aligned, against its contract.
    pub fn new(
        backing: B,
        sections: Sections<'a>,
        layout: &Layout,
        chunk_shift: u32,
    ) -> Option<Self> {
        let base = backing.descriptors();
        if !base.as_ptr().is_aligned() {
            return None;
        }
        Some(Memmap {
            backing,
            base,
            start: layout.memmap_start().0,
            sections,
            chunk_shift,
            section_shift: layout.section_shift(),
            populated_bytes: AtomicU64::new(0),
            gave_back: AtomicBool::new(false),
        })
    }

    /// The section and chunk states.
    pub fn sections(&self) -> &Sections<'a> {
        &self.sections
    }

    /// The backing.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// log2 of the pages in a chunk.
    pub fn chunk_shift(&self) -> u32 {
        self.chunk_shift
    }

    /// The chunk that holds `pfn`.
    #[inline]
    pub fn chunk_of(&self, pfn: u64) -> usize {
        (pfn >> self.chunk_shift) as usize
    }

    /// The pfns `[start, end)` of chunk `chunk`.
    pub fn chunk_pfns(&self, chunk: usize) -> (u64, u64) {
        let start = (chunk as u64) << self.chunk_shift;
        (start, start + (1 << self.chunk_shift))
    }

    /// Bytes of memmap populated so far.
    pub fn populated_bytes(&self) -> u64 {
        // Relaxed: a statistic, ordered by nothing.
        self.populated_bytes.load(Relaxed)
    }

    /// The descriptor of `pfn`, if its chunk is `Ready`.
    #[inline]
    pub fn page(&self, pfn: u64) -> Result<&Page, LookupError> {
        match self.sections.state(self.chunk_of(pfn)) {
            ChunkState::Ready => {
                // SAFETY: the chunk is Ready (seen with Acquire), so by the module
                // invariant the memmap under it is populated and this descriptor
                // written (a Ready chunk has a slot, so `pfn` is at or above
                // `start`); the backing keeps that memory valid for as long as
                // `self` lives.
                Ok(unsafe { &*self.base.as_ptr().add(self.index_of(pfn)) })
            }
            ChunkState::Absent => Err(LookupError::NotPresent { pfn: Pfn(pfn) }),
            ChunkState::Uninit => Err(LookupError::Uninitialised { pfn: Pfn(pfn) }),
            ChunkState::Initialising => Err(LookupError::Initialising { pfn: Pfn(pfn) }),
        }
    }

    /// Makes sure the memmap under the claimed chunks is populated, populating
    /// their section or each chunk itself as the backing asks, then accepts each
    /// chunk's memory. If the first chunk fails, the claim is dropped, which gives
    /// every chunk back, and the error returned; if a later one does, the claim
    /// gives it and the rest back, and the writer comes with that chunk's error
    /// (the writer then covers the chunks before it). A piece whose populate
    /// succeeded is never asked for again. `pass` says which stores suit the
    /// descriptors (see [`InitPass`]).
    #[allow(clippy::type_complexity)]
    pub fn populate<'m>(
        &'m self,
        mut claim: Claim<'m, 'a>,
        layout: &Layout,
        pass: &mut InitPass,
    ) -> Result<(ChunkWriter<'m, 'a, B>, Option<BackingError>), BackingError> {
        assert!(self.sections.owns(&claim), "claim from another memmap");
        let (start, _) = self.chunk_pfns(claim.chunk());
        let section = (start >> self.section_shift) as usize;
        let mut cut = None;
        let granularity = self.backing.granularity();
        let (taken, fresh) = match granularity {
            Granularity::Section => self.populate_section(section, layout)?,
            Granularity::Chunk => {
                let mut fresh = true;
                cut = each_until_cut(&mut claim, |index| {
                    fresh &= self.populate_chunk(index, layout)?;
                    Ok(())
                })?;
                (0..0, fresh)
            }
        };
        let warm = fresh && self.backing.populate_leaves_memmap_cached();
        if granularity == Granularity::Section {
            if warm {
                pass.warm_section = Some(section);
            } else if pass.warm_section != Some(section) {
                // The pass moved on to a section someone else populated: the
                // one it populated is no longer the last it wrote.
                pass.warm_section = None;
            }
        }
        let stores = if warm || pass.warm_section == Some(section) {
            Stores::Cached
        } else {
            Stores::Streaming
        };
        // An accept that fails cuts the run before a chunk whose populate
        // failed, if one did: its error is the one the caller resumes after.
        let accept_cut = each_until_cut(&mut claim, |index| {
            let piece = self.chunk_piece(index);
            let in_chunk = clip(&taken, piece.start.0, piece.end.0);
            self.backing.accept(piece, in_chunk, layout)
        })?;
        cut = accept_cut.or(cut);
        let (_, end) = self.chunk_pfns(claim.chunks().end - 1);
        let taken = clip(&taken, start, end);
        let writer = ChunkWriter {
            memmap: self,
            claim,
            next: start,
            end,
            taken,
            // Acquire: pairs with the Release in `depopulate`, which comes before
            // the retired chunk becomes claimable.
            atomic: self.gave_back.load(Acquire),
            stores,
        };
        Ok((writer, cut))
    }

    /// The pfns of chunk `chunk` that hold its section's memmap (empty if none,
    /// or if the section's memmap is not populated).
    pub fn taken_in(&self, chunk: usize) -> Range<u64> {
        let (start, end) = self.chunk_pfns(chunk);
        if self.backing.granularity() == Granularity::Chunk {
            return start..start;
        }
        let section = (start >> self.section_shift) as usize;
        match self.sections.memmap_state(section) {
            MemmapState::Populated(taken) if !taken.is_empty() => {
                let first = (section as u64) << self.section_shift;
                let t0 = (first + taken.start).clamp(start, end);
                t0..(first + taken.end).clamp(t0, end)
            }
            _ => start..start,
        }
    }

    /// The memmap piece (section or chunk, as the backing populates) holding
    /// chunk `chunk`'s descriptors.
    fn piece_of(&self, chunk: usize) -> MemmapPiece {
        match self.backing.granularity() {
            Granularity::Chunk => self.chunk_piece(chunk),
            Granularity::Section => {
                let (start, _) = self.chunk_pfns(chunk);
                self.section_piece((start >> self.section_shift) as usize)
            }
        }
    }

    /// Chunk `chunk` as a piece: its pfns, in its section.
    fn chunk_piece(&self, chunk: usize) -> MemmapPiece {
        let (start, end) = self.chunk_pfns(chunk);
        MemmapPiece {
            section: (start >> self.section_shift) as usize,
            start: Pfn(start),
            end: Pfn(end),
        }
    }

    /// Section `section` as a piece: all its pfns.
    fn section_piece(&self, section: usize) -> MemmapPiece {
        let first = (section as u64) << self.section_shift;
        MemmapPiece {
            section,
            start: Pfn(first),
            end: Pfn(first + (1 << self.section_shift)),
        }
    }

    /// Finishes giving back the chunk of `retiring`, whose blocks have left the
    /// free lists: asks the backing to release its memmap where no initialised
    /// chunk needs it any more (the chunk's own part, or its whole section once
    /// every chunk of it is given back), then makes the chunk `Uninit`. Returns
    /// the bytes of memmap released.
    pub fn depopulate(&self, retiring: Retiring<'_, 'a>) -> u64 {
        // Release: pairs with the Acquire in `populate`; set before the chunk can
        // be claimed again (the Release of dropping `retiring`).
        self.gave_back.store(true, Release);
        let chunk = retiring.chunk();
        let piece = self.piece_of(chunk);
        let released = match self.backing.granularity() {
            Granularity::Chunk => {
                let released =
                    self.sections.chunk_memmap_populated(chunk) && self.backing.depopulate(piece);
                if released {
                    self.sections.clear_chunk_memmap_populated(chunk);
                }
                drop(retiring);
                released
            }
            Granularity::Section => {
                // The section's memmap may go only once this chunk is `Uninit`.
                drop(retiring);
                match self.sections.retire_memmap(piece.section) {
                    Some(memmap) => {
                        let released = self.backing.depopulate(piece);
                        if released {
                            memmap.finish();
                        }
                        released
                    }
                    None => false,
                }
            }
        };
        if !released {
            return 0;
        }
        // Relaxed: a statistic.
        self.populated_bytes
            .fetch_sub(piece.memmap_bytes(), Relaxed);
        piece.memmap_bytes()
    }

    /// Populates section `section`'s memmap unless someone has; returns the pfns
    /// taken from the section for it, and whether this call populated it.
    fn populate_section(
        &self,
        section: usize,
        layout: &Layout,
    ) -> Result<(Range<u64>, bool), BackingError> {
        let sections = &self.sections;
        let first = (section as u64) << self.section_shift;
        loop {
            let claim = match sections.claim_memmap(section) {
                Ok(claim) => claim,
                Err(MemmapState::Populated(taken)) if taken.is_empty() => return Ok((0..0, false)),
                Err(MemmapState::Populated(taken)) => {
                    return Ok((first + taken.start..first + taken.end, false))
                }
                Err(MemmapState::Populating) => {
                    sections.wait_while_populating(section);
                    continue;
                }
                // Given back after a failure, just now: try again.
                Err(MemmapState::Unpopulated) => continue,
            };
            let piece = self.section_piece(section);
            let mut source = PageSource::new(layout, piece, Granularity::Section);
            let Range { start, end } = self.backing.populate(piece, layout, &mut source)?.taken;
            let returned = start.0..end.0;
            // Relaxed: a statistic.
            self.populated_bytes
                .fetch_add(piece.memmap_bytes(), Relaxed);
            // What the backing took itself and what the source handed out are
            // recorded as one range; two apart cannot be.
            let contiguous = merge(source.taken(), returned);
            let taken = contiguous.clone().unwrap_or(0..0);
            // The section's state word records the taken range as 30-bit offsets;
            // a section so large that they do not fit cannot carry its own memmap.
            let recordable = taken.is_empty() || taken.end - first < MAX_TAKEN_OFFSET;
            let valid =
                contiguous.is_some() && recordable && taken_is_usable(&taken, piece, layout);
            // The memmap is in place either way: it must never be populated again.
            let recorded = if valid && !taken.is_empty() {
                taken.start - first..taken.end - first
            } else {
                0..0
            };
            claim.publish(recorded);
            if !valid {
                return Err(BackingError {
                    section,
                    reason: if contiguous.is_none() {
                        "the pages the backing took and those of its page source are not one range"
                    } else if recordable {
                        "the backing took pages that are not usable memory of the section"
                    } else {
                        "the backing took pages 2^30 or more pages into the section"
                    },
                });
            }
            return Ok((if taken.is_empty() { 0..0 } else { taken }, true));
        }
    }

    /// Populates claimed chunk `index`'s part of the memmap unless an earlier
    /// claimant of it did; says whether this call populated it.
    fn populate_chunk(&self, index: usize, layout: &Layout) -> Result<bool, BackingError> {
        if self.sections.chunk_memmap_populated(index) {
            return Ok(false);
        }
        let chunk = self.chunk_piece(index);
        let mut source = PageSource::new(layout, chunk, Granularity::Chunk);
        let taken = self.backing.populate(chunk, layout, &mut source)?.taken;
        self.sections.set_chunk_memmap_populated(index);
        // Relaxed: a statistic.
        self.populated_bytes
            .fetch_add(chunk.memmap_bytes(), Relaxed);
        if !taken.is_empty() {
            return Err(BackingError {
                section: chunk.section,
                reason: "a backing that populates chunk by chunk took pages of the chunk",
            });
        }
        Ok(true)
    }
}

/// Runs `step` for each chunk of `claim` in order, until one fails. A failure
/// at the first chunk is returned as the error (the caller drops the claim,
/// which gives every chunk back); one at a later chunk cuts the claim there
/// (that chunk and those after it go back) and is returned as the cut.
fn each_until_cut(
    claim: &mut Claim<'_, '_>,
    mut step: impl FnMut(usize) -> Result<(), BackingError>,
) -> Result<Option<BackingError>, BackingError> {
    let first = claim.chunk();
    for index in claim.chunks() {
        match step(index) {
            Ok(()) => {}
            Err(e) if index == first => return Err(e),
            Err(e) => {
                claim.give_back_from(index);
                return Ok(Some(e));
            }
        }
    }
    Ok(None)
}

/// `range` clipped to `[start, end)` (empty at an end when they do not meet).
fn clip(range: &Range<u64>, start: u64, end: u64) -> Range<u64> {
    range.start.clamp(start, end)..range.end.clamp(start, end)
}

/// Whether `taken` is empty, or lies in `piece` and covers only usable pages.
fn taken_is_usable(taken: &Range<u64>, piece: MemmapPiece, layout: &Layout) -> bool {
    taken.is_empty()
        || (piece.start.0 <= taken.start
            && taken.end <= piece.end.0
            && layout
                .memory_runs(Pfn(taken.start)..Pfn(taken.end))
                .filter(|r| !r.reserved)
                .map(|r| r.pages())
                .sum::<u64>()
                == taken.end - taken.start)
}

/// Writes the descriptors of a claimed run of chunks whose memmap is populated,
/// in pfn order, then publishes them.
pub(crate) struct ChunkWriter<'m, 'a, B> {
    memmap: &'m Memmap<'a, B>,
    claim: Claim<'m, 'a>,
    /// The next pfn to write.
    next: u64,
    /// One past the run's last pfn.
    end: u64,
    /// The pages of the run that hold memmap.
    taken: Range<u64>,
    /// Write with atomic stores: descriptors of this range were readable before
    /// (a chunk was given back), so a stale reference may still touch them.
    atomic: bool,
    /// Otherwise, the stores that suit where the memory is.
    stores: Stores,
}

impl<'m, 'a, B> ChunkWriter<'m, 'a, B> {
    /// The chunks the writer covers.
    pub fn chunks(&self) -> Range<usize> {
        self.claim.chunks()
    }

    /// The pages of the run that hold memmap.
    pub fn taken(&self) -> Range<u64> {
        self.taken.clone()
    }

    /// The stores the plain (not atomic) runs use.
    #[cfg(test)]
    pub fn stores(&self) -> Stores {
        self.stores
    }

    /// Writes descriptors for the pfns from where the last run ended up to `until`,
    /// each in `state` for zone `zone_index`. Panics if `until` is past the run.
    ///
    /// The run is contiguous, so its first descriptor's place is computed once and
    /// the choice between atomic and plain stores made once; plain stores write a
    /// template (`Page::words`) whole descriptors at a time, ordinary or
    /// non-temporal as `populate` chose (see [`Stores`]). Every
    /// store of the run is visible before any later store of this thread: before
    /// `publish` in particular.
    #[inline]
    pub fn write_run(&mut self, until: u64, state: PageState, zone_index: u32) {
        assert!(
            self.next <= until && until <= self.end,
            "descriptor run outside the claimed chunks"
        );
        let count = (until - self.next) as usize;
        if count == 0 {
            return;
        }
        // SAFETY: pfns `next..until` lie in the claimed run (checked above:
        // `end` closes the last chunk the claim still holds; a claimed chunk has
        // a slot, so they are at or above `start`), whose memmap is populated (a
        // writer exists only after `populate` succeeded for every chunk it
        // covers: one that failed was given back and cut from the run before
        // `end` was set): the `count` descriptors from here on are inside the
        // backing's memory.
        let first = unsafe {
            self.memmap
                .base
                .as_ptr()
                .add(self.memmap.index_of(self.next))
        };
        if self.atomic {
            for i in 0..count {
                // SAFETY: `first.add(i)` is one of the run's descriptors (above), so
                // the memory is valid for reads and writes; every field of `Page` is
                // an atomic valid for any bit pattern, so a shared reference to
                // whatever the memory holds is sound, and the atomic stores of
                // `reset` race with no non-atomic access.
                unsafe { (*first.add(i)).reset(state, zone_index) };
            }
        } else {
            // SAFETY: the run's `count` descriptors (above) are valid for reads and
            // writes and 64-byte aligned (`new` checked the base; a `Page` is 64
            // bytes); the claim makes this thread their only user, no one reads them before
            // `publish`, and no reference to them exists: no chunk was ever given
            // back, so these chunks were never readable.
            unsafe {
                store::descriptors(first, count, Page::words(state, zone_index), self.stores)
            };
        }
        self.next = until;
    }

    /// Marks the run's chunks `Ready`. Panics unless every descriptor was
    /// written.
    pub fn publish(self) -> Published<'m, 'a> {
        assert_eq!(
            self.next, self.end,
            "publishing chunks with unwritten descriptors"
        );
        self.claim.publish()
    }
}
