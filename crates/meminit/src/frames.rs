//! The `x86_64` crate's frame-allocator traits over meminit (feature `x86_64`).
//!
//! Many Rust kernels ask for page-table frames through
//! `x86_64::structures::paging::FrameAllocator`. [`Frames`] serves those requests
//! from one CPU's cache of an [`Allocator`], for one node and zone constraint:
//! 4 KiB frames are order-0 blocks, 2 MiB frames pageblock-order blocks (both
//! cached orders). 1 GiB frames are above the largest block and not offered.
//!
//! This module owns only the translation between the two APIs; it allocates
//! nothing itself and adds no unsafe code beyond the traits' own `unsafe impl`s.

use lock_api::RawMutex;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, PageSize, PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::PhysAddr;

use crate::allocator::{AllocRequest, Allocator, FreeRequest};
use crate::error::{AllocError, FreeError};
use crate::memmap::MemmapBacking;
use crate::types::Constraint;
use crate::types::CpuId;
use crate::types::{NodeId, Pfn, PAGEBLOCK_ORDER};

/// Frames for the `x86_64` crate, from `cpu`'s cache, preferring `node`.
///
/// The traits answer a failed allocation with `None` and a refused free with
/// nothing: [`Frames::last_error`] keeps what went wrong, so that an
/// out-of-memory is told apart from a bad CPU id or a bad free.
pub struct Frames<'r, 'a, B, R: RawMutex> {
    allocator: &'r Allocator<'a, B, R>,
    cpu: CpuId,
    node: NodeId,
    constraint: Constraint,
    last_error: Option<FramesError>,
}

/// What the last refused request of a [`Frames`] was refused for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramesError {
    /// An allocation failed.
    Alloc(AllocError),
    /// A deallocation was refused (nothing was changed).
    Free(FreeError),
    /// The frame's address is not a page frame the allocator knows.
    BadAddress(u64),
}

impl core::error::Error for FramesError {}

impl core::fmt::Display for FramesError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FramesError::Alloc(e) => write!(f, "frame allocation failed: {e}"),
            FramesError::Free(e) => write!(f, "frame deallocation refused: {e}"),
            FramesError::BadAddress(addr) => {
                write!(f, "{addr:#x} is not the address of a page frame")
            }
        }
    }
}

impl<'r, 'a, B: MemmapBacking, R: RawMutex> Frames<'r, 'a, B, R> {
    /// Frames from `allocator` on `cpu`, preferring `node`, within `constraint`.
    /// A `cpu` with no cache is refused here ([`AllocError::UnknownCpu`]), not
    /// at the first allocation, where it would look like out-of-memory.
    pub fn new(
        allocator: &'r Allocator<'a, B, R>,
        cpu: CpuId,
        node: NodeId,
        constraint: Constraint,
    ) -> Result<Self, AllocError> {
        allocator.cache(cpu)?;
        if node.index() >= allocator.layout().node_count() {
            return Err(AllocError::UnknownNode { node });
        }
        Ok(Frames {
            allocator,
            cpu,
            node,
            constraint,
            last_error: None,
        })
    }

    /// Why the last allocation returned `None` or the last deallocation was
    /// refused, if one was; cleared by [`Frames::take_error`].
    pub fn last_error(&self) -> Option<FramesError> {
        self.last_error
    }

    /// [`last_error`](Self::last_error), clearing it.
    pub fn take_error(&mut self) -> Option<FramesError> {
        self.last_error.take()
    }

    fn allocate<S: PageSize>(&mut self, order: u32) -> Option<PhysFrame<S>> {
        let request = AllocRequest::order(order)
            .on(self.cpu)
            .within(self.constraint)
            .node(self.node);
        let pfn = match self.allocator.alloc(request) {
            Ok(pfn) => pfn,
            Err(e) => {
                self.last_error = Some(FramesError::Alloc(e));
                return None;
            }
        };
        // A block's address is below 2^52 and aligned to its size: a frame.
        let frame = pfn
            .checked_addr()
            .and_then(|addr| PhysAddr::try_new(addr).ok())
            .and_then(|addr| PhysFrame::from_start_address(addr).ok());
        if frame.is_none() {
            let _ = self.allocator.free(FreeRequest::pfn(pfn).on(self.cpu));
            self.last_error = Some(FramesError::BadAddress(pfn.0));
        }
        frame
    }

    fn deallocate<S: PageSize>(&mut self, frame: PhysFrame<S>, order: u32) {
        let addr = frame.start_address().as_u64();
        let Some(pfn) = Pfn::from_addr(addr) else {
            self.last_error = Some(FramesError::BadAddress(addr));
            return;
        };
        // A frame that is not a block of ours allocated with this order is refused
        // with nothing changed, and kept for `last_error`.
        let free = FreeRequest::pfn(pfn).on(self.cpu).order(order);
        if let Err(e) = self.allocator.free(free) {
            self.last_error = Some(FramesError::Free(e));
        }
    }
}

// SAFETY: meminit hands out a block at most once at a time (its claim, free-list
// and cache protocols; the descriptor's state decides every free), so every frame
// returned is unused until it is deallocated.
unsafe impl<B: MemmapBacking, R: RawMutex> FrameAllocator<Size4KiB> for Frames<'_, '_, B, R> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.allocate(0)
    }
}

// SAFETY: as for 4 KiB frames; a pageblock-order block is 2 MiB, aligned to its
// size.
unsafe impl<B: MemmapBacking, R: RawMutex> FrameAllocator<Size2MiB> for Frames<'_, '_, B, R> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size2MiB>> {
        self.allocate(PAGEBLOCK_ORDER)
    }
}

impl<B: MemmapBacking, R: RawMutex> FrameDeallocator<Size4KiB> for Frames<'_, '_, B, R> {
    /// Frees the frame through this CPU's cache; a refused free is kept in
    /// [`Frames::last_error`].
    ///
    /// # Safety
    ///
    /// The trait's: `frame` is not in use any more. A frame this allocator did
    /// not hand out, or frees twice, is refused and changes nothing.
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        self.deallocate(frame, 0);
    }
}

impl<B: MemmapBacking, R: RawMutex> FrameDeallocator<Size2MiB> for Frames<'_, '_, B, R> {
    /// As for 4 KiB frames, a pageblock-order block.
    ///
    /// # Safety
    ///
    /// The trait's: `frame` is not in use any more.
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size2MiB>) {
        self.deallocate(frame, PAGEBLOCK_ORDER);
    }
}
