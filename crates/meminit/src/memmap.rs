//! The descriptor array (memmap) and the backing that provides its memory.
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
//! order, and it publishes only when it has reached the end of the chunk.
//!
//! Policy (what each descriptor should say, which list a page goes on) is not here.

use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::layout::{Layout, Pfn};
use crate::page::{Page, PageState};
use crate::section::{
    ChunkState, Claim, MemmapState, Published, Retiring, Sections, MAX_TAKEN_OFFSET,
};
use crate::source::{merge, PageSource};

/// The pages whose memmap a backing is asked to populate, or whose memory it is
/// asked to accept: a section, or a chunk of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapPiece {
    /// The section the pages are in: its absolute number (section `i` holds pfns
    /// from `i << Layout::section_shift()`), not its place in the memmap.
    pub section: usize,
    /// The first pfn.
    pub start: Pfn,
    /// One past the last pfn.
    pub end: Pfn,
}

impl MemmapPiece {
    /// Bytes of memmap that hold these pages' descriptors (zero for an inverted
    /// piece, which the allocator never makes).
    pub const fn memmap_bytes(&self) -> u64 {
        self.start
            .pages_to(self.end)
            .saturating_mul(core::mem::size_of::<Page>() as u64)
    }
}

/// In which pieces a backing populates the memmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// A section's descriptors at once (2 MiB for a 128 MiB section: one huge
    /// page), when the first chunk of the section is initialised. The backing may
    /// take pages of the section itself for them and for its page tables, from the
    /// [`PageSource`] it is lent (or as [`Populated::taken`]).
    Section,
    /// Each chunk's descriptors (64 KiB for a 4 MiB chunk) when that chunk is
    /// initialised, so that resident memmap follows initialised chunks. The memory
    /// and the page tables must come from elsewhere: `taken` must be empty, and the
    /// [`PageSource`] hands out nothing.
    Chunk,
}

/// What a backing did to make a section's memmap accessible.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Populated {
    /// Usable pages of the section itself that now hold its memmap (Linux's
    /// "memmap on memory"), taken without the [`PageSource`]. They get reserved
    /// descriptors and are never handed out. Empty when the memory came from
    /// elsewhere or from the source (whose pages are recorded anyway); otherwise
    /// it must form one contiguous range with the source's pages.
    pub taken: Range<Pfn>,
}

impl Populated {
    /// The memmap's memory came from outside the section.
    pub const ELSEWHERE: Populated = Populated {
        taken: Pfn(0)..Pfn(0),
    };

    /// The memmap's memory is the section's own pages `taken`.
    pub const fn in_section(taken: Range<Pfn>) -> Populated {
        Populated { taken }
    }
}

/// Why a backing could not populate a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingError {
    /// The section that could not be populated, by absolute number (as in
    /// [`MemmapPiece::section`]).
    pub section: usize,
    /// What went wrong, in the backing's words.
    pub reason: &'static str,
}

impl core::error::Error for BackingError {}

impl core::fmt::Display for BackingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "could not populate the memmap of section {}: {}",
            self.section, self.reason
        )
    }
}

/// Provides the memory under the memmap, a section or a chunk at a time, and
/// accepts each chunk's memory before its first use.
///
/// A host backs the memmap with address space reserved but not committed; a kernel
/// maps the range section by section, perhaps with the section's own first pages
/// (see [`Populated::taken`]), or chunk by chunk with small pages.
///
/// # Safety
///
/// An implementation promises that:
/// - [`descriptors`](Self::descriptors) returns the same pointer every time, aligned
///   to 64 bytes: the address of the descriptor of [`Layout::memmap_start`], at the
///   start of one address range (one allocated object, in Rust's terms) large
///   enough for [`Layout::memmap_bytes`] bytes (the descriptors of pfns
///   `memmap_start..memmap_start + memmap_descriptors`);
/// - [`granularity`](Self::granularity) returns the same value every time;
/// - once [`populate`](Self::populate) has returned `Ok` for a piece, the
///   descriptors of its pfns, `base + (start - memmap_start) .. base + (end -
///   memmap_start)`, are valid for reads and
///   writes, and stay so, untouched by anyone but the allocator, for as long as the
///   backing lives;
/// - [`Populated::taken`] lies inside the piece, the backing asks for it only
///   pages that the layout says are usable, and it is empty under
///   [`Granularity::Chunk`];
/// - after [`depopulate`](Self::depopulate) returns `true` for a piece, its
///   descriptors stay valid for reads and writes (their contents may change to
///   anything, zeroes for instance), until a later `populate` of the piece makes
///   them hold what the allocator writes again: the memory behind them may be
///   released (a host's `MADV_DONTNEED`, a guest reporting the pages to its
///   hypervisor) but the range must not be unmapped, because a caller may still
///   hold a reference to a descriptor of a page it freed;
/// - the backing uses pages of the section only if they are in `taken` or were
///   handed out by the [`PageSource`] of a call that succeeded.
///
/// The allocator calls `populate` for a piece only while it holds the claim of a
/// chunk in it (so from one thread at a time), never for a piece without present
/// pages, and never for a piece that is populated: not again once a call has
/// succeeded, unless `depopulate` released the piece since. A call that fails
/// gives the piece back; a later claimant may ask again.
///
/// # Pages for the backing itself, and calls back into the allocator
///
/// A kernel's `populate` needs pages for the page tables that map the memmap. It
/// takes them from the [`PageSource`] it is lent: usable pages of the section
/// itself, next to each other, recorded with the section and never handed out
/// (see there for the rules; under [`Granularity::Chunk`] it has none, and such a
/// backing brings its own pool). The source works before the allocator exists,
/// so it serves [`crate::Strategy::Eager`] start-up too. A section whose memmap
/// holds pages of its own, the source's included, is never depopulated.
///
/// `populate` and `accept` should not call the allocator. If they do (on the same
/// context, as [`crate::Config::context`] names it), the call is served only from
/// memory already initialised: where it would have to initialise a chunk or wait
/// for one, it fails with [`crate::AllocError::Reentrant`] (or
/// [`LookupError::Reentrant`]) rather than wait for the chunk its own caller
/// holds.
pub unsafe trait MemmapBacking {
    /// The address of the descriptor of [`Layout::memmap_start`], the first pfn the
    /// memmap describes (the first pfn of the first section with present memory).
    fn descriptors(&self) -> NonNull<Page>;

    /// Whether [`populate`](Self::populate) is asked for whole sections or for
    /// chunks. By default, sections.
    fn granularity(&self) -> Granularity {
        Granularity::Section
    }

    /// Makes the memmap of `piece` accessible. Its content may be anything: every
    /// descriptor is written before it is read. Pages for the mapping itself (page
    /// tables, or the memmap) come from `pages`, the section's own usable pages.
    fn populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError>;

    /// Makes the memory of one chunk ready for use, before any of its pages is
    /// handed out for the first time: accept it (TDX `TDG.MEM.PAGE.ACCEPT`, SNP
    /// `PVALIDATE`), zero it, or check it. Called exactly once per chunk, after its
    /// memmap is populated and before its pages reach a free list, by the chunk's
    /// claimant; a failure gives the chunk back, to be tried again. `chunk` may hold
    /// holes, reserved pages and the pages `populate` took (`taken`: the part of
    /// the section's recorded taken pages in this chunk, source pages included; they
    /// hold the memmap or page tables and must not be touched): only the usable runs
    /// of `layout.present_runs(chunk.start, chunk.end)` outside `taken` are handed
    /// out. By default, nothing to do.
    ///
    /// A chunk given back ([`crate::Config::give_back`]) and initialised again is
    /// accepted again: its memory may have been reported to the host meanwhile.
    fn accept(
        &self,
        chunk: MemmapPiece,
        taken: Range<u64>,
        layout: &Layout,
    ) -> Result<(), BackingError> {
        let _ = (chunk, taken, layout);
        Ok(())
    }

    /// Releases the memory under the memmap of `piece` (a section, or a chunk,
    /// as [`granularity`](Self::granularity) says), none of whose chunks is
    /// initialised any more: every one was given back. Returns whether it did;
    /// `false` (the default) keeps the memmap populated, and the allocator will
    /// not populate it again. See the trait's safety rules: the range stays
    /// mapped. Called without any lock held, by the one thread that retired the
    /// piece; never for a section whose memmap holds pages of the section itself.
    fn depopulate(&self, piece: MemmapPiece) -> bool {
        let _ = piece;
        false
    }

    /// Memory reported to the host by free page reporting
    /// ([`crate::Allocator::report_free`]) is about to be used again: `pages` were
    /// taken off the free lists for an allocation, or merged into a block that is
    /// no longer counted as reported. A virtio-balloon guest has nothing to do
    /// (the host gives zeroed memory back on the next touch); a confidential guest
    /// would accept the pages again. Called under a zone lock: it must not call
    /// into the allocator, and should be short. By default, nothing.
    fn reuse_reported(&self, pages: Range<Pfn>) {
        let _ = pages;
    }

    /// Zeroes the memory of `pages`, a block just allocated with
    /// [`crate::AllocFlags::ZEROED`]: the allocator has no mapping of the memory it
    /// manages, the embedder's direct map does. Called without any allocator
    /// lock held. By default it cannot, and the allocation fails with this error
    /// (whose section the allocator fills in).
    fn zero(&self, pages: Range<Pfn>) -> Result<(), BackingError> {
        let _ = pages;
        Err(BackingError {
            section: 0,
            reason: "this backing cannot zero memory: it has no mapping of it",
        })
    }
}

/// Why a descriptor could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The pfn lies in a section with no present memory, or past the memmap.
    NotPresent {
        /// The pfn asked for.
        pfn: Pfn,
    },
    /// The pfn's section has not been initialised yet.
    Uninitialised {
        /// The pfn asked for.
        pfn: Pfn,
    },
    /// The pfn's section is being initialised right now.
    Initialising {
        /// The pfn asked for.
        pfn: Pfn,
    },
    /// Initialising the section failed in its backing.
    Backing(BackingError),
    /// The look-up was made from inside the backing's `populate` or `accept` (on
    /// the same [`crate::Config::context`]) and would have had to initialise or
    /// wait for the chunk.
    Reentrant {
        /// The pfn asked for.
        pfn: Pfn,
    },
}

impl core::error::Error for LookupError {}

impl core::fmt::Display for LookupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LookupError::NotPresent { pfn } => write!(f, "{pfn} is not in present memory"),
            LookupError::Uninitialised { pfn } => {
                write!(f, "the descriptor of {pfn} is not initialised yet")
            }
            LookupError::Initialising { pfn } => {
                write!(f, "the descriptor of {pfn} is being initialised")
            }
            LookupError::Backing(e) => e.fmt(f),
            LookupError::Reentrant { pfn } => write!(
                f,
                "the descriptor of {pfn} was asked for from inside the memmap backing, and its chunk is not initialised"
            ),
        }
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

    /// Makes sure the memmap under the claimed chunk is populated, populating its
    /// section or the chunk itself as the backing asks, then accepts the chunk's
    /// memory. On failure the claim is dropped, which gives the chunk back; a piece
    /// whose populate succeeded is never asked for again.
    pub fn populate<'m>(
        &'m self,
        claim: Claim<'m, 'a>,
        layout: &Layout,
    ) -> Result<ChunkWriter<'m, 'a, B>, BackingError> {
        assert!(self.sections.owns(&claim), "claim from another memmap");
        let (start, end) = self.chunk_pfns(claim.chunk());
        let section = (start >> self.section_shift) as usize;
        let chunk = MemmapPiece {
            section,
            start: Pfn(start),
            end: Pfn(end),
        };
        let taken = match self.backing.granularity() {
            Granularity::Section => self.populate_section(section, layout)?,
            Granularity::Chunk => self.populate_chunk(&claim, chunk, layout)?,
        };
        let taken = taken.start.clamp(start, end)..taken.end.clamp(start, end);
        self.backing.accept(chunk, taken.clone(), layout)?;
        Ok(ChunkWriter {
            memmap: self,
            claim,
            next: start,
            end,
            taken,
            // Acquire: pairs with the Release in `depopulate`, which comes before
            // the retired chunk becomes claimable.
            atomic: self.gave_back.load(Acquire),
        })
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
        let (start, end) = self.chunk_pfns(chunk);
        let section = (start >> self.section_shift) as usize;
        match self.backing.granularity() {
            Granularity::Chunk => MemmapPiece {
                section,
                start: Pfn(start),
                end: Pfn(end),
            },
            Granularity::Section => MemmapPiece {
                section,
                start: Pfn((section as u64) << self.section_shift),
                end: Pfn(((section as u64) + 1) << self.section_shift),
            },
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
    /// taken from the section for it.
    fn populate_section(
        &self,
        section: usize,
        layout: &Layout,
    ) -> Result<Range<u64>, BackingError> {
        let sections = &self.sections;
        let first = (section as u64) << self.section_shift;
        loop {
            let claim = match sections.claim_memmap(section) {
                Ok(claim) => claim,
                Err(MemmapState::Populated(taken)) if taken.is_empty() => return Ok(0..0),
                Err(MemmapState::Populated(taken)) => {
                    return Ok(first + taken.start..first + taken.end)
                }
                Err(MemmapState::Populating) => {
                    sections.wait_while_populating(section);
                    continue;
                }
                // Given back after a failure, just now: try again.
                Err(MemmapState::Unpopulated) => continue,
            };
            let piece = MemmapPiece {
                section,
                start: Pfn(first),
                end: Pfn(first + (1 << self.section_shift)),
            };
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
            return Ok(if taken.is_empty() { 0..0 } else { taken });
        }
    }

    /// Populates the claimed chunk's part of the memmap unless an earlier claimant
    /// of it did.
    fn populate_chunk(
        &self,
        claim: &Claim<'_, 'a>,
        chunk: MemmapPiece,
        layout: &Layout,
    ) -> Result<Range<u64>, BackingError> {
        let index = claim.chunk();
        if self.sections.chunk_memmap_populated(index) {
            return Ok(0..0);
        }
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
        Ok(0..0)
    }
}

/// Whether `taken` is empty, or lies in `piece` and covers only usable pages.
fn taken_is_usable(taken: &Range<u64>, piece: MemmapPiece, layout: &Layout) -> bool {
    taken.is_empty()
        || (piece.start.0 <= taken.start
            && taken.end <= piece.end.0
            && layout
                .present_runs(Pfn(taken.start)..Pfn(taken.end))
                .filter(|r| !r.reserved)
                .map(|r| r.pages())
                .sum::<u64>()
                == taken.end - taken.start)
}

/// Writes the descriptors of one claimed chunk whose memmap is populated, in pfn
/// order, then publishes it.
pub(crate) struct ChunkWriter<'m, 'a, B> {
    memmap: &'m Memmap<'a, B>,
    claim: Claim<'m, 'a>,
    /// The next pfn to write.
    next: u64,
    /// One past the chunk's last pfn.
    end: u64,
    /// The pages of this chunk that hold memmap.
    taken: Range<u64>,
    /// Write with atomic stores: descriptors of this range were readable before
    /// (a chunk was given back), so a stale reference may still touch them.
    atomic: bool,
}

impl<'m, 'a, B> ChunkWriter<'m, 'a, B> {
    /// The pages of this chunk that hold memmap.
    pub fn taken(&self) -> Range<u64> {
        self.taken.clone()
    }

    /// Writes descriptors for the pfns from where the last run ended up to `until`,
    /// each in `state` for zone `zone_index`. Panics if `until` is past the chunk.
    #[inline]
    pub fn write_run(&mut self, until: u64, state: PageState, zone_index: u32) {
        assert!(
            self.next <= until && until <= self.end,
            "descriptor run outside the claimed chunk"
        );
        let base = self.memmap.base.as_ptr();
        for pfn in self.next..until {
            let at = self.memmap.index_of(pfn);
            if self.atomic {
                // SAFETY: `pfn` lies in the claimed chunk (checked above; a claimed
                // chunk has a slot, so it is at or above `start`), whose memmap is
                // populated, so the memory is valid for reads and writes; every
                // field of `Page` is an atomic valid for any bit pattern, so a
                // shared reference to whatever the memory holds is sound, and the
                // atomic stores of `reset` race with no non-atomic access.
                unsafe { (*base.add(at)).reset(state, zone_index) };
            } else {
                // SAFETY: `pfn` lies in the claimed chunk (checked above; a claimed
                // chunk has a slot, so it is at or above `start`), whose memmap is
                // populated (a writer exists only after `populate` succeeded); the
                // claim makes this thread its only writer, no one reads it before
                // `publish`, and no reference to it exists: no chunk was ever given
                // back, so this chunk was never readable. `write` does not read the
                // old bytes.
                unsafe { base.add(at).write(Page::new(state, zone_index)) };
            }
        }
        self.next = until;
    }

    /// Marks the chunk `Ready`. Panics unless every descriptor was written.
    pub fn publish(self) -> Published<'m, 'a> {
        assert_eq!(
            self.next, self.end,
            "publishing a chunk with unwritten descriptors"
        );
        self.claim.publish()
    }
}

/// A backing over memory that is already there: a slice of at least
/// [`Layout::memmap_descriptors`] descriptors, the first for
/// [`Layout::memmap_start`]. `populate` only checks the bounds. Fit for tests,
/// for small kernels that reserve the memmap statically, and for Miri.
pub struct SliceBacking<'m> {
    base: NonNull<Page>,
    len: usize,
    granularity: Granularity,
    _memory: core::marker::PhantomData<&'m mut [core::mem::MaybeUninit<Page>]>,
}

impl<'m> SliceBacking<'m> {
    /// A backing over `memory`, which holds the descriptors of pfns
    /// `memmap_start..memmap_start + memory.len()` of the layout it serves.
    pub fn new(memory: &'m mut [core::mem::MaybeUninit<Page>]) -> Self {
        SliceBacking {
            base: NonNull::new(memory.as_mut_ptr().cast()).unwrap_or(NonNull::dangling()),
            len: memory.len(),
            granularity: Granularity::Section,
            _memory: core::marker::PhantomData,
        }
    }

    /// The same, asked to populate in pieces of `granularity` (only checked: the
    /// memory is all there already).
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
}

// SAFETY: the backing never touches the memory itself; the allocator reads and writes
// it under the memmap invariant, and the exclusive borrow keeps everyone else out.
unsafe impl Sync for SliceBacking<'_> {}
// SAFETY: as above; the borrow moves with the backing.
unsafe impl Send for SliceBacking<'_> {}

// SAFETY: `base` is the start of one slice (aligned, since `MaybeUninit<Page>` has
// `Page`'s alignment) exclusively borrowed for `'m`, and `populate` succeeds only for
// pieces inside it; it never takes pages, and its granularity is fixed at creation.
unsafe impl MemmapBacking for SliceBacking<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        self.base
    }

    fn granularity(&self) -> Granularity {
        self.granularity
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        _: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        let start = layout.memmap_start().0;
        let inside = piece.start.0 >= start
            && piece
                .end
                .0
                .checked_sub(start)
                .is_some_and(|n| n <= self.len as u64);
        if !inside {
            return Err(BackingError {
                section: piece.section,
                reason: "the memmap slice is shorter than the layout's memmap",
            });
        }
        Ok(Populated::ELSEWHERE)
    }
}
