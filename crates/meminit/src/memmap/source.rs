//! The page source a backing may take pages from while it populates a section's
//! memmap: its own page tables, or the memmap itself, carved from the section.
//!
//! A kernel's [`crate::MemmapBacking::populate`] maps the memmap, and mapping needs
//! pages for page tables. It cannot ask the allocator for them: the allocator is
//! the one calling (and under [`crate::Strategy::Eager`] it does not exist yet).
//! So the allocator lends each `populate` of a section a [`PageSource`] over the
//! section's own usable pages. The pages it hands out are one contiguous range of
//! one usable run of the section, which the allocator records with the section's
//! memmap state (as it records [`crate::Populated::taken`]): they get reserved
//! descriptors and are never handed out while the section is in use.
//!
//! This module owns the choice of those pages and the bounds on them. It decides
//! nothing about what the backing does with them, writes no memory and knows
//! nothing of claims.

use core::ops::Range;

use crate::layout::Layout;
use crate::memmap::{Granularity, MemmapPiece};
use crate::section::MAX_TAKEN_OFFSET;
use crate::types::{Pfn, MAX_ORDER};

/// The most pages one `populate` may take from its [`PageSource`], alignment
/// padding included: one max-order block (4 MiB), enough for a section's 2 MiB of
/// memmap and the page tables that map it.
pub const MAX_SOURCE_PAGES: u64 = 1 << MAX_ORDER;

/// Why a [`PageSource`] could not hand out a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceError {
    /// The backing populates chunk by chunk ([`Granularity::Chunk`]): a chunk's
    /// pages cannot hold memmap or page tables, since the chunk must stay whole
    /// (it can be given back). Such a backing brings its own pages (a pool the
    /// layout reserves, as the guest's `memmap=chunk` does).
    ChunkGranularity {
        /// The section of the chunk being populated.
        section: usize,
    },
    /// The order asked for is above [`MAX_ORDER`].
    OrderTooLarge {
        /// The order asked for.
        order: u32,
    },
    /// No usable run of the section has a free, aligned block of that order after
    /// the pages already taken (they must stay one contiguous range).
    Exhausted {
        /// The section.
        section: usize,
        /// The order asked for.
        order: u32,
    },
    /// The block would take this `populate` past [`MAX_SOURCE_PAGES`].
    LimitReached {
        /// The section.
        section: usize,
        /// The order asked for.
        order: u32,
    },
}

impl SourceError {
    /// What went wrong, as a [`crate::BackingError::reason`].
    pub const fn reason(self) -> &'static str {
        match self {
            SourceError::ChunkGranularity { .. } => {
                "the page source has no pages for a backing that populates chunk by chunk"
            }
            SourceError::OrderTooLarge { .. } => {
                "the page source was asked for a block above the maximum order"
            }
            SourceError::Exhausted { .. } => {
                "the section has no usable aligned block left for the page source"
            }
            SourceError::LimitReached { .. } => {
                "the page source's limit of pages per populate was reached"
            }
        }
    }
}

impl core::error::Error for SourceError {}

impl core::fmt::Display for SourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SourceError::ChunkGranularity { section } => write!(
                f,
                "section {section}: {}",
                SourceError::ChunkGranularity { section }.reason()
            ),
            SourceError::OrderTooLarge { order } => write!(
                f,
                "the page source was asked for order {order}, above the maximum order {MAX_ORDER}"
            ),
            SourceError::Exhausted { section, order } => write!(
                f,
                "section {section} has no usable block of order {order} left for the page source"
            ),
            SourceError::LimitReached { section, order } => write!(
                f,
                "section {section}: a block of order {order} would take more than {MAX_SOURCE_PAGES} pages in one populate"
            ),
        }
    }
}

/// Pages of a section that its backing may use while it populates the section's
/// memmap: for the memmap itself, and for the page tables that map it.
///
/// [`take`](Self::take) hands out naturally aligned blocks, each right after the
/// previous one (the padding an alignment skips is taken too), all from one usable
/// run of the section: the first run that holds the first block asked for. Ask for
/// the largest block first (the memmap's 2 MiB page, order 9), then single pages
/// for tables, and nothing is wasted. At most [`MAX_SOURCE_PAGES`] pages per call.
///
/// What the source handed out is recorded as the section's taken pages, merged
/// with [`crate::Populated::taken`] (which may be empty, or the same or an adjacent
/// range: the two together must be one contiguous range). If `populate` fails, the
/// pages are not recorded and may be handed out again later: a backing that fails
/// must not keep using them (it may keep them linked only if a later `populate` of
/// the same section would take and use them the same way).
///
/// Under [`Granularity::Chunk`] the source hands out nothing
/// ([`SourceError::ChunkGranularity`]). The allocator never lends a source that
/// reaches past the section, and a source works before the allocator serves
/// anything (during [`crate::Strategy::Eager`] start-up).
#[derive(Debug)]
pub struct PageSource<'l> {
    layout: &'l Layout,
    piece: MemmapPiece,
    granularity: Granularity,
    /// The pages handed out so far: `start..next`.
    start: u64,
    next: u64,
    /// One past the end of the usable run they come from.
    run_end: u64,
}

impl<'l> PageSource<'l> {
    /// A source over the usable pages of `piece` (a section under
    /// [`Granularity::Section`]; under [`Granularity::Chunk`] it hands out
    /// nothing). Made by the allocator for each `populate`; a backing's tests may
    /// make their own.
    pub fn new(layout: &'l Layout, piece: MemmapPiece, granularity: Granularity) -> Self {
        PageSource {
            layout,
            piece,
            granularity,
            start: 0,
            next: 0,
            run_end: 0,
        }
    }

    /// A naturally aligned block of 2^`order` usable pages of the section, not
    /// handed out by this source before; its first pfn. The content of the pages
    /// is whatever the memory held: clear a page table before linking it.
    pub fn take(&mut self, order: u32) -> Result<Pfn, SourceError> {
        let section = self.piece.section;
        if self.granularity == Granularity::Chunk {
            return Err(SourceError::ChunkGranularity { section });
        }
        if order > MAX_ORDER {
            return Err(SourceError::OrderTooLarge { order });
        }
        let pages = 1u64 << order;
        let first = self.piece.start.0;
        // Offsets in the section from this on cannot be recorded (the taken range
        // must end below MAX_TAKEN_OFFSET).
        let limit = self
            .piece
            .end
            .0
            .min(first.saturating_add(MAX_TAKEN_OFFSET - 1));
        let block = if self.start == self.next {
            // Nothing taken yet: the first usable run that holds an aligned block.
            let found = self
                .layout
                .memory_runs(Pfn(first)..Pfn(limit))
                .filter(|r| !r.reserved)
                .find_map(|r| {
                    let (s, e) = (r.start.0.max(first), r.end.0.min(limit));
                    let block = s.checked_next_multiple_of(pages)?;
                    (block.checked_add(pages)? <= e).then_some((block, e))
                });
            let Some((block, run_end)) = found else {
                return Err(SourceError::Exhausted { section, order });
            };
            self.start = block;
            self.run_end = run_end;
            block
        } else {
            let block = self.next.next_multiple_of(pages);
            if block + pages > self.run_end {
                return Err(SourceError::Exhausted { section, order });
            }
            block
        };
        // A first block is at most one max-order block: never over the limit.
        if block + pages - self.start > MAX_SOURCE_PAGES {
            return Err(SourceError::LimitReached { section, order });
        }
        self.next = block + pages;
        Ok(Pfn(block))
    }

    /// The pfns handed out so far, alignment padding included (empty if none).
    pub fn taken(&self) -> Range<u64> {
        if self.start == self.next {
            0..0
        } else {
            self.start..self.next
        }
    }

    /// The piece whose memmap is being populated.
    pub fn piece(&self) -> MemmapPiece {
        self.piece
    }
}

/// `a` and `b` as one range, if they are one contiguous range (either may be
/// empty; they may overlap or touch).
pub(crate) fn merge(a: Range<u64>, b: Range<u64>) -> Option<Range<u64>> {
    if a.is_empty() {
        return Some(b);
    }
    if b.is_empty() {
        return Some(a);
    }
    (a.start <= b.end && b.start <= a.end).then(|| a.start.min(b.start)..a.end.max(b.end))
}
