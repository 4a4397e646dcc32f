//! Memory that becomes present after start-up: hot-pluggable ranges in the
//! layout, `add_memory` and `remove_memory`, the rule that hot-plugged memory
//! takes movable allocations first, and a stress test that plugs and unplugs
//! beside allocating threads and checks that no page held is ever removed.

#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{layout, with_double, Double, Doubled};
use meminit::{
    AllocFlags, AllocRequest, Config, CpuId, FreeRequest, Granularity, HotplugError, LayoutBuilder,
    LayoutError, LookupError, NodeId, PageState, Pfn, RangeKind, Strategy, ZoneStats, ZoneType,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const N0: NodeId = NodeId(0);
const CHUNK_PAGES: u64 = 1024;

fn pfn(bytes: u64) -> Pfn {
    Pfn(bytes / 4096)
}

/// 64 MiB of boot memory in DMA32 (sections of 32 MiB) and 128 MiB declared
/// hot-pluggable at 4 GiB: a zone Normal of hot-pluggable memory alone.
fn machine() -> meminit::Layout {
    layout(
        32 * MIB,
        &[
            (16 * MIB, 80 * MIB, RangeKind::Usable, N0),
            (4 * GIB, 4 * GIB + 128 * MIB, RangeKind::Hotplug, N0),
        ],
    )
}

fn hot() -> Range<Pfn> {
    pfn(4 * GIB)..pfn(4 * GIB + 128 * MIB)
}

fn zone(a: &Doubled<'_>, zone: ZoneType) -> ZoneStats {
    a.zone(N0, zone).unwrap()
}

/// free + allocated + uninitialised + reserved == present, per zone, with
/// `held` pages allocated (from the test's own ledger) per zone.
fn check_counts(a: &Doubled<'_>, held: &HashMap<ZoneType, u64>) {
    for z in a.zones() {
        let held = held.get(&z.zone).copied().unwrap_or(0);
        assert_eq!(
            z.free + held + z.uninitialised + z.reserved,
            z.present,
            "{z:?}, held {held}"
        );
    }
    assert_eq!(a.miscounted_chunks(), 0);
}

fn with_machine<T>(f: impl FnOnce(&Doubled<'_>) -> T) -> T {
    let double = Double::new().granularity(Granularity::Section).releasing();
    with_double(&machine(), Config::new(Strategy::OnDemand), double, f)
}

fn movable(order: u32) -> AllocRequest {
    AllocRequest::order(order).flags(AllocFlags::MOVABLE)
}

#[test]
fn the_layout_declares_hot_pluggable_ranges_without_making_them_present() {
    let l = machine();
    assert_eq!(l.present_pages(), 64 * MIB / 4096);
    assert_eq!(l.hotplug_pages(), 128 * MIB / 4096);
    let node = l.node(N0).unwrap();
    assert_eq!(node.present, 64 * MIB / 4096);
    assert_eq!(node.hotplug, 128 * MIB / 4096);
    assert_eq!(node.end_pfn, pfn(4 * GIB + 128 * MIB));
    let normal = node.zones[ZoneType::Normal as usize];
    assert_eq!((normal.present, normal.hotplug), (0, 128 * MIB / 4096));
    assert_eq!(normal.start_pfn, pfn(4 * GIB));
    // The memmap's sections (and so the slots) cover the hot-pluggable ones.
    assert_eq!(
        l.memmap_sections().end as u64,
        (4 * GIB + 128 * MIB) / (32 * MIB)
    );
    assert!(l.is_hotplug(hot()));
    assert!(!l.is_hotplug(pfn(4 * GIB - 4 * MIB)..pfn(4 * GIB + 4 * MIB)));
    assert_eq!(l.present_runs(hot()).count(), 0);
    assert_eq!(l.memory_runs(pfn(0)..pfn(8 * GIB)).count(), 2);
}

#[test]
fn hot_pluggable_ranges_are_whole_sections_and_overlap_nothing() {
    let mut b = LayoutBuilder::new();
    b.section_size(32 * MIB)
        .add(0, 64 * MIB, RangeKind::Usable, N0)
        .add(4 * GIB + MIB, 5 * GIB, RangeKind::Hotplug, N0);
    assert!(matches!(
        b.build(),
        Err(LayoutError::MisalignedHotplug { index: 1, .. })
    ));
    let mut b = LayoutBuilder::new();
    b.section_size(32 * MIB)
        .add(0, 64 * MIB, RangeKind::Usable, N0)
        .add(32 * MIB, 96 * MIB, RangeKind::Hotplug, N0);
    assert!(matches!(b.build(), Err(LayoutError::Overlap { .. })));
    // Hot-pluggable memory alone is no usable memory.
    let mut b = LayoutBuilder::new();
    b.add(4 * GIB, 5 * GIB, RangeKind::Hotplug, N0);
    assert_eq!(b.build().unwrap_err(), LayoutError::NoUsableMemory);
}

#[test]
fn an_add_writes_no_descriptor_and_counts_the_pages_present_and_uninitialised() {
    with_machine(|a| {
        let before = a.backing().populates();
        assert_eq!(zone(a, ZoneType::Normal).present, 0);
        assert!(matches!(
            a.page(hot().start),
            Err(LookupError::NotPresent { .. })
        ));
        assert_eq!(a.add_memory(hot()), Ok(128 * MIB / 4096));
        let z = zone(a, ZoneType::Normal);
        assert_eq!((z.present, z.uninitialised, z.free), (32768, 32768, 0));
        assert_eq!(a.backing().populates(), before);
        assert!(matches!(
            a.page(hot().start),
            Err(LookupError::Uninitialised { .. })
        ));
        assert!(!a.stats().fully_initialised);
        check_counts(a, &HashMap::new());
        // The first movable allocation grows into it.
        let p = a.alloc(movable(0)).unwrap();
        assert!(p >= hot().start && p < hot().end, "{p}");
        a.free(FreeRequest::pfn(p)).unwrap();
        check_counts(a, &HashMap::new());
    });
}

#[test]
fn bad_ranges_are_refused_with_what_and_where() {
    with_machine(|a| {
        let r = hot();
        let empty = r.start..r.start;
        assert!(matches!(
            a.add_memory(empty),
            Err(HotplugError::Empty { .. })
        ));
        let odd = Pfn(r.start.0 + 1)..r.end;
        assert!(matches!(
            a.add_memory(odd),
            Err(HotplugError::Misaligned {
                chunk_pages: CHUNK_PAGES,
                ..
            })
        ));
        let boot = pfn(16 * MIB)..pfn(32 * MIB);
        assert!(matches!(
            a.add_memory(boot.clone()),
            Err(HotplugError::NotHotpluggable { .. })
        ));
        assert!(matches!(
            a.remove_memory(boot),
            Err(HotplugError::NotHotpluggable { .. })
        ));
        let past = r.start..Pfn(r.end.0 + CHUNK_PAGES);
        assert!(matches!(
            a.add_memory(past),
            Err(HotplugError::NotHotpluggable { .. })
        ));
        let half = r.start..Pfn(r.start.0 + 8 * CHUNK_PAGES);
        a.add_memory(half).unwrap();
        let e = a.add_memory(r.clone()).unwrap_err();
        assert_eq!(
            e,
            HotplugError::AlreadyPresent {
                range: r.clone(),
                pfn: r.start
            }
        );
        assert!(e.to_string().contains("present already"), "{e}");
        // Nothing changed by the refusals.
        assert_eq!(zone(a, ZoneType::Normal).present, 8 * CHUNK_PAGES);
    });
}

#[test]
fn uninitialised_memory_is_removed_whole_and_can_come_back() {
    with_machine(|a| {
        a.add_memory(hot()).unwrap();
        let removed = a.remove_memory(hot()).unwrap();
        assert!(removed.is_complete(), "{removed:?}");
        assert_eq!((removed.pages, removed.absent), (32768, 0));
        let z = zone(a, ZoneType::Normal);
        assert_eq!((z.present, z.uninitialised), (0, 0));
        assert!(a.stats().fully_initialised || a.stats().chunks_done < a.stats().chunks_present);
        // Removing it again finds it absent.
        let again = a.remove_memory(hot()).unwrap();
        assert_eq!((again.pages, again.absent, again.kept), (0, 32768, 0));
        a.add_memory(hot()).unwrap();
        let p = a.alloc(movable(3)).unwrap();
        assert!(p >= hot().start, "{p}");
        a.free(FreeRequest::pfn(p)).unwrap();
        check_counts(a, &HashMap::new());
    });
}

#[test]
fn a_chunk_with_a_page_held_stays_and_goes_once_it_is_freed_with_its_memmap() {
    with_machine(|a| {
        let double = a.backing();
        let populated = double.populated_now();
        a.add_memory(hot()).unwrap();
        let held = a.alloc(movable(0).on(CpuId(0))).unwrap();
        assert!(held >= hot().start);
        let chunk_start = Pfn(held.0 & !(CHUNK_PAGES - 1));
        let removed = a.remove_memory(hot()).unwrap();
        assert!(!removed.is_complete());
        assert_eq!(removed.kept, CHUNK_PAGES);
        assert_eq!(removed.first_kept, Some(chunk_start));
        assert_eq!(removed.pages + removed.kept, 32768);
        // The page held is untouched, its chunk still present.
        assert!(matches!(
            a.page(held).unwrap().state(),
            PageState::Allocated { order: 0 }
        ));
        let mut h = HashMap::new();
        h.insert(ZoneType::Normal, 1);
        check_counts(a, &h);
        a.free(FreeRequest::pfn(held).on(CpuId(0))).unwrap();
        let removed = a.remove_memory(hot()).unwrap();
        assert!(removed.is_complete(), "{removed:?}");
        assert_eq!(removed.pages, CHUNK_PAGES);
        // One 32 MiB section's memmap: 8192 descriptors of 64 bytes.
        assert_eq!(removed.memmap_bytes_released, 32 * MIB / 4096 * 64);
        assert_eq!(double.populated_now(), populated);
        let z = zone(a, ZoneType::Normal);
        assert_eq!((z.present, z.free, z.uninitialised), (0, 0, 0));
        check_counts(a, &HashMap::new());
    });
}

#[test]
fn unmovable_allocations_land_in_hot_plugged_memory_only_as_a_last_resort() {
    with_machine(|a| {
        a.add_memory(hot()).unwrap();
        let m = a.alloc(movable(0)).unwrap();
        assert!(
            m >= hot().start,
            "movable memory goes to the hot-plugged zone first"
        );
        let mut held = vec![m];
        loop {
            let room = zone(a, ZoneType::Dma32).available();
            let p = a.alloc(AllocRequest::order(0)).unwrap();
            held.push(p);
            if room > 0 {
                assert!(p < hot().start, "unmovable at {p} while DMA32 had {room}");
            } else {
                assert!(p >= hot().start, "the last resort serves: {p}");
                break;
            }
        }
        for p in held {
            a.free(FreeRequest::pfn(p)).unwrap();
        }
        check_counts(a, &HashMap::new());
    });
}

/// Allocating threads beside one that plugs and unplugs the hot-pluggable range:
/// no allocation fails (the threads hold far less than boot memory), and every
/// page a thread holds stays present and allocated however often the range is
/// removed.
#[test]
fn plug_and_unplug_beside_allocating_threads_never_remove_a_page_held() {
    with_machine(|a| {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..3u32 {
                let stop = &stop;
                s.spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                    let mut held: Vec<(Pfn, u32)> = Vec::new();
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) || round < 2000 {
                        round += 1;
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if held.len() < 48 && rng % 3 != 0 {
                            let order = (rng >> 8) as u32 % 4;
                            let flags = if rng & 16 != 0 {
                                AllocFlags::MOVABLE
                            } else {
                                AllocFlags::NONE
                            };
                            let request = AllocRequest::order(order).on(CpuId(t)).flags(flags);
                            match a.alloc(request) {
                                Ok(p) => held.push((p, order)),
                                Err(e) => panic!("allocation failed: {e}"),
                            }
                        } else if !held.is_empty() {
                            let i = (rng >> 20) as usize % held.len();
                            let (p, _) = held.swap_remove(i);
                            a.free(FreeRequest::pfn(p).on(CpuId(t))).unwrap();
                        }
                        for &(p, order) in &held {
                            let state = a.page(p).map(|d| d.state());
                            assert_eq!(state, Ok(PageState::Allocated { order }), "{p}");
                        }
                    }
                    for (p, _) in held {
                        a.free(FreeRequest::pfn(p).on(CpuId(t))).unwrap();
                    }
                });
            }
            s.spawn(|| {
                let mut plugged = false;
                for _ in 0..300 {
                    if plugged {
                        let r = a.remove_memory(hot()).unwrap();
                        plugged = !r.is_complete();
                    } else {
                        a.add_memory(hot()).unwrap();
                        plugged = true;
                    }
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::Relaxed);
            });
        });
        // Quiescent: everything freed; take the range out entirely.
        a.drain(None).unwrap();
        let _ = a.add_memory(hot());
        let removed = a.remove_memory(hot()).unwrap();
        assert!(removed.is_complete(), "{removed:?}");
        check_counts(a, &HashMap::new());
        assert!(a.alloc(AllocRequest::order(0)).is_ok());
    });
}
