//! Unit tests of the lists per class: which list each block is on as chunks take
//! a class and lose it, with the allocator's own zones over a slice memmap.

use super::{block_order, FreeArea, WHOLE};
use crate::allocator::AllocRequest;
use crate::types::{MobilityClass, NodeId, Pfn, ZoneType};
use crate::{
    AllocFlags, Allocator, Config, CpuCache, LayoutBuilder, Page, RangeKind, SectionSlot,
    SliceBacking, Strategy,
};

const MIB: u64 = 1 << 20;
const UNMOVABLE: usize = MobilityClass::Unmovable as usize;
const MOVABLE: usize = MobilityClass::Movable as usize;

type Alloc<'a> = Allocator<'a, SliceBacking<'a>, parking_lot::RawMutex>;

/// An eager allocator over `[start, end)` on node 0, in 4 MiB sections.
fn with_allocator(start: u64, end: u64, f: impl FnOnce(&Alloc<'_>)) {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(start, end, RangeKind::Usable, NodeId(0));
    let layout = b.build().unwrap();
    let mut memmap = Box::<[Page]>::new_uninit_slice(layout.memmap_descriptors() as usize);
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let a = Allocator::new(
        layout,
        SliceBacking::new(&mut memmap),
        &slots,
        &cpus,
        Config::new(Strategy::Eager),
    )
    .unwrap();
    f(&a);
}

/// Runs `f` on the DMA zone's lists (node 0).
fn dma<T>(a: &Alloc<'_>, f: impl FnOnce(&mut FreeArea) -> T) -> T {
    a.zones[ZoneType::Dma as usize].with_free(f)
}

fn take(a: &Alloc<'_>, order: u32, flags: AllocFlags) -> Pfn {
    a.alloc_traced(AllocRequest::order(order).flags(flags))
        .unwrap()
        .0
}

fn list_of_block(a: &Alloc<'_>, pfn: u64) -> usize {
    a.page(Pfn(pfn)).unwrap().list()
}

#[test]
fn a_default_chunk_takes_a_class_and_gives_it_up_as_one_block() {
    // Chunks 1 and 2, whole: one max-order block each.
    with_allocator(4 * MIB, 12 * MIB, |a| {
        assert_eq!(dma(a, |f| f.list_pages()), [0, 0, 2048]);
        let p = take(a, 0, AllocFlags::MOVABLE);
        // The split halves of the chunk's block went straight to the movable
        // lists; the other chunk is still wholly free.
        assert_eq!(dma(a, |f| f.list_pages()), [0, 1023, 1024]);
        let chunk = a.memmap.chunk_of(p.0);
        let used = a.memmap.sections().chunk_use(chunk);
        assert_eq!(
            (used.pages(), used.class()),
            (1, Some(MobilityClass::Movable))
        );
        assert_eq!(list_of_block(a, p.0 ^ 1), MOVABLE);
        // An unmovable block comes from the other chunk, not the movable one.
        let q = take(a, 3, AllocFlags::NONE);
        assert_ne!(a.memmap.chunk_of(q.0), chunk);
        assert_eq!(dma(a, |f| f.list_pages()), [1016, 1023, 0]);
        a.free(p).unwrap();
        assert_eq!(dma(a, |f| f.list_pages()), [1016, 0, 1024]);
        assert_eq!(list_of_block(a, chunk as u64 * 1024), WHOLE);
        assert_eq!(a.memmap.sections().chunk_use(chunk).class(), None);
        a.free(q).unwrap();
        assert_eq!(dma(a, |f| f.list_pages()), [0, 0, 2048]);
        assert_eq!(a.miscounted_chunks(), 0);
    });
}

#[test]
fn a_chunk_with_a_hole_moves_its_other_blocks_with_it() {
    // Chunk 0 from 1 MiB: an order-8 block at 256 and an order-9 one at 512.
    with_allocator(MIB, 4 * MIB, |a| {
        assert_eq!(dma(a, |f| f.list_pages()), [0, 0, 768]);
        let p = take(a, 0, AllocFlags::MOVABLE);
        // The smallest block that serves was split; the order-9 block of the
        // same chunk, untouched, moved to the movable lists with it.
        assert!((256..512).contains(&p.0));
        assert_eq!(list_of_block(a, 512), MOVABLE);
        assert_eq!(dma(a, |f| f.list_pages()), [0, 767, 0]);
        let q = take(a, 9, AllocFlags::MOVABLE);
        assert_eq!(q, Pfn(512));
        a.free(p).unwrap();
        // Still in use: the freed page's block stays on the movable lists.
        assert_eq!(list_of_block(a, 256), MOVABLE);
        a.free(q).unwrap();
        assert_eq!(list_of_block(a, 256), WHOLE);
        assert_eq!(list_of_block(a, 512), WHOLE);
        assert_eq!(dma(a, |f| f.list_pages()), [0, 0, 768]);
        assert_eq!(a.miscounted_chunks(), 0);
    });
}

#[test]
fn isolation_counts_without_a_class_and_the_last_return_frees_the_chunk() {
    with_allocator(MIB, 4 * MIB, |a| {
        let mm = &a.memmap;
        let mut out = [(0, 0, false); 1];
        // Free page reporting takes the order-9 block away.
        assert_eq!(dma(a, |f| f.isolate_unreported(mm, 9, &mut out)), 1);
        let used = mm.sections().chunk_use(0);
        assert_eq!((used.pages(), used.class()), (512, None));
        // A movable allocation meanwhile: the chunk is movable now.
        let p = take(a, 0, AllocFlags::MOVABLE);
        assert_eq!(
            mm.sections().chunk_use(0).class(),
            Some(MobilityClass::Movable)
        );
        a.free(p).unwrap();
        // Its last allocated page is back, but the isolated block is not: the
        // chunk keeps its class.
        let used = mm.sections().chunk_use(0);
        assert_eq!(
            (used.pages(), used.class()),
            (512, Some(MobilityClass::Movable))
        );
        assert_eq!(list_of_block(a, 256), MOVABLE);
        let zone = a.zones[ZoneType::Dma as usize].span.start_pfn;
        let index = crate::page::zone_index(NodeId(0), ZoneType::Dma);
        assert_eq!(zone.0, 256);
        dma(a, |f| {
            f.put_back(mm, out[0].0, out[0].1, index, true, false)
        });
        assert_eq!(mm.sections().chunk_use(0), crate::section::ChunkUse::FREE);
        assert_eq!(list_of_block(a, 256), WHOLE);
        assert_eq!(list_of_block(a, 512), WHOLE);
        assert_eq!(a.miscounted_chunks(), 0);
    });
}

#[test]
fn a_steal_takes_the_other_class_s_largest_block() {
    with_allocator(4 * MIB, 8 * MIB, |a| {
        let mm = &a.memmap;
        let p = take(a, 0, AllocFlags::MOVABLE);
        // Nothing unmovable nor wholly free is left: without stealing, nothing.
        assert_eq!(
            dma(a, |f| f.take(mm, 0, MobilityClass::Unmovable, false)),
            None
        );
        let q = Pfn(dma(a, |f| f.take(mm, 0, MobilityClass::Unmovable, true)).unwrap());
        // The order-9 half, split at its start: the largest block there was.
        assert_eq!(q.0, 1024 + 512);
        assert_eq!(dma(a, |f| f.steals()), 1);
        assert_eq!(mm.sections().chunk_use(1).pages(), 2);
        assert_eq!(
            mm.sections().chunk_use(1).class(),
            Some(MobilityClass::Movable)
        );
        assert_eq!(list_of_block(a, 1024 + 768), MOVABLE);
        assert_eq!(
            a.page(q).unwrap().mobility(),
            Some(MobilityClass::Unmovable)
        );
        assert_eq!(dma(a, |f| f.list_pages())[UNMOVABLE], 0);
        a.free(q).unwrap();
        a.free(p).unwrap();
        assert_eq!(dma(a, |f| f.list_pages()), [0, 0, 1024]);
        assert_eq!(a.miscounted_chunks(), 0);
    });
}

#[test]
fn block_orders() {
    assert_eq!(block_order(0, 1 << 20), 10);
    assert_eq!(block_order(1, 100), 0);
    assert_eq!(block_order(4096, 3), 1);
    assert_eq!(block_order(2048, 2048), 10);
    assert_eq!(block_order(1024 + 512, 4096), 9);
}
