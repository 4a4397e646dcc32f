//! Behaviour of the allocator under each strategy, and one test per lesson of
//! DESIGN.md.

mod common;

use common::*;
use meminit::NodeId;
use meminit::{
    AllocError, AllocPath, AllocRequest, Constraint, FreeError, FreeRequest, LayoutBuilder,
    LookupError, PageState, Pfn, RangeKind, Strategy, ZoneType, MAX_ORDER, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[test]
fn eager_initialises_everything_at_start() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        assert!(a.stats().fully_initialised);
        let s = a.stats();
        assert_eq!(s.by_boot, s.chunks_present);
        assert_eq!(s.memmap_bytes, 16 * 1024 * 64);
        check_fully_coalesced(a);
    });
}

#[test]
fn ondemand_starts_with_nothing_and_grows_one_section() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        assert_eq!(a.stats().memmap_bytes, 0);
        let (pfn, path) = a.alloc_traced(AllocRequest::order(0)).unwrap();
        assert_eq!(path, AllocPath::Grew);
        assert_eq!(a.stats().memmap_bytes, 1024 * 64);
        let (_, path) = a.alloc_traced(AllocRequest::order(0)).unwrap();
        assert_eq!(path, AllocPath::Fast);
        a.free(FreeRequest::pfn(pfn).order(0)).unwrap();
        // On-demand never initialises in the background.
        assert_eq!(a.run_deferred_worker(NodeId(0)).chunks, 0);
        assert_eq!(a.stats().by_growth, 1);
    });
}

#[test]
fn deferred_workers_finish_and_switch_growth_off() {
    let l = simple(256 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Deferred, |a| {
        assert!(!a.stats().fully_initialised);
        run_workers(a);
        assert!(a.stats().fully_initialised);
        let s = a.stats();
        assert_eq!(s.by_workers, s.chunks_present);
        check_fully_coalesced(a);
    });
}

/// Lesson: Linux sized its early part on guesses, and a 100 MiB-per-CPU trace
/// buffer ran out of initialised memory. Here an allocation of most of memory right
/// after start-up succeeds, whatever the strategy.
#[test]
fn most_of_memory_right_after_start_up() {
    let l = simple(512 * MIB, 4 * MIB);
    for strategy in Strategy::ALL {
        with_allocator(&l, strategy, |a| {
            let blocks = (511 * MIB / PAGE_SIZE) >> MAX_ORDER;
            let mut held = Vec::new();
            for _ in 0..blocks - 1 {
                held.push(a.alloc(AllocRequest::order(MAX_ORDER)).unwrap());
            }
            // The rest goes page by page until truly exhausted.
            let mut pages = 0;
            while let Ok(p) = a.alloc(AllocRequest::order(0)) {
                held.push(p);
                pages += 1;
            }
            assert_eq!(pages, 511 * MIB / PAGE_SIZE - ((blocks - 1) << MAX_ORDER));
            assert!(a.stats().fully_initialised);
            assert!(matches!(
                a.alloc(AllocRequest::order(0)),
                Err(AllocError::OutOfMemory { .. })
            ));
        });
    }
}

/// Lesson: Linux deferred only the last zone of a node. Here a DMA32-only allocation
/// succeeds while Normal is still uninitialised, and grows DMA32 alone.
#[test]
fn dma32_allocation_while_normal_is_uninitialised() {
    let mut b = LayoutBuilder::new();
    b.add(MIB, 6 * GIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    with_allocator(&l, Strategy::OnDemand, |a| {
        let pfn = a
            .alloc(AllocRequest::order(4).within(Constraint::Dma32))
            .unwrap();
        assert!(pfn.addr() < 4 * GIB);
        let normal = a.zone(NodeId(0), ZoneType::Normal).unwrap();
        assert_eq!(normal.free, 0);
        assert_eq!(normal.uninitialised, normal.present);
        let dma = a
            .alloc(AllocRequest::order(0).within(Constraint::Dma))
            .unwrap();
        assert!(dma.addr() < 16 * MIB);
        // An unconstrained allocation grows Normal rather than eat into DMA32.
        let any = a.alloc(AllocRequest::order(0)).unwrap();
        assert!(any.addr() >= 4 * GIB);
    });
}

/// Lesson: holes inside a section left garbage descriptors once memmaps were no
/// longer pre-zeroed. Here holes and reserved ranges get reserved descriptors.
#[test]
fn holes_and_reserved_pages_inside_a_section() {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x1000, 0x9fc00, RangeKind::Usable, NodeId(0))
        .add(0x9fc00, 0xa0000, RangeKind::Other, NodeId(0))
        .add(0x100000, 0x180000, RangeKind::Usable, NodeId(0))
        .add(0x180000, 0x200000, RangeKind::Reserved, NodeId(0))
        .add(0x200000, 0x3ff800, RangeKind::Usable, NodeId(0))
        .add(0x400000, 0x800000, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    with_allocator(&l, Strategy::OnDemand, |a| {
        let hole = a.page_or_init(Pfn(0xb0)).unwrap();
        assert_eq!(hole.state(), PageState::Reserved);
        assert_eq!(hole.zone(), None);
        let reserved = a.page(Pfn(0x190)).unwrap();
        assert_eq!(reserved.state(), PageState::Reserved);
        assert_eq!(reserved.zone(), Some((NodeId(0), ZoneType::Dma)));
        // pfn 0 is not in the map at all, and the last page of the third range is
        // partial, so shrinks away.
        assert_eq!(a.page(Pfn(0)).unwrap().state(), PageState::Reserved);
        assert_eq!(a.page(Pfn(0x3ff)).unwrap().state(), PageState::Reserved);
        // Everything handed out is usable.
        let mut got = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(0)) {
            let usable = (1..0x9f).contains(&p.0)
                || (0x100..0x180).contains(&p.0)
                || (0x200..0x3ff).contains(&p.0)
                || (0x400..0x800).contains(&p.0);
            assert!(usable, "{p} handed out");
            got.push(p);
        }
        assert_eq!(got.len() as u64, l.usable_pages());
        free_all(a, got, 0);
        check_fully_coalesced(a);
    });
}

/// Lesson: a reader of descriptors (`/proc/kpageflags`) read garbage. Here a look-up
/// of a never-initialised page says so, or initialises first.
#[test]
fn look_up_of_a_never_initialised_page() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let pfn = Pfn(40 * MIB / PAGE_SIZE);
        assert_eq!(a.page(pfn).unwrap_err(), LookupError::Uninitialised { pfn });
        assert!(matches!(
            a.free(FreeRequest::pfn(pfn).order(0)),
            Err(FreeError::Lookup(LookupError::Uninitialised { .. }))
        ));
        let page = a.page_or_init(pfn).unwrap();
        assert!(matches!(
            page.state(),
            PageState::Tail | PageState::Free { .. }
        ));
        assert_eq!(a.stats().by_lookup, 1);
        assert!(a.page(pfn).is_ok());
        let past = Pfn(1 << 30);
        assert_eq!(
            a.page(past).unwrap_err(),
            LookupError::NotPresent { pfn: past }
        );
    });
}

/// Lesson: memory free but not initialised must count as available, or the system
/// reclaims while it could simply initialise.
#[test]
fn uninitialised_memory_counts_as_available() {
    let l = simple(128 * MIB, 4 * MIB);
    for strategy in Strategy::ALL {
        with_allocator(&l, strategy, |a| {
            assert_eq!(a.stats().available_pages, l.usable_pages());
            let p = a.alloc(AllocRequest::order(2)).unwrap();
            assert_eq!(a.stats().available_pages, l.usable_pages() - 4);
            a.free(FreeRequest::pfn(p).order(2)).unwrap();
            assert_eq!(a.stats().available_pages, l.usable_pages());
        });
    }
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let p = a.alloc(AllocRequest::order(3)).unwrap();
        let before: Vec<_> = a.zones().collect();
        assert_eq!(
            a.free(FreeRequest::pfn(p).order(2)),
            Err(FreeError::WrongOrder {
                pfn: p,
                allocated: 3,
                given: 2
            })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(Pfn(p.0 + 1)).order(0)),
            Err(FreeError::NotBlockHead { pfn: Pfn(p.0 + 1) })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(Pfn(3)).order(0)),
            Err(FreeError::Reserved { pfn: Pfn(3) })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(p).order(11)),
            Err(FreeError::OrderTooLarge { order: 11 })
        );
        assert!(matches!(
            a.free(FreeRequest::pfn(Pfn(1 << 40)).order(0)),
            Err(FreeError::Lookup(LookupError::NotPresent { .. }))
        ));
        assert_eq!(before, a.zones().collect::<Vec<_>>());
        a.free(FreeRequest::pfn(p).order(3)).unwrap();
        assert!(matches!(
            a.free(FreeRequest::pfn(p).order(3)),
            Err(FreeError::DoubleFree { .. } | FreeError::NotBlockHead { .. })
        ));
        assert_eq!(
            a.alloc(AllocRequest::order(11)),
            Err(AllocError::OrderTooLarge { order: 11 })
        );
        assert_eq!(
            a.alloc(AllocRequest::order(0).node(NodeId(3))),
            Err(AllocError::UnknownNode { node: NodeId(3) })
        );
        check_fully_coalesced(a);
    });
}

#[test]
fn growth_prefers_the_preferred_node() {
    let l = two_nodes(MIB, 5 * GIB, 6 * GIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let p = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(1), ZoneType::Normal)));
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(0), ZoneType::Normal)));
        // Node 1 has no DMA32: a DMA32 allocation preferring it falls to node 0.
        let p = a
            .alloc(
                AllocRequest::order(0)
                    .within(Constraint::Dma32)
                    .node(NodeId(1)),
            )
            .unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(0), ZoneType::Dma32)));
    });
}

#[test]
fn large_orders_grow_several_sections_around_holes() {
    // Every 4 MiB section has a hole in its middle, so no section alone holds an
    // order-10 block: the grow path must keep going until it finds whole blocks.
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB);
    for s in 0..16u64 {
        let base = s * 4 * MIB;
        b.add(base + 0x1000, base + 2 * MIB, RangeKind::Usable, NodeId(0))
            .add(
                base + 2 * MIB + 0x1000,
                base + 4 * MIB,
                RangeKind::Usable,
                NodeId(0),
            );
    }
    b.add(64 * MIB, 72 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    with_allocator(&l, Strategy::OnDemand, |a| {
        let p = a.alloc(AllocRequest::order(MAX_ORDER)).unwrap();
        assert!(p.addr() >= 64 * MIB);
        assert!(a.stats().by_growth >= 1);
    });
}

#[test]
fn a_range_on_a_node_boundary_never_merges_across_nodes() {
    let l = two_nodes(MIB, 10 * MIB + 0x3000, 20 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Deferred, |a| {
        run_workers(a);
        let mut all = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(0)) {
            all.push(p);
        }
        free_all(a, all, 0);
        check_fully_coalesced(a);
        let n0 = a
            .zone(NodeId(0), ZoneType::Dma)
            .map(|z| z.free_blocks)
            .unwrap_or_default();
        let n1 = a
            .zone(NodeId(1), ZoneType::Dma)
            .map(|z| z.free_blocks)
            .unwrap_or_default();
        assert_eq!(
            n0.iter().zip(0..).map(|(c, o)| c << o).sum::<u64>(),
            9 * 256 + 3
        );
        assert_eq!(
            n1.iter().zip(0..).map(|(c, o)| c << o).sum::<u64>(),
            6 * 256 - 3
        );
    });
}

/// Two usable ranges that touch are one run of memory: their blocks merge across
/// the seam, on initialisation and after every free.
#[test]
fn touching_ranges_merge_across_the_seam() {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0, 2 * MIB, RangeKind::Usable, NodeId(0))
        .add(2 * MIB, 6 * MIB, RangeKind::Usable, NodeId(0))
        .add(6 * MIB, 8 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    with_allocator(&l, Strategy::Eager, |a| {
        assert_eq!(a.unmerged_free_blocks(), 0);
        assert_eq!(
            a.zone(NodeId(0), ZoneType::Dma)
                .map(|z| z.free_blocks)
                .unwrap_or_default()[MAX_ORDER as usize],
            2
        );
        let p = a.alloc(AllocRequest::order(MAX_ORDER)).unwrap();
        a.free(FreeRequest::pfn(p).order(MAX_ORDER)).unwrap();
        check_fully_coalesced(a);
    });
}
