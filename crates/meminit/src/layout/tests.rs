//! Unit tests of the layout: counting like Linux, validation, runs.

use super::*;

fn qemu_2g() -> LayoutBuilder {
    // Early memory node ranges of Linux 6.1 under QEMU pc with 2 GiB.
    let mut b = LayoutBuilder::new();
    b.add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0)).add(
        0x100000,
        0x7ffe0000,
        RangeKind::Usable,
        NodeId(0),
    );
    b
}

#[test]
fn counts_like_linux_for_qemu_2g() {
    let l = qemu_2g().build().unwrap();
    let n = l.node(NodeId(0)).unwrap();
    assert_eq!(n.present, 524158);
    assert_eq!(n.zones[0].present, 3998);
    assert_eq!(n.zones[0].spanned(), 4095);
    assert_eq!(n.zones[1].present, 520160);
    assert_eq!(n.zones[1].spanned(), 520160);
    assert_eq!(n.zones[2].spanned(), 0);
    assert_eq!(l.section_count(), 16);
}

#[test]
fn usable_shrinks_inward_and_reserved_grows_outward() {
    let mut b = LayoutBuilder::new();
    b.add(0x800, 0x5800, RangeKind::Usable, NodeId(0))
        .add(0x5800, 0x6001, RangeKind::Reserved, NodeId(0))
        .add(0x6001, 0x9000, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    let runs: Vec<_> = l.present_runs(Pfn(0)..Pfn(u64::MAX)).collect();
    assert_eq!(runs.len(), 3);
    let raw = |r: &PresentRun| (r.start.0, r.end.0, r.reserved);
    assert_eq!(raw(&runs[0]), (1, 5, false));
    assert_eq!(raw(&runs[1]), (5, 7, true));
    assert_eq!(raw(&runs[2]), (7, 9, false));
}

#[test]
fn rejects_bad_ranges_naming_them() {
    let mut b = LayoutBuilder::new();
    b.add(0, 0x100000, RangeKind::Usable, NodeId(0)).add(
        0x80000,
        0x200000,
        RangeKind::Usable,
        NodeId(0),
    );
    match b.build() {
        Err(LayoutError::Overlap {
            first_index: 0,
            second_index: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut b = LayoutBuilder::new();
    b.add(0x2000, 0x1000, RangeKind::Usable, NodeId(0));
    assert!(matches!(
        b.build(),
        Err(LayoutError::Inverted { index: 0, .. })
    ));
    let mut b = LayoutBuilder::new();
    b.add(0, 1 << 53, RangeKind::Usable, NodeId(0));
    assert!(matches!(
        b.build(),
        Err(LayoutError::BeyondArchLimit { .. })
    ));
    let mut b = LayoutBuilder::new();
    b.add(0, 1 << 20, RangeKind::Usable, NodeId(16));
    assert!(matches!(b.build(), Err(LayoutError::TooManyNodes { .. })));
    let mut b = LayoutBuilder::new();
    b.add(0x10, 0xff0, RangeKind::Usable, NodeId(0));
    assert_eq!(b.build().unwrap_err(), LayoutError::NoUsableMemory);
    let mut b = qemu_2g();
    b.section_size(3 << 20);
    assert!(matches!(b.build(), Err(LayoutError::BadSectionSize { .. })));
    let msg = format!(
        "{}",
        LayoutError::Empty {
            index: 4,
            range: MemoryRange::new(0x1000, 0x1000, RangeKind::Usable, NodeId(0))
        }
    );
    assert_eq!(msg, "range #4 [0x1000, 0x1000) usable on node 0 is empty");
}

#[test]
fn too_many_ranges_is_an_error() {
    let mut b = LayoutBuilder::new();
    for i in 0..=MAX_RANGES as u64 {
        b.add(i << 20, (i << 20) + 4096, RangeKind::Usable, NodeId(0));
    }
    assert!(matches!(b.build(), Err(LayoutError::TooManyRanges { .. })));
}

#[test]
fn runs_split_at_zone_boundaries_and_nodes() {
    let mut b = LayoutBuilder::new();
    b.add(0, 6 << 30, RangeKind::Usable, NodeId(0)).add(
        6 << 30,
        8 << 30,
        RangeKind::Usable,
        NodeId(1),
    );
    let l = b.build().unwrap();
    let zones: Vec<_> = l
        .present_runs(Pfn(0)..Pfn(u64::MAX))
        .map(|r| (r.node.0, r.zone))
        .collect();
    assert_eq!(
        zones,
        [
            (0, ZoneType::Dma),
            (0, ZoneType::Dma32),
            (0, ZoneType::Normal),
            (1, ZoneType::Normal)
        ]
    );
    assert_eq!(
        l.node(NodeId(1)).unwrap().zones[2].present,
        (2 << 30) / PAGE_SIZE
    );
    assert_eq!(l.node(NodeId(1)).unwrap().zones[1].spanned(), 0);
    assert_eq!(l.node_of(Pfn::containing(6 << 30)), Some(NodeId(1)));
    assert_eq!(l.node_of(Pfn::containing(8 << 30)), None);
}

/// The README's example: a reservation inside usable memory, as Linux's
/// memblock allows. Its pages are present and reserved, the rest usable.
#[test]
fn reserved_ranges_may_sit_inside_usable_ones() {
    let mut b = LayoutBuilder::new();
    b.add(0x1000, 0x9fc00, RangeKind::Usable, NodeId(0))
        .add(0x100000, 0xbffe0000, RangeKind::Usable, NodeId(0))
        .add(0x1000000, 0x3000000, RangeKind::Reserved, NodeId(0))
        .add(0xfec00000, 0x1_0000_0000, RangeKind::Other, NodeId(0));
    let l = b.build().unwrap();
    let runs: Vec<_> = l
        .present_runs(Pfn(0)..Pfn(u64::MAX))
        .map(|r| (r.start.0, r.end.0, r.zone, r.reserved))
        .collect();
    assert_eq!(
        runs,
        [
            (0x1, 0x9f, ZoneType::Dma, false),
            (0x100, 0x1000, ZoneType::Dma, false),
            (0x1000, 0x3000, ZoneType::Dma32, true),
            (0x3000, 0xbffe0, ZoneType::Dma32, false),
        ]
    );
    let n = l.node(NodeId(0)).unwrap();
    assert_eq!(n.present, 0x9e + 0xbffe0 - 0x100);
    assert_eq!(n.zones[ZoneType::Dma32 as usize].reserved, 0x2000);
    assert_eq!(n.zones[ZoneType::Dma32 as usize].present, 0xbffe0 - 0x1000);
    assert_eq!(l.usable_pages(), n.present - 0x2000);
    // Linux prints the node ranges of memory, reservations included.
    let ranges: Vec<_> = l.node_ranges().collect();
    assert_eq!(
        ranges,
        [
            (Pfn(0x1)..Pfn(0x9f), NodeId(0)),
            (Pfn(0x100)..Pfn(0xbffe0), NodeId(0))
        ]
    );

    // Unaligned, at the edge, overlapping each other, and across two usable
    // ranges: every page a reservation touches is reserved.
    let mut b = LayoutBuilder::new();
    b.add(0x0, 0x10000, RangeKind::Usable, NodeId(1))
        .add(0x10000, 0x20000, RangeKind::Usable, NodeId(1))
        .add(0x0, 0x1800, RangeKind::Reserved, NodeId(1))
        .add(0x1000, 0x2001, RangeKind::Reserved, NodeId(1))
        .add(0xf800, 0x10800, RangeKind::Reserved, NodeId(1))
        .add(0x1f000, 0x20000, RangeKind::Reserved, NodeId(1));
    let l = b.build().unwrap();
    let runs: Vec<_> = l
        .present_runs(Pfn(0)..Pfn(u64::MAX))
        .map(|r| (r.start.0, r.end.0, r.node.0, r.reserved))
        .collect();
    assert_eq!(
        runs,
        [
            (0, 3, 1, true),
            (3, 0xf, 1, false),
            (0xf, 0x11, 1, true),
            (0x11, 0x1f, 1, false),
            (0x1f, 0x20, 1, true),
        ]
    );
}

#[test]
fn overlaps_that_make_no_sense_stay_errors() {
    let overlap = |ranges: &[(u64, u64, RangeKind, u32)]| {
        let mut b = LayoutBuilder::new();
        for &(s, e, k, n) in ranges {
            b.add(s, e, k, NodeId(n));
        }
        b.build().unwrap_err()
    };
    use RangeKind::{Other, Reserved, Usable};
    // Two usable ranges.
    assert!(matches!(
        overlap(&[(0, 0x10000, Usable, 0), (0x2000, 0x3000, Usable, 0)]),
        LayoutError::Overlap {
            first_index: 0,
            second_index: 1,
            ..
        }
    ));
    // `other` with usable or reserved, in either order.
    for kind in [Usable, Reserved] {
        assert!(matches!(
            overlap(&[(0, 0x10000, kind, 0), (0x8000, 0x20000, Other, 0)]),
            LayoutError::Overlap {
                first_index: 0,
                second_index: 1,
                ..
            }
        ));
        assert!(matches!(
            overlap(&[
                (0x100000, 0x200000, Usable, 0),
                (0, 0x101000, Other, 0),
                (0x100000, 0x101000, kind, 0)
            ]),
            LayoutError::Overlap { first_index: 1, .. }
        ));
    }
    // A reservation inside usable memory of another node: named, both ranges.
    let e = overlap(&[(0, 0x10000, Usable, 0), (0x2000, 0x3000, Reserved, 1)]);
    assert!(matches!(
        e,
        LayoutError::NodeConflict {
            first_index: 0,
            second_index: 1,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "range #1 [0x2000, 0x3000) reserved on node 1 overlaps range #0 [0x0, 0x10000) usable on node 0, which is on another node"
    );
    // Reserved alone is reserved RAM: no usable memory.
    assert_eq!(
        overlap(&[(0, 0x10000, Reserved, 0), (0x1000, 0x3000, Reserved, 0)]),
        LayoutError::NoUsableMemory
    );
    // All of a usable range reserved.
    assert_eq!(
        overlap(&[(0x1000, 0x3000, Usable, 0), (0x800, 0x3800, Reserved, 0)]),
        LayoutError::NoUsableMemory
    );
}

/// Every public function answers any argument without panicking.
#[test]
fn layout_functions_are_total() {
    let l = qemu_2g().build().unwrap();
    let beyond = MAX_PFN >> l.section_shift();
    for index in [
        usize::MAX,
        usize::MAX / 2,
        beyond as usize,
        beyond as usize - 1,
    ] {
        let pfns = l.section_pfns(index);
        assert!(
            pfns.start <= pfns.end && pfns.end <= Pfn(MAX_PFN),
            "{index}: {pfns:?}"
        );
        assert!(!l.section_has_present(index));
        for zone in ZoneType::ALL {
            for node in [NodeId(0), NodeId(1), NodeId(u32::MAX)] {
                assert_eq!(l.section_zone_pages(index, node, zone), (0, 0));
            }
        }
    }
    assert_eq!(l.section_pfns(beyond as usize), Pfn(MAX_PFN)..Pfn(MAX_PFN));
    assert_eq!(l.section_pfns(1), Pfn(1 << 15)..Pfn(2 << 15));
    assert_eq!(l.section_of(Pfn(u64::MAX)), (u64::MAX >> 15) as usize);
    assert_eq!(l.node_of(Pfn(u64::MAX)), None);
    assert!(l.node(NodeId(u32::MAX)).is_none() && l.node(NodeId(MAX_NODES as u32)).is_none());
    assert_eq!(l.present_runs(Pfn(u64::MAX)..Pfn(0)).count(), 0);
    assert_eq!(l.present_runs(Pfn(u64::MAX)..Pfn(u64::MAX)).count(), 0);
    assert_eq!(l.present_runs(Pfn(5)..Pfn(3)).count(), 0);
    assert_eq!(Pfn(u64::MAX).addr(), u64::MAX);
    assert_eq!(Pfn(u64::MAX).checked_addr(), None);
    assert_eq!(Pfn(u64::MAX >> 12).checked_addr(), Some(!0xfff));
    let inverted = ZoneSpan {
        start_pfn: Pfn(10),
        end_pfn: Pfn(5),
        ..ZoneSpan::default()
    };
    assert_eq!(inverted.spanned(), 0);
    assert_eq!(ZoneType::of_pfn(Pfn(u64::MAX)), ZoneType::Normal);
}
