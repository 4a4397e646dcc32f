//! The public surface as an embedder meets it (issue 8, items 5 and 7): slots lent
//! by shared reference and owned by one allocator at a time, free without the
//! order, node and pfn types, and a memmap that starts at the first present section.

#![cfg(not(loom))]

mod common;

use std::mem::MaybeUninit;

use common::*;
use meminit::{Allocator, Config, CpuCache, InitError, Page, SectionSlot, SliceBacking, Strategy};

const MIB: u64 = 1 << 20;

type Alloc<'a> = Allocator<'a, SliceBacking<'a>, parking_lot::RawMutex>;

fn memmap_for(layout: &meminit::Layout) -> Box<[MaybeUninit<Page>]> {
    Box::new_uninit_slice(layout.memmap_descriptors() as usize)
}

/// A kernel keeps its slots in a plain `static`: no `static mut`, no lock.
static STATIC_SLOTS: [SectionSlot; 16] = [const { SectionSlot::new() }; 16];

#[test]
fn slots_are_lent_by_shared_reference_from_a_plain_static() {
    let l = simple(64 * MIB, 4 * MIB);
    let mut memmap = memmap_for(&l);
    let cpus: [CpuCache<parking_lot::RawMutex>; 1] = [CpuCache::new()];
    let a: Alloc<'_> = Allocator::new(
        l.clone(),
        SliceBacking::new(&mut memmap),
        &STATIC_SLOTS,
        &cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    assert!(STATIC_SLOTS.iter().all(SectionSlot::is_owned));
    a.alloc(0, meminit::Constraint::Any, 0).unwrap();
    drop(a);
    assert!(STATIC_SLOTS.iter().all(|s| !s.is_owned()));
}

#[test]
fn two_allocators_never_share_one_slot_array() {
    let l = simple(64 * MIB, 4 * MIB);
    let slots: Vec<SectionSlot> = (0..l.section_count()).map(|_| SectionSlot::new()).collect();
    let (mut m1, mut m2) = (memmap_for(&l), memmap_for(&l));
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let first: Alloc<'_> = Allocator::new(
        l.clone(),
        SliceBacking::new(&mut m1),
        &slots,
        &cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    let second: Result<Alloc<'_>, _> = Allocator::new(
        l.clone(),
        SliceBacking::new(&mut m2),
        &slots,
        &cpus,
        Config::new(Strategy::Eager),
    );
    let e = second.err().unwrap();
    assert_eq!(e, InitError::SlotsInUse { index: 0 });
    assert!(e.to_string().contains("section slot 0 is in use"), "{e}");
    // Refused with nothing changed: the first allocator still serves.
    first.alloc(0, meminit::Constraint::Any, 0).unwrap();
    // Dropped, it gives the slots back fresh: a new allocator may take them and
    // starts from nothing it left behind.
    drop(first);
    let again: Alloc<'_> = Allocator::new(
        l.clone(),
        SliceBacking::new(&mut m2),
        &slots,
        &cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    assert_eq!(again.init_stats().chunks_done, 0);
    assert_eq!(again.memmap_populated_bytes(), 0);
}

/// Part of the slots owned by a live allocator (a shorter layout): a second one
/// over all of them is refused at the first owned slot, and gives back the ones it
/// took on the way.
#[test]
fn a_partly_owned_slot_array_is_refused_and_left_as_found() {
    let small = simple(8 * MIB, 4 * MIB);
    let big = simple(64 * MIB, 4 * MIB);
    let slots: Vec<SectionSlot> = (0..big.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let (mut m1, mut m2) = (memmap_for(&small), memmap_for(&big));
    let cpus: [CpuCache<parking_lot::RawMutex>; 0] = [];
    let tail = &slots[4..];
    let first: Alloc<'_> = Allocator::new(
        small.clone(),
        SliceBacking::new(&mut m1),
        tail,
        &cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    let owned: Vec<bool> = slots.iter().map(SectionSlot::is_owned).collect();
    let e = Allocator::<_, parking_lot::RawMutex>::new(
        big,
        SliceBacking::new(&mut m2),
        &slots,
        &cpus,
        Config::new(Strategy::OnDemand),
    )
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
        let slots: Vec<SectionSlot> = (0..l.section_count()).map(|_| SectionSlot::new()).collect();
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
                        let a: Result<Alloc<'_>, _> = Allocator::new(
                            l.clone(),
                            SliceBacking::new(m),
                            slots,
                            cpus,
                            Config::new(Strategy::OnDemand),
                        );
                        match a {
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
