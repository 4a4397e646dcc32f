//! The `x86_64` crate's frame-allocator traits over a CPU's cache (feature
//! `x86_64`): `cargo test -p meminit --features x86_64 --test frames`.
#![cfg(feature = "x86_64")]

mod common;

use std::collections::HashSet;

use common::*;
use meminit::frames::Frames;
use meminit::NodeId;
use meminit::{Constraint, CpuId, Strategy};
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size2MiB, Size4KiB};

const MIB: u64 = 1 << 20;

#[test]
fn page_table_frames_come_from_a_cpus_cache_and_go_back() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let mut frames = Frames::new(a, CpuId(1), NodeId(0), Constraint::Any);
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
        let mut frames = Frames::new(a, CpuId(0), NodeId(0), Constraint::Dma);
        let mut n = 0;
        while FrameAllocator::<Size4KiB>::allocate_frame(&mut frames).is_some() {
            n += 1;
        }
        assert_eq!(
            n,
            a.zone(NodeId(0), meminit::ZoneType::Dma).unwrap().managed
        );
    });
}
