//! The backing contract: the types a backing and the allocator speak in (pieces,
//! granularity, what populate did, errors) and the unsafe trait whose promises the
//! rest of [`crate::memmap`] relies on.
//!
//! This module defines no behaviour and holds no `unsafe` code of its own; it only
//! states, in [`MemmapBacking`]'s `# Safety` section, what an implementation must
//! guarantee.

use core::ops::Range;
use core::ptr::NonNull;

use crate::layout::Layout;
use crate::memmap::PageSource;
use crate::page::Page;
use crate::types::Pfn;

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
/// `populate`, `accept`, `depopulate` and `zero` should not call the allocator.
/// If they do (on the same context, as [`crate::Config::context`] names it), the
/// call is served only from initialised free memory: where it would have to
/// initialise a chunk or wait (for a chunk, a section's memmap, or blocks out
/// for reporting), it fails with [`crate::AllocError::Reentrant`] (or
/// [`LookupError::Reentrant`], [`crate::ChunkError::Reentrant`]) rather than wait
/// for what its own caller holds: the chunk it initialises, the chunk or
/// section it gives back. `reuse_reported` runs under a zone lock and must not
/// call the allocator at all.
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

    /// Whether memmap that [`populate`](Self::populate) has just made accessible
    /// is likely in the caches of the CPU that called it: `true` if `populate`
    /// writes it (a host's `MADV_POPULATE_WRITE`, a kernel that zeroes the pages
    /// it maps) or a hypervisor zeroes it on its first touch (a guest whose
    /// memmap lives on memory it has never touched). The descriptors written right
    /// after (the chunk's, and in a pass over a section, the rest of the
    /// section's) then use ordinary stores, which find the lines in cache; with
    /// `false` (the default: memory that may have sat untouched for long, as on
    /// bare metal) non-temporal stores, which write a line without reading it
    /// first. A wrong answer costs time, never correctness. Must return the same
    /// value every time.
    fn populate_leaves_memmap_cached(&self) -> bool {
        false
    }

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
    ///
    /// Start-up and the deferred workers claim chunks in runs (a section's, or
    /// up to [`crate::WORKER_RUN`] of them) and accept each chunk of a run
    /// before any of them is published: while `accept` runs, the run's other
    /// chunks are `Initialising`. A call back into the allocator from here is
    /// served from memory initialised before; where it would need one of those
    /// chunks it is refused with a [`crate::Config::context`], and waits for
    /// ever without one.
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
    /// The look-up was made from inside a callback (the backing's, or a
    /// reporter's, on the same [`crate::Config::context`]) and would have had to
    /// initialise or wait for the chunk.
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
                "the descriptor of {pfn} was asked for from inside a callback of the allocator (its backing or reporter), and its chunk is not initialised"
            ),
        }
    }
}
