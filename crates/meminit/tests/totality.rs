//! Every public query of a layout and an allocator answers any argument (huge
//! indices, pfns, nodes, orders, CPU ids) with a value, an empty answer or a typed
//! error, never a panic or an overflow, and its answers agree with each other.
#![cfg(not(loom))]

mod common;

use common::*;
use meminit::Strategy as InitStrategy;
use meminit::MAX_PFN;
use meminit::{
    AllocError, AllocRequest, Constraint, CpuId, FreeError, FreeRequest, Layout, LayoutBuilder,
    NodeId, Pfn, RangeKind, ZoneType, MAX_ORDER,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A few layouts: low memory with holes, two nodes far apart, memory starting
/// high, small sections.
fn layouts() -> Vec<Layout> {
    let mut out = Vec::new();
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
        .add(MIB, 40 * MIB, RangeKind::Usable, NodeId(0))
        .add(8 * MIB, 9 * MIB, RangeKind::Reserved, NodeId(0));
    out.push(b.build().unwrap());
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(16 * MIB, 32 * MIB, RangeKind::Usable, NodeId(0))
        .add(5 * GIB, 5 * GIB + 12 * MIB, RangeKind::Usable, NodeId(3));
    out.push(b.build().unwrap());
    let mut b = LayoutBuilder::new();
    b.section_size(8 * MIB).add(
        512 * GIB,
        512 * GIB + 24 * MIB,
        RangeKind::Usable,
        NodeId(1),
    );
    out.push(b.build().unwrap());
    out
}

fn any_index() -> impl Strategy<Value = usize> {
    prop_oneof![
        any::<usize>(),
        0..4096usize,
        Just(usize::MAX),
        Just(usize::MAX / 2)
    ]
}

fn any_pfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..1u64 << 22,
        Pfn::containing(512 * GIB).0..Pfn::containing(512 * GIB).0 + 8192,
        Pfn::containing(5 * GIB).0..Pfn::containing(5 * GIB).0 + 4096,
        Just(u64::MAX),
        Just(MAX_PFN),
    ]
}

fn any_node() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0..20u32, Just(u32::MAX)]
}

fn any_order() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0..=MAX_ORDER + 2, Just(u32::MAX)]
}

fn zone_of(i: u8) -> ZoneType {
    ZoneType::ALL[i as usize % 3]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn layout_queries_are_total_and_consistent(
        which in 0..3usize,
        index in any_index(),
        pfn in any_pfn(),
        end in any_pfn(),
        node in any_node(),
        zone in any::<u8>(),
    ) {
        let l = &layouts()[which];
        let (pfn, end, node, zone) = (Pfn(pfn), Pfn(end), NodeId(node), zone_of(zone));
        let pfns = l.section_pfns(index);
        prop_assert!(pfns.start <= pfns.end);
        prop_assert!(pfns.start.pages_to(pfns.end) <= l.section_pages());
        if !pfns.is_empty() {
            prop_assert_eq!(l.section_of(pfns.start), index);
        }
        let has = l.section_has_present(index);
        prop_assert_eq!(has, l.present_runs(pfns.clone()).next().is_some());
        if has {
            prop_assert!(l.memmap_sections().contains(&index));
        }
        let (present, reserved) = l.section_zone_pages(index, node, zone);
        prop_assert!(reserved <= present && present <= l.section_pages());
        if l.node(node).is_none() {
            prop_assert_eq!(present, 0);
        }
        // A pfn's node is the node of the run holding it.
        let run = l.present_runs(pfn..pfn.saturating_add(1)).next();
        prop_assert_eq!(l.node_of(pfn), run.map(|r| r.node));
        if let Some(n) = l.node_of(pfn) {
            prop_assert!(l.node(n).is_some());
            prop_assert!(l.memmap_sections().contains(&l.section_of(pfn)));
            prop_assert!(pfn >= l.memmap_start() && pfn < l.end_pfn());
        }
        prop_assert_eq!(l.node(node).is_some(), l.nodes().any(|(n, _)| n == node));
        for r in l.present_runs(pfn..end) {
            prop_assert!(pfn <= r.start && r.start < r.end && r.end <= end);
            prop_assert_eq!(r.zone, ZoneType::of_pfn(r.start));
        }
        prop_assert_eq!(
            l.memmap_descriptors(),
            l.section_count() as u64 * l.section_pages()
        );
    }

    #[test]
    fn allocator_queries_are_total_and_consistent(
        which in 0..3usize,
        strategy in prop_oneof![Just(InitStrategy::Eager), Just(InitStrategy::OnDemand)],
        calls in proptest::collection::vec(
            (0..10u8, any_pfn(), any_order(), any_node(), any::<u32>(), any::<u8>(), 0..3u8),
            1..40,
        ),
    ) {
        let l = layouts()[which].clone();
        with_allocator(&l, strategy, |a| -> Result<(), TestCaseError> {
            let mut held: Vec<(Pfn, u32)> = Vec::new();
            for (kind, pfn, order, node, cpu, zone, c) in calls {
                let (pfn, node, zone) = (Pfn(pfn), NodeId(node), zone_of(zone));
                let cpu = CpuId(cpu % (CPUS as u32 + 2));
                let constraint = [Constraint::Any, Constraint::Dma32, Constraint::Dma][c as usize];
                match kind {
                    0 | 1 => {
                        let r = if kind == 0 {
                            a.alloc(AllocRequest::order(order).within(constraint).node(node))
                        } else {
                            a.alloc(AllocRequest::order(order).on(cpu).within(constraint).node(node))
                        };
                        match r {
                            Ok(p) => {
                                prop_assert!(order <= MAX_ORDER);
                                prop_assert!(l.node_of(p).is_some());
                                held.push((p, order));
                            }
                            Err(AllocError::OrderTooLarge { .. }) => prop_assert!(order > MAX_ORDER),
                            Err(AllocError::UnknownNode { node: n }) => {
                                prop_assert_eq!(n, node);
                                prop_assert!(node.index() >= l.node_count());
                            }
                            Err(AllocError::UnknownCpu { cpu: c, .. }) => {
                                prop_assert!(kind == 1 && c.0 as usize >= CPUS);
                            }
                            Err(AllocError::WouldGrow { .. } | AllocError::Reentrant { .. }) => {
                                prop_assert!(false, "no flags, no backing calling back: {r:?}")
                            }
                            Err(AllocError::OutOfMemory { .. } | AllocError::Backing(_)) => {}
                        }
                    }
                    2 => {
                        // A free of an arbitrary pfn: refused unless it is a held head.
                        let mine = held.iter().position(|&(p, _)| p == pfn);
                        let r = a.free(pfn);
                        match mine {
                            Some(i) => prop_assert_eq!(r, Ok(held.swap_remove(i).1)),
                            None => prop_assert!(r.is_err()),
                        }
                    }
                    3 => {
                        let mine = held.iter().position(|&(p, o)| p == pfn && o == order);
                        let r = a.free(FreeRequest::pfn(pfn).on(cpu).order(order));
                        match (mine, r) {
                            (Some(i), Ok(_)) => { held.swap_remove(i); }
                            (Some(_), Err(FreeError::UnknownCpu { .. })) => {
                                prop_assert!(cpu.0 as usize >= CPUS);
                            }
                            (None, r) => prop_assert!(r.is_err()),
                            (Some(_), Err(e)) => prop_assert!(false, "{}", e),
                        }
                    }
                    4 => {
                        if let Ok(page) = a.page(pfn) {
                            prop_assert!(l.memmap_sections().contains(&l.section_of(pfn)));
                            prop_assert!(page.user_word(usize::MAX).is_none());
                            prop_assert!(page.user_word(0).is_some());
                        }
                        if let Ok(page) = a.page_or_init(pfn) {
                            if let Some((n, z)) = page.zone() {
                                prop_assert_eq!(Some(n), l.node_of(pfn));
                                prop_assert_eq!(z, ZoneType::of_pfn(pfn));
                            }
                        }
                    }
                    5 => {
                        let stats = a.zone(node, zone);
                        let span = l.node(node).map(|n| n.zones[zone as usize]);
                        prop_assert_eq!(stats.is_some(), span.is_some_and(|s| s.present > 0));
                        if let Some(s) = stats {
                            prop_assert_eq!((s.node, s.zone), (node, zone));
                        }
                        let blocks = a.zone(node, zone).map(|z| z.free_blocks).unwrap_or_default();
                        if stats.is_none() {
                            prop_assert!(blocks.iter().all(|&b| b == 0));
                        }
                    }
                    6 => {
                        let r = a.run_deferred_worker(node);
                        prop_assert_eq!(r.node, node);
                    }
                    7 => {
                        prop_assert_eq!(a.drain(Some(cpu)).is_err(), cpu.0 as usize >= CPUS);
                    }
                    8 => {
                        let _ = a.free(FreeRequest::pfn(pfn).order(order));
                        held.retain(|&(p, _)| a.page(p).is_ok_and(|pg| {
                            matches!(pg.state(), meminit::PageState::Allocated { .. })
                        }));
                    }
                    _ => {
                        let _ = a.stats();
                        let _ = a.stats().available_pages;
                        prop_assert!(a.zones().all(|z| z.free <= z.present));
                    }
                }
            }
            for (p, o) in held {
                prop_assert_eq!(a.free(p), Ok(o));
            }
            Ok(())
        })?;
    }
}

/// Plain values with public fields answer even when built inverted or huge.
#[test]
fn value_helpers_are_total() {
    use meminit::{MemmapBacking, MemmapPiece, SliceBacking};
    let inverted = MemmapPiece {
        section: usize::MAX,
        start: Pfn(10),
        end: Pfn(5),
    };
    assert_eq!(inverted.memmap_bytes(), 0);
    let huge = MemmapPiece {
        section: 0,
        start: Pfn(0),
        end: Pfn(u64::MAX),
    };
    assert_eq!(huge.memmap_bytes(), u64::MAX);
    let l = &layouts()[2];
    let mut memory = Box::new_uninit_slice(l.memmap_descriptors() as usize);
    let backing = SliceBacking::new(&mut memory);
    // Pieces outside the slice, inverted or below the memmap: refused, not wrapped.
    for piece in [inverted, huge] {
        let mut source = meminit::PageSource::new(l, piece, meminit::Granularity::Section);
        assert!(backing.populate(piece, l, &mut source).is_err());
    }
    let below = MemmapPiece {
        section: 0,
        start: Pfn(0),
        end: Pfn(1 << 11),
    };
    let mut source = meminit::PageSource::new(l, below, meminit::Granularity::Section);
    assert!(backing.populate(below, l, &mut source).is_err());
    let z = meminit::ZoneStats {
        node: NodeId(0),
        zone: ZoneType::Dma,
        start_pfn: Pfn(0),
        spanned: 0,
        present: 0,
        managed: 0,
        reserved: 0,
        free: u64::MAX,
        cached: 0,
        depot: 0,
        reported: 0,
        uninitialised: u64::MAX,
        free_blocks: [0; 11],
        free_by_class: [u64::MAX; meminit::CLASSES],
        free_whole: u64::MAX,
        steals: u64::MAX,
    };
    assert_eq!(z.available(), u64::MAX);
    assert_eq!(z.allocated(), 0);
}
