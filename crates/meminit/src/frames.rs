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

use crate::allocator::Allocator;
use crate::memmap::MemmapBacking;
use crate::types::Constraint;
use crate::types::CpuId;
use crate::types::{NodeId, Pfn, PAGEBLOCK_ORDER};

/// Frames for the `x86_64` crate, from `cpu`'s cache, preferring `node`.
pub struct Frames<'r, 'a, B, R: RawMutex> {
    allocator: &'r Allocator<'a, B, R>,
    cpu: CpuId,
    node: NodeId,
    constraint: Constraint,
}

impl<'r, 'a, B: MemmapBacking, R: RawMutex> Frames<'r, 'a, B, R> {
    /// Frames from `allocator` on `cpu`, preferring `node`, within `constraint`.
    pub fn new(
        allocator: &'r Allocator<'a, B, R>,
        cpu: CpuId,
        node: NodeId,
        constraint: Constraint,
    ) -> Self {
        Frames {
            allocator,
            cpu,
            node,
            constraint,
        }
    }

    fn allocate<S: PageSize>(&self, order: u32) -> Option<PhysFrame<S>> {
        let pfn = self
            .allocator
            .alloc_on(self.cpu, order, self.constraint, self.node)
            .ok()?;
        PhysFrame::from_start_address(PhysAddr::try_new(pfn.checked_addr()?).ok()?).ok()
    }

    fn deallocate<S: PageSize>(&self, frame: PhysFrame<S>, order: u32) {
        let Some(pfn) = Pfn::from_addr(frame.start_address().as_u64()) else {
            return;
        };
        // A frame that is not a block of ours allocated with this order is refused
        // with nothing changed; the trait gives no way to report it.
        let _ = self.allocator.free_order_on(self.cpu, pfn, order);
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
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        self.deallocate(frame, 0);
    }
}

impl<B: MemmapBacking, R: RawMutex> FrameDeallocator<Size2MiB> for Frames<'_, '_, B, R> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size2MiB>) {
        self.deallocate(frame, PAGEBLOCK_ORDER);
    }
}
