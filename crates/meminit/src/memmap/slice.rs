//! [`SliceBacking`]: a backing over memory that is already there, for tests, Miri,
//! and small kernels that reserve their memmap statically.
//!
//! It owns an exclusive borrow of the memory and never touches it; its unsafe
//! impls rest on that borrow. [`StaticMemmap`] is such memory in a `static`,
//! lent out once.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use super::{BackingError, Granularity, MemmapBacking, MemmapPiece, Populated};
use crate::layout::Layout;
use crate::memmap::PageSource;
use crate::page::Page;

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

/// `N` descriptors in a `static`, for a small kernel that reserves its memmap in
/// its image (64 bytes per page: 1 MiB of descriptors for 64 MiB of memory) and
/// has no heap: [`StaticMemmap::take`] lends them, once, as a [`SliceBacking`].
///
/// ```
/// use meminit::StaticMemmap;
/// static MEMMAP: StaticMemmap<1024> = StaticMemmap::new();
/// assert!(MEMMAP.take().is_some());
/// assert!(MEMMAP.take().is_none()); // lent once
/// ```
pub struct StaticMemmap<const N: usize> {
    taken: AtomicBool,
    memory: UnsafeCell<[MaybeUninit<Page>; N]>,
}

// SAFETY: the memory is reached only through `take`, which hands out the one
// exclusive borrow of it to the single caller that flips `taken`.
unsafe impl<const N: usize> Sync for StaticMemmap<N> {}

impl<const N: usize> StaticMemmap<N> {
    /// `N` descriptors, not yet written.
    pub const fn new() -> Self {
        StaticMemmap {
            taken: AtomicBool::new(false),
            memory: UnsafeCell::new([const { MaybeUninit::uninit() }; N]),
        }
    }

    /// The descriptors as a backing, the first time; `None` after.
    pub fn take(&'static self) -> Option<SliceBacking<'static>> {
        // Relaxed: the swap alone decides who gets the borrow; the memory holds
        // nothing to publish (it is uninitialised until the allocator writes it).
        if self.taken.swap(true, Ordering::Relaxed) {
            return None;
        }
        // SAFETY: only the caller that flipped `taken` reaches here, once, so
        // this is the only reference to the memory, for as long as the static
        // lives.
        let memory = unsafe { &mut *self.memory.get() };
        Some(SliceBacking::new(memory))
    }
}

impl<const N: usize> Default for StaticMemmap<N> {
    fn default() -> Self {
        Self::new()
    }
}
