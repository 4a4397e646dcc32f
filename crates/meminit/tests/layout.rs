//! Memory maps with reservations inside memory, against a page-by-page reading of
//! the same ranges; and the layout's functions on any argument.

#![cfg(not(miri))]

use std::collections::BTreeMap;

use meminit::{LayoutBuilder, LayoutError, RangeKind, ZoneType, PAGE_SIZE};
use meminit::{NodeId, Pfn};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

type Range = (u64, u64, RangeKind, u32);

/// Usable and other ranges in address order, then reserved ranges laid over them
/// (inside one range, across several, or sticking out), mostly on the node of the
/// range they start in.
fn map_strategy() -> impl Strategy<Value = Vec<Range>> {
    let base = prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..MIB, 0..8 * MIB],
            1..12 * MIB,
            prop_oneof![4 => Just(RangeKind::Usable), 1 => Just(RangeKind::Other)],
            prop_oneof![3 => Just(0u32), 1 => 0..2u32],
        ),
        1..8,
    );
    let over = prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0..16 * MIB,
            1..4 * MIB,
            prop::bool::weighted(0.1),
        ),
        0..6,
    );
    (base, over).prop_map(|(base, over)| {
        let mut at = 0;
        let mut ranges = Vec::new();
        for (gap, len, kind, node) in base {
            let start = at + gap;
            ranges.push((start, start + len, kind, node));
            at = start + len;
        }
        let placed = ranges.clone();
        for (pick, offset, len, other_node) in over {
            let &(s, e, _, node) = pick.get(&placed);
            let start = s + offset % (e - s);
            let node = if other_node { node ^ 1 } else { node };
            ranges.push((start, start + len, RangeKind::Reserved, node));
        }
        ranges
    })
}

/// What must go wrong, if anything: the first conflicting pair in address order.
fn naive_conflict(ranges: &[Range]) -> Option<(&'static str, usize, usize)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].0, i));
    for (at, &i) in order.iter().enumerate() {
        for &j in &order[..at] {
            let (a, b) = (ranges[j], ranges[i]);
            if a.1 <= b.0 {
                continue;
            }
            let ram = |k| k != RangeKind::Other;
            let both_usable = a.2 == RangeKind::Usable && b.2 == RangeKind::Usable;
            if !ram(a.2) || !ram(b.2) || both_usable {
                return Some(("overlap", j, i));
            }
            if a.3 != b.3 {
                return Some(("node", j, i));
            }
        }
    }
    None
}

/// Page -> (node, reserved): usable pages shrunk inward, reserved pages grown
/// outward and winning over usable ones; among reservations that share a page,
/// the one that starts first.
fn naive_pages(ranges: &[Range]) -> BTreeMap<u64, (u8, bool)> {
    let mut pages = BTreeMap::new();
    for &(s, e, kind, node) in ranges {
        if kind == RangeKind::Usable {
            for p in s.div_ceil(PAGE_SIZE)..e / PAGE_SIZE {
                pages.insert(p, (node as u8, false));
            }
        }
    }
    let mut reserved: Vec<(usize, &Range)> = ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.2 == RangeKind::Reserved)
        .collect();
    reserved.sort_by_key(|&(i, r)| (r.0, i));
    let mut taken = std::collections::HashSet::new();
    for (_, &(s, e, _, node)) in reserved {
        for p in s / PAGE_SIZE..e.div_ceil(PAGE_SIZE) {
            if taken.insert(p) {
                pages.insert(p, (node as u8, true));
            }
        }
    }
    pages
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A layout holds exactly the pages a page-by-page reading gives, with the same
    /// node and reservation, and counts them per zone; or the map is refused for
    /// the reason that reading finds, naming the ranges.
    #[test]
    fn reservations_inside_memory_read_like_a_page_by_page_reading(
        ranges in map_strategy(),
        section in prop_oneof![Just(4 * MIB), Just(128 * MIB)],
    ) {
        let mut b = LayoutBuilder::new();
        b.section_size(section);
        for &(s, e, k, n) in &ranges {
            b.add(s, e, k, NodeId(n));
        }
        let result = b.build();
        match (naive_conflict(&ranges), result) {
            (Some(("overlap", j, i)), Err(LayoutError::Overlap { first_index, second_index, .. }))
            | (Some(("node", j, i)), Err(LayoutError::NodeConflict { first_index, second_index, .. })) => {
                prop_assert_eq!((first_index, second_index), (j, i));
            }
            (Some(c), other) => prop_assert!(false, "expected {:?}, got {:?}", c, other.map(|_| ())),
            (None, Err(LayoutError::NoUsableMemory)) => {
                prop_assert!(naive_pages(&ranges).values().all(|&(_, r)| r));
            }
            (None, Err(e)) => prop_assert!(false, "unexpected error {}", e),
            (None, Ok(layout)) => {
                let naive = naive_pages(&ranges);
                let mut ours = BTreeMap::new();
                let mut zones: BTreeMap<(u8, ZoneType), (u64, u64)> = BTreeMap::new();
                for run in layout.present_runs(Pfn(0)..Pfn(u64::MAX)) {
                    prop_assert_eq!(run.zone, ZoneType::of_pfn(run.start));
                    for p in run.start.0..run.end.0 {
                        ours.insert(p, (run.node.0 as u8, run.reserved));
                    }
                }
                prop_assert_eq!(&ours, &naive);
                for (&p, &(node, reserved)) in &naive {
                    let z = zones.entry((node, ZoneType::of_pfn(Pfn(p)))).or_default();
                    z.0 += 1;
                    z.1 += reserved as u64;
                    prop_assert_eq!(layout.node_of(Pfn(p)), Some(NodeId(node.into())));
                }
                for (n, node) in layout.nodes() {
                    for zt in ZoneType::ALL {
                        let z = node.zones[zt as usize];
                        let want = zones.get(&(n.0 as u8, zt)).copied().unwrap_or_default();
                        prop_assert_eq!((z.present, z.reserved), want, "node {} {:?}", n, zt);
                        prop_assert!(z.present <= z.spanned());
                    }
                }
                prop_assert_eq!(layout.present_pages(), naive.len() as u64);
                prop_assert_eq!(
                    layout.usable_pages(),
                    naive.values().filter(|&&(_, r)| !r).count() as u64
                );
                // Section by section, the same pages again.
                for index in layout.memmap_sections() {
                    let pfns = layout.section_pfns(index);
                    let mut present = 0;
                    for zone in ZoneType::ALL {
                        for n in 0..2 {
                            present += layout.section_zone_pages(index, NodeId(n), zone).0;
                        }
                    }
                    prop_assert_eq!(present, naive.range(pfns.start.0..pfns.end.0).count() as u64);
                    prop_assert_eq!(layout.section_has_present(index), present > 0);
                }
            }
        }
    }

    /// Every public function of a layout answers any argument without panicking.
    #[test]
    fn layout_functions_answer_any_argument(
        index in prop_oneof![any::<usize>(), 0..4096usize, Just(usize::MAX)],
        pfn in prop_oneof![any::<u64>(), 0..1u64 << 22, Just(u64::MAX)],
        end in any::<u64>(),
        node in any::<u32>(),
    ) {
        let mut b = LayoutBuilder::new();
        b.add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
            .add(0x100000, 3 << 30, RangeKind::Usable, NodeId(0))
            .add(0x200000, 0x300000, RangeKind::Reserved, NodeId(0))
            .add(4 << 30, 6 << 30, RangeKind::Usable, NodeId(1));
        let layout = b.build().unwrap();
        let pfns = layout.section_pfns(index);
        prop_assert!(pfns.start <= pfns.end);
        let _ = layout.section_has_present(index);
        for zone in ZoneType::ALL {
            let (present, reserved) = layout.section_zone_pages(index, NodeId(node), zone);
            prop_assert!(reserved <= present && present <= layout.section_pages());
        }
        let _ = layout.section_of(Pfn(pfn));
        let _ = layout.node_of(Pfn(pfn));
        let _ = layout.node(NodeId(node));
        let _ = meminit::Pfn(pfn).addr();
        let _ = meminit::Pfn(pfn).checked_addr();
        prop_assert!(layout.present_runs(Pfn(pfn)..Pfn(end)).all(|r| r.start < r.end && r.end <= Pfn(end)));
    }
}
