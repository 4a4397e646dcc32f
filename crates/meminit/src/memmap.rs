//! The descriptor array (memmap) and the backing that provides its memory.
//!
//! This is the unsafe core of the crate. The memmap is one virtual range indexed by
//! pfn (vmemmap style): the descriptor of pfn `p` lives at `base + p`. Memory under
//! a section's part of it is asked of the [`MemmapBacking`] the first time that
//! section is initialised, exactly once, by the one holder of the section's
//! [`Claim`]. The module keeps one invariant, on which every `unsafe` block in it
//! relies:
//!
//! > **A descriptor is read only in a section whose state is `Ready`, and a section
//! > becomes `Ready` only after its memmap was populated and every one of its
//! > descriptors written.**
//!
//! The `SectionWriter` enforces the second half by construction: it is made only
//! from a claim whose populate succeeded, it writes descriptors strictly in pfn
//! order, and it publishes only when it has reached the end of the section.
//!
//! Policy (what each descriptor should say, which list a page goes on) is not here.

use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::layout::{Layout, Pfn};
use crate::page::{Page, PageState};
use crate::section::{Claim, Published, SectionState, Sections};

/// Which section a backing is asked to populate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionPfns {
    /// The section's index.
    pub index: usize,
    /// Its first pfn.
    pub start: Pfn,
    /// One past its last pfn.
    pub end: Pfn,
}

impl SectionPfns {
    /// Bytes of memmap that hold this section's descriptors.
    pub const fn memmap_bytes(&self) -> u64 {
        (self.end.0 - self.start.0) * core::mem::size_of::<Page>() as u64
    }
}

/// What a backing did to make a section's memmap accessible.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Populated {
    /// Usable pages of the section itself that now hold its memmap (Linux's
    /// "memmap on memory"). They get reserved descriptors and are never handed out.
    /// Empty when the memory came from elsewhere.
    pub taken: Range<u64>,
}

impl Populated {
    /// The memmap's memory came from outside the section.
    pub const ELSEWHERE: Populated = Populated { taken: 0..0 };
}

/// Why a backing could not populate a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingError {
    /// The section that could not be populated.
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

/// Provides the memory under the memmap, one section at a time.
///
/// A host backs the memmap with address space reserved but not committed; a kernel
/// maps the range section by section, perhaps with the section's own first pages
/// (see [`Populated::taken`]).
///
/// # Safety
///
/// An implementation promises that:
/// - [`descriptors`](Self::descriptors) returns the same pointer every time, aligned
///   to 64 bytes, at the start of one address range (one allocated object, in Rust's
///   terms) large enough for [`Layout::memmap_bytes`] bytes;
/// - once [`populate`](Self::populate) has returned `Ok` for a section, the
///   descriptors `base + start .. base + end` of that section are valid for reads and
///   writes, and stay so, untouched by anyone but the allocator, for as long as the
///   backing lives;
/// - [`Populated::taken`] lies inside the section, and the backing asks for it only
///   pages that the layout says are usable.
///
/// The allocator calls `populate` for a section only while it holds the section's
/// claim (so from one thread at a time), never for a section without present
/// pages, and never again once a call has succeeded. A call that fails gives the
/// section back; a later claimant may ask again.
pub unsafe trait MemmapBacking {
    /// The address of pfn 0's descriptor.
    fn descriptors(&self) -> NonNull<Page>;

    /// Makes the memmap of `section` accessible. Its content may be anything: every
    /// descriptor is written before it is read.
    fn populate(&self, section: SectionPfns, layout: &Layout) -> Result<Populated, BackingError>;
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
        }
    }
}

/// The descriptor array and the state of its sections.
pub(crate) struct Memmap<'a, B> {
    backing: B,
    base: NonNull<Page>,
    sections: Sections<'a>,
    section_shift: u32,
    populated_bytes: AtomicU64,
}

// SAFETY: the raw `base` pointer is only dereferenced under the module invariant
// (Ready sections, or a section owned through a `Claim`); descriptors are atomics,
// and the backing is required to be shareable (`B: Sync`).
unsafe impl<B: Sync> Sync for Memmap<'_, B> {}
// SAFETY: as above; moving the memmap moves the ownership of the backing with it.
unsafe impl<B: Send> Send for Memmap<'_, B> {}

impl<'a, B: MemmapBacking> Memmap<'a, B> {
    /// A memmap over `backing` for `layout`, with section states in `sections`.
    pub fn new(backing: B, sections: Sections<'a>, layout: &Layout) -> Self {
        let base = backing.descriptors();
        assert!(
            base.as_ptr().is_aligned(),
            "MemmapBacking::descriptors must be 64-byte aligned"
        );
        Memmap {
            backing,
            base,
            sections,
            section_shift: layout.section_shift(),
            populated_bytes: AtomicU64::new(0),
        }
    }

    /// The section states.
    pub fn sections(&self) -> &Sections<'a> {
        &self.sections
    }

    /// The backing.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// Bytes of memmap populated so far.
    pub fn populated_bytes(&self) -> u64 {
        // Relaxed: a statistic, ordered by nothing.
        self.populated_bytes.load(Relaxed)
    }

    /// The descriptor of `pfn`, if its section is `Ready`.
    #[inline]
    pub fn page(&self, pfn: u64) -> Result<&Page, LookupError> {
        let index = (pfn >> self.section_shift) as usize;
        match self.sections.state(index) {
            SectionState::Ready => {
                // SAFETY: the section is Ready (seen with Acquire), so by the module
                // invariant its memmap is populated and this descriptor written; the
                // backing keeps that memory valid for as long as `self` lives.
                Ok(unsafe { &*self.base.as_ptr().add(pfn as usize) })
            }
            SectionState::Absent => Err(LookupError::NotPresent { pfn: Pfn(pfn) }),
            SectionState::Uninit => Err(LookupError::Uninitialised { pfn: Pfn(pfn) }),
            SectionState::Initialising => Err(LookupError::Initialising { pfn: Pfn(pfn) }),
        }
    }

    /// Populates the memmap of the claimed section. On failure the claim is dropped,
    /// which gives the section back.
    pub fn populate<'m>(
        &'m self,
        claim: Claim<'m, 'a>,
        layout: &Layout,
    ) -> Result<SectionWriter<'m, 'a, B>, BackingError> {
        assert!(self.sections.owns(&claim), "claim from another memmap");
        let (start, end) = layout.section_pfns(claim.index());
        let section = SectionPfns {
            index: claim.index(),
            start: Pfn(start),
            end: Pfn(end),
        };
        let populated = self.backing.populate(section, layout)?;
        let taken = populated.taken;
        let taken_is_usable = taken.is_empty()
            || (start <= taken.start
                && taken.end <= end
                && layout
                    .present_runs(taken.start, taken.end)
                    .filter(|r| !r.reserved)
                    .map(|r| r.end - r.start)
                    .sum::<u64>()
                    == taken.end - taken.start);
        if !taken_is_usable {
            return Err(BackingError {
                section: claim.index(),
                reason: "the backing took pages that are not usable memory of the section",
            });
        }
        // Relaxed: a statistic.
        self.populated_bytes
            .fetch_add(section.memmap_bytes(), Relaxed);
        Ok(SectionWriter {
            memmap: self,
            claim,
            next: start,
            end,
            taken,
        })
    }
}

/// Writes the descriptors of one claimed, populated section, in pfn order, then
/// publishes it.
pub(crate) struct SectionWriter<'m, 'a, B> {
    memmap: &'m Memmap<'a, B>,
    claim: Claim<'m, 'a>,
    /// The next pfn to write.
    next: u64,
    /// One past the section's last pfn.
    end: u64,
    taken: Range<u64>,
}

impl<'m, 'a, B> SectionWriter<'m, 'a, B> {
    /// The pages the backing took for the memmap.
    pub fn taken(&self) -> Range<u64> {
        self.taken.clone()
    }

    /// Writes descriptors for the pfns from where the last run ended up to `until`,
    /// each in `state` for zone
    /// `zone_index`. Panics if `until` is past the section.
    #[inline]
    pub fn write_run(&mut self, until: u64, state: PageState, zone_index: u32) {
        assert!(
            self.next <= until && until <= self.end,
            "descriptor run outside the claimed section"
        );
        let base = self.memmap.base.as_ptr();
        for pfn in self.next..until {
            // SAFETY: `pfn` lies in the claimed section (checked above), whose memmap
            // the backing populated (a writer exists only after `populate`
            // succeeded); the claim makes this thread its only writer and no one
            // reads it before `publish`. `write` does not read the old bytes.
            unsafe { base.add(pfn as usize).write(Page::new(state, zone_index)) };
        }
        self.next = until;
    }

    /// Marks the section `Ready`. Panics unless every descriptor was written.
    pub fn publish(self) -> Published<'m, 'a> {
        assert_eq!(
            self.next, self.end,
            "publishing a section with unwritten descriptors"
        );
        self.claim.publish()
    }
}

/// A backing over memory that is already there: a slice of at least
/// [`Layout::memmap_bytes`] bytes. `populate` only checks the bounds. Fit for tests,
/// for small kernels that reserve the memmap statically, and for Miri.
pub struct SliceBacking<'m> {
    base: NonNull<Page>,
    len: usize,
    _memory: core::marker::PhantomData<&'m mut [core::mem::MaybeUninit<Page>]>,
}

impl<'m> SliceBacking<'m> {
    /// A backing over `memory`, which holds the descriptors of pfns
    /// `0..memory.len()`.
    pub fn new(memory: &'m mut [core::mem::MaybeUninit<Page>]) -> Self {
        SliceBacking {
            base: NonNull::new(memory.as_mut_ptr().cast()).unwrap_or(NonNull::dangling()),
            len: memory.len(),
            _memory: core::marker::PhantomData,
        }
    }
}

// SAFETY: the backing never touches the memory itself; the allocator reads and writes
// it under the memmap invariant, and the exclusive borrow keeps everyone else out.
unsafe impl Sync for SliceBacking<'_> {}
// SAFETY: as above; the borrow moves with the backing.
unsafe impl Send for SliceBacking<'_> {}

// SAFETY: `base` is the start of one slice (aligned, since `MaybeUninit<Page>` has
// `Page`'s alignment) exclusively borrowed for `'m`, and `populate` succeeds only for
// sections inside it; it never takes pages of a section.
unsafe impl MemmapBacking for SliceBacking<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        self.base
    }

    fn populate(&self, section: SectionPfns, _: &Layout) -> Result<Populated, BackingError> {
        if section.end.0 as usize > self.len {
            return Err(BackingError {
                section: section.index,
                reason: "the memmap slice is shorter than the layout's memmap",
            });
        }
        Ok(Populated::ELSEWHERE)
    }
}
