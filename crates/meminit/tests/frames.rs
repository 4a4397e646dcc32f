//! The `x86_64` crate's frame-allocator traits over a CPU's cache (feature
//! `x86_64`): `cargo test -p meminit --features x86_64 --test frames`.
#![cfg(feature = "x86_64")]

mod common;

use std::collections::HashSet;

use common::*;
use meminit::frames::{Frames, FramesError};
use meminit::NodeId;
use meminit::{AllocError, Constraint, CpuId, FreeError, Strategy};
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size2MiB, Size4KiB};

const MIB: u64 = 1 << 20;

#[test]
fn page_table_frames_come_from_a_cpus_cache_and_go_back() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let mut frames = Frames::new(a, CpuId(1), NodeId(0), Constraint::Any).unwrap();
        let small: Vec<PhysFrame<Size4KiB>> = (0..300)
            .map(|_| FrameAllocator::<Size4KiB>::allocate_frame(&mut frames).unwrap())
            .collect();
        let distinct: HashSet<u64> = small.iter().map(|f| f.start_address().as_u64()).collect();
        assert_eq!(distinct.len(), small.len());
        let big: PhysFrame<Size2MiB> = frames.allocate_frame().unwrap();
        assert_eq!(big.start_address().as_u64() % (2 * MIB), 0);
        for f in small {
            // SAFETY: the trait's contract: each frame is unused from here on.
            unsafe { FrameDeallocator::<Size4KiB>::deallocate_frame(&mut frames, f) };
        }
        // SAFETY: as above.
        unsafe { frames.deallocate_frame(big) };
        init_all(a);
        check_all_free(a);
    });
}

#[test]
fn an_exhausted_zone_gives_no_frame() {
    let l = simple(8 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let mut frames = Frames::new(a, CpuId(0), NodeId(0), Constraint::Dma).unwrap();
        let mut n = 0;
        while FrameAllocator::<Size4KiB>::allocate_frame(&mut frames).is_some() {
            n += 1;
        }
        assert_eq!(
            n,
            a.zone(NodeId(0), meminit::ZoneType::Dma).unwrap().managed
        );
        // The trait could only say `None`; the adapter keeps why.
        assert!(matches!(
            frames.last_error(),
            Some(FramesError::Alloc(AllocError::OutOfMemory { .. }))
        ));
    });
}

#[test]
fn a_cpu_without_a_cache_is_refused_up_front_and_a_bad_free_is_kept() {
    let l = simple(16 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let unknown = Frames::new(a, CpuId(99), NodeId(0), Constraint::Any);
        assert!(matches!(unknown, Err(AllocError::UnknownCpu { .. })));
        let no_node = Frames::new(a, CpuId(0), NodeId(7), Constraint::Any);
        assert!(matches!(no_node, Err(AllocError::UnknownNode { .. })));
        let mut frames = Frames::new(a, CpuId(0), NodeId(0), Constraint::Any).unwrap();
        let f: PhysFrame<Size4KiB> = frames.allocate_frame().unwrap();
        // SAFETY: the frame is unused from here on.
        unsafe { frames.deallocate_frame(f) };
        assert_eq!(frames.take_error(), None);
        // SAFETY: a double free: the allocator refuses it and changes nothing.
        unsafe { frames.deallocate_frame(f) };
        assert!(matches!(
            frames.take_error(),
            Some(FramesError::Free(FreeError::DoubleFree { .. }))
        ));
    });
}
