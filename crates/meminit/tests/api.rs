//! The public surface as an embedder meets it: slots lent by shared reference and
//! owned by one allocator at a time, free without the order, node and pfn types,
//! and a memmap that starts at the first present section.

#![cfg(not(loom))]

mod common;

use std::mem::MaybeUninit;

use common::*;
use meminit::NodeId;
use meminit::{
    AllocRequest, Allocator, Config, CpuCache, CpuId, FreeError, FreeRequest, InitError, Page, Pfn,
    SectionSlot, SliceBacking, Strategy,
};

const MIB: u64 = 1 << 20;

fn memmap_for(layout: &meminit::Layout) -> Box<[MaybeUninit<Page>]> {
    Box::new_uninit_slice(layout.memmap_descriptors() as usize)
}

/// An allocator of `strategy` over `layout`, a [`SliceBacking`] over `memmap`, and
/// the slots and caches given.
fn start<'a>(
    layout: &meminit::Layout,
    memmap: &'a mut [MaybeUninit<Page>],
    slots: &'a [SectionSlot],
    cpus: &'a [CpuCache<parking_lot::RawMutex>],
    strategy: Strategy,
) -> Result<Alloc<'a>, InitError> {
    Allocator::new(
        layout.clone(),
        SliceBacking::new(memmap),
        slots,
        cpus,
        Config::new(strategy),
    )
}

/// `n` fresh section slots.
fn slots(n: usize) -> Vec<SectionSlot> {
    (0..n).map(|_| SectionSlot::new()).collect()
}

/// A kernel keeps its slots in a plain `static`: no `static mut`, no lock.
static STATIC_SLOTS: [SectionSlot; 16] = [const { SectionSlot::new() }; 16];

#[test]
fn slots_are_lent_by_shared_reference_from_a_plain_static() {
    let l = simple(64 * MIB, 4 * MIB);
    let mut memmap = memmap_for(&l);
    let cpus: [CpuCache<parking_lot::RawMutex>; 1] = [CpuCache::new()];
    let a = start(&l, &mut memmap, &STATIC_SLOTS, &cpus, Strategy::OnDemand).unwrap();
    assert!(STATIC_SLOTS.iter().all(SectionSlot::is_owned));
    a.alloc(AllocRequest::order(0)).unwrap();
    drop(a);
    assert!(STATIC_SLOTS.iter().all(|s| !s.is_owned()));
}

#[test]
fn two_allocators_never_share_one_slot_array() {
    let l = simple(64 * MIB, 4 * MIB);
    let slots = slots(l.section_count());
    let (mut m1, mut m2) = (memmap_for(&l), memmap_for(&l));
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let first = start(&l, &mut m1, &slots, &cpus, Strategy::OnDemand).unwrap();
    let second = start(&l, &mut m2, &slots, &cpus, Strategy::Eager);
    let e = second.err().unwrap();
    assert_eq!(e, InitError::SlotsInUse { index: 0 });
    assert!(e.to_string().contains("section slot 0 is in use"), "{e}");
    // Refused with nothing changed: the first allocator still serves.
    first.alloc(AllocRequest::order(0)).unwrap();
    // Dropped, it gives the slots back fresh: a new allocator may take them and
    // starts from nothing it left behind.
    drop(first);
    let again = start(&l, &mut m2, &slots, &cpus, Strategy::OnDemand).unwrap();
    assert_eq!(again.stats().chunks_done, 0);
    assert_eq!(again.stats().memmap_bytes, 0);
}

/// Part of the slots owned by a live allocator (a shorter layout): a second one
/// over all of them is refused at the first owned slot, and gives back the ones it
/// took on the way.
#[test]
fn a_partly_owned_slot_array_is_refused_and_left_as_found() {
    let small = simple(8 * MIB, 4 * MIB);
    let big = simple(64 * MIB, 4 * MIB);
    let slots = slots(big.section_count());
    let (mut m1, mut m2) = (memmap_for(&small), memmap_for(&big));
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let tail = &slots[4..];
    let first = start(&small, &mut m1, tail, &cpus, Strategy::OnDemand).unwrap();
    let owned: Vec<bool> = slots.iter().map(SectionSlot::is_owned).collect();
    let e = start(&big, &mut m2, &slots, &cpus, Strategy::OnDemand)
        .err()
        .unwrap();
    assert!(matches!(e, InitError::SlotsInUse { .. }), "{e}");
    let after: Vec<bool> = slots.iter().map(SectionSlot::is_owned).collect();
    assert_eq!(owned, after);
    drop(first);
}

/// Threads racing to start allocators over one slot array: at most one wins, and
/// every loser leaves the slots as it found them.
#[test]
fn racing_starts_over_one_slot_array_have_at_most_one_winner() {
    let l = simple(64 * MIB, 4 * MIB);
    for _ in 0..50 {
        let slots = slots(l.section_count());
        let mut memmaps: Vec<_> = (0..3).map(|_| memmap_for(&l)).collect();
        let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
        let barrier = std::sync::Barrier::new(3);
        let won = std::thread::scope(|s| {
            let handles: Vec<_> = memmaps
                .iter_mut()
                .map(|m| {
                    let (l, slots, cpus, barrier) = (&l, &slots, &cpus, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        match start(l, m, slots, cpus, Strategy::OnDemand) {
                            Ok(a) => {
                                // Hold it until every start has been decided.
                                barrier.wait();
                                drop(a);
                                true
                            }
                            Err(e) => {
                                assert!(matches!(e, InitError::SlotsInUse { .. }), "{e}");
                                barrier.wait();
                                false
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&w| w)
                .count()
        });
        assert!(won <= 1, "{won} allocators own one slot array");
        assert!(slots.iter().all(|s| !s.is_owned()));
    }
}

#[test]
fn free_reads_the_order_from_the_descriptor() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        for order in [0, 3, 5, meminit::PAGEBLOCK_ORDER, meminit::MAX_ORDER] {
            let pfn = a.alloc(AllocRequest::order(order)).unwrap();
            assert_eq!(a.free(pfn), Ok(order));
            assert_eq!(a.free(pfn), Err(FreeError::DoubleFree { pfn }));
            // Through a CPU's cache (cached orders) or the zone (the rest).
            let pfn = a.alloc(AllocRequest::order(order).on(CpuId(1))).unwrap();
            assert_eq!(a.free(FreeRequest::pfn(pfn).on(CpuId(2))), Ok(order));
            assert_eq!(
                a.free(FreeRequest::pfn(pfn).on(CpuId(2))),
                Err(FreeError::DoubleFree { pfn })
            );
        }
        let pfn = a.alloc(AllocRequest::order(2)).unwrap();
        let inside = Pfn(pfn.0 + 1);
        assert_eq!(a.free(inside), Err(FreeError::NotBlockHead { pfn: inside }));
        assert_eq!(
            a.free(FreeRequest::pfn(pfn).on(CpuId(99))),
            Err(FreeError::UnknownCpu {
                cpu: CpuId(99),
                cpus: CPUS
            })
        );
        // The order-checked frees still say when the caller is wrong, with
        // nothing changed.
        assert_eq!(
            a.free(FreeRequest::pfn(pfn).order(3)),
            Err(FreeError::WrongOrder {
                pfn,
                allocated: 2,
                given: 3
            })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(pfn).on(CpuId(0)).order(1)),
            Err(FreeError::WrongOrder {
                pfn,
                allocated: 2,
                given: 1
            })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(pfn).order(99)),
            Err(FreeError::OrderTooLarge { order: 99 })
        );
        assert_eq!(a.free(FreeRequest::pfn(pfn).on(CpuId(0)).order(2)), Ok(2));
        assert_eq!(
            a.free(FreeRequest::pfn(pfn).order(2)),
            Err(FreeError::DoubleFree { pfn })
        );
        // Never initialised, reserved, or outside the map.
        assert!(matches!(a.free(Pfn(u64::MAX)), Err(FreeError::Lookup(_))));
        assert!(matches!(a.free(Pfn(0)), Err(FreeError::Lookup(_))));
        let far = Pfn((60 * MIB) / meminit::PAGE_SIZE);
        assert!(matches!(a.free(far), Err(FreeError::Lookup(_))));
        check_fully_coalesced_after_init(a);
    });
}

fn check_fully_coalesced_after_init(a: &Alloc<'_>) {
    init_all(a);
    check_fully_coalesced(a);
}

/// Two frees of one block without the order, racing on two CPUs (one into its
/// cache, one to the zone): exactly one succeeds, and it says the order.
#[test]
fn racing_order_less_frees_of_one_block_have_one_winner() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        for round in 0..500u32 {
            let order = [0, 1, 3, 4][round as usize % 4];
            let pfn = a.alloc(AllocRequest::order(order)).unwrap();
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|s| {
                let h: Vec<_> = (0..2u32)
                    .map(|cpu| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            if cpu == 0 {
                                a.free(FreeRequest::pfn(pfn).on(CpuId(cpu)))
                            } else {
                                a.free(pfn)
                            }
                        })
                    })
                    .collect();
                h.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
            assert_eq!(won, [&Ok(order)], "{results:?}");
            // The loser finds the block free, or already merged into a larger
            // free block (its head then a tail): a double free either way.
            assert!(
                results.iter().any(|r| matches!(
                    r,
                    Err(FreeError::DoubleFree { .. } | FreeError::NotBlockHead { .. })
                )),
                "{results:?}"
            );
        }
        check_fully_coalesced(a);
    });
}

#[test]
fn node_ids_and_pfns_read_well() {
    assert_eq!(NodeId(3).to_string(), "node 3");
    assert_eq!(NodeId(3).index(), 3);
    assert_eq!(Pfn::from_addr(0x5000), Some(Pfn(5)));
    assert_eq!(Pfn::from_addr(0x5001), None);
    assert_eq!(Pfn::containing(0x5fff), Pfn(5));
    assert_eq!(Pfn(5).addr(), 0x5000);
    assert_eq!(Pfn(5).checked_add(2), Some(Pfn(7)));
    assert_eq!(Pfn(u64::MAX).checked_add(1), None);
    assert_eq!(Pfn(u64::MAX).saturating_add(1), Pfn(u64::MAX));
    assert_eq!(Pfn(5).pages_to(Pfn(9)), 4);
    assert_eq!(Pfn(9).pages_to(Pfn(5)), 0);
    // A node id past MAX_NODES is carried to `build` and refused there by name.
    let mut b = meminit::LayoutBuilder::new();
    b.add(0, 1 << 30, meminit::RangeKind::Usable, NodeId(70_000));
    let e = b.build().unwrap_err();
    assert!(e.to_string().contains("names node 70000"), "{e}");
    // Every node in the public API is a NodeId: the same value everywhere.
    let l = two_nodes(MIB, 64 * MIB, 128 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Deferred, |a| {
        let pfn = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
        let (node, zone) = a.page(pfn).unwrap().zone().unwrap();
        assert_eq!(node, NodeId(1));
        assert_eq!(a.layout().node_of(pfn), Some(node));
        assert_eq!(a.zone(node, zone).unwrap().node, node);
        assert_eq!(a.run_deferred_worker(node).node, node);
        assert_eq!(
            a.alloc(AllocRequest::order(0).node(NodeId(2))),
            Err(meminit::AllocError::UnknownNode { node: NodeId(2) })
        );
        assert_eq!(
            meminit::AllocError::UnknownNode { node: NodeId(2) }.to_string(),
            "node 2 is not in the layout"
        );
    });
}

/// The memmap starts at the first section with memory: 1 GiB of RAM at 512 GiB
/// needs 16 MiB of memmap span and 8 section slots (128 MiB sections), not 8 GiB
/// and 4104.
#[test]
fn the_memmap_spans_only_the_sections_with_memory() {
    const GIB: u64 = 1 << 30;
    let mut b = meminit::LayoutBuilder::new();
    b.add(512 * GIB, 513 * GIB, meminit::RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    assert_eq!(l.memmap_start(), Pfn::containing(512 * GIB));
    assert_eq!(l.memmap_sections(), 4096..4104);
    assert_eq!(l.section_count(), 8);
    assert_eq!(l.memmap_bytes(), 16 * MIB);
    assert_eq!(l.memmap_descriptors(), (GIB / meminit::PAGE_SIZE));
    for strategy in Strategy::ALL {
        with_allocator(&l, strategy, |a| {
            run_workers(a);
            let pfn = a.alloc(AllocRequest::order(3).on(CpuId(0))).unwrap();
            assert!(pfn >= l.memmap_start() && pfn < l.end_pfn());
            assert_eq!(
                a.page(pfn).unwrap().state(),
                meminit::PageState::Allocated { order: 3 }
            );
            assert_eq!(a.free(FreeRequest::pfn(pfn).on(CpuId(0))), Ok(3));
            // Below the memmap: not present, never an out-of-bounds read.
            assert!(matches!(
                a.page(Pfn(0)),
                Err(meminit::LookupError::NotPresent { .. })
            ));
            assert!(matches!(
                a.page_or_init(Pfn(l.memmap_start().0 - 1)),
                Err(meminit::LookupError::NotPresent { .. })
            ));
            init_all(a);
            check_fully_coalesced(a);
        });
    }
}

/// Two nodes far apart with a hole between: section numbers stay absolute in
/// what the backing is asked, and the slots cover first to last.
#[test]
fn memmap_pieces_name_absolute_sections() {
    const GIB: u64 = 1 << 30;
    let usable = meminit::RangeKind::Usable;
    let l = layout(
        4 * MIB,
        &[
            (2 * GIB, 2 * GIB + 8 * MIB, usable, NodeId(0)),
            (3 * GIB, 3 * GIB + 4 * MIB, usable, NodeId(1)),
        ],
    );
    assert_eq!(l.memmap_sections(), 512..769);
    let mut memmap = memmap_for(&l);
    let slots = slots(l.section_count());
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let a = Allocator::<_, parking_lot::RawMutex>::new(
        l.clone(),
        Double::new().over(&mut memmap, &l),
        &slots,
        &cpus,
        Config::new(Strategy::Eager),
    )
    .unwrap();
    let mut seen = a.backing().pick(|c| match c {
        Call::Populate { piece, .. } => Some((piece.section, piece.start)),
        _ => None,
    });
    seen.sort();
    assert_eq!(
        seen,
        [
            (512, Pfn::containing(2 * GIB)),
            (513, Pfn::containing(2 * GIB + 4 * MIB)),
            (768, Pfn::containing(3 * GIB))
        ]
    );
    // Too few slots for first..last: refused by count.
    drop(a);
    let e = start(&l, &mut memmap, &slots[..256], &cpus, Strategy::OnDemand)
        .err()
        .unwrap();
    assert_eq!(
        e,
        InitError::TooFewSlots {
            needed: 257,
            given: 256
        }
    );
}

/// A backing whose descriptors are misaligned, against its contract: refused at
/// start-up with an error, not a panic.
#[test]
fn a_misaligned_memmap_is_an_error() {
    let l = simple(16 * MIB, 4 * MIB);
    let mut memmap = memmap_for(&l);
    let slots = slots(l.section_count());
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    // SAFETY: the allocator must refuse this backing before touching a
    // descriptor; that refusal is what is tested.
    let misaligned = unsafe { Double::new().misaligned() };
    let e = Allocator::<_, parking_lot::RawMutex>::new(
        l.clone(),
        misaligned.over(&mut memmap, &l),
        &slots,
        &cpus,
        Config::new(Strategy::Eager),
    )
    .err()
    .unwrap();
    assert_eq!(e, InitError::MisalignedMemmap);
    // Refused after the slots were taken: they are fresh again.
    assert!(slots.iter().all(|s| !s.is_owned()));
}
