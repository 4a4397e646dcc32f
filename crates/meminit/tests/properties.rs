//! Property tests: random memory maps, and random allocate/free/worker/look-up
//! sequences under each strategy, checked against the invariants of DESIGN.md.

#![cfg(not(miri))]

mod common;

use std::collections::HashMap;

use common::*;
use meminit::NodeId;
use meminit::Strategy as InitStrategy;
use meminit::{
    AllocError, AllocFlags, AllocRequest, Config, Constraint, CpuId, FreeRequest, Granularity,
    HotplugError, LayoutBuilder, LayoutError, PageState, Pfn, RangeKind, ZoneType, MAX_ORDER,
    PAGE_SIZE,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// A memory map as ranges in address order: `(gap before, length, kind, node)`,
/// neither gaps nor lengths aligned to pages.
fn map_strategy(
    max_len: u64,
    max_ranges: usize,
) -> impl Strategy<Value = Vec<(u64, u64, RangeKind, u32)>> {
    let kind = prop_oneof![
        6 => Just(RangeKind::Usable),
        1 => Just(RangeKind::Reserved),
        1 => Just(RangeKind::Other),
    ];
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..4 * MIB, 0..64 * MIB],
            prop_oneof![1..64 * 1024u64, 1..max_len],
            kind,
            prop_oneof![3 => Just(0u32), 1 => 0..3u32],
        ),
        1..max_ranges,
    )
}

fn build(
    ranges: &[(u64, u64, RangeKind, u32)],
    section: u64,
) -> (LayoutBuilder, Vec<(u64, u64, RangeKind, u32)>) {
    let mut b = LayoutBuilder::new();
    b.section_size(section);
    let mut at = 0;
    let mut placed = Vec::new();
    for &(gap, len, kind, node) in ranges {
        let start = at + gap;
        b.add(start, start + len, kind, NodeId(node));
        placed.push((start, start + len, kind, node));
        at = start + len;
    }
    (b, placed)
}

/// Present and reserved pages per (node, zone), page by page from the raw ranges.
fn naive_counts(placed: &[(u64, u64, RangeKind, u32)]) -> HashMap<(u8, ZoneType), (u64, u64)> {
    let mut pages: std::collections::BTreeMap<u64, (u32, bool)> = Default::default();
    for &(s, e, kind, node) in placed {
        match kind {
            RangeKind::Usable => {
                for p in s.div_ceil(PAGE_SIZE)..e / PAGE_SIZE {
                    pages.insert(p, (node, false));
                }
            }
            RangeKind::Reserved => {
                for p in s / PAGE_SIZE..e.div_ceil(PAGE_SIZE) {
                    pages.entry(p).or_insert((node, true));
                }
            }
            RangeKind::Other | RangeKind::Hotplug => {}
        }
    }
    let mut out: HashMap<(u8, ZoneType), (u64, u64)> = HashMap::new();
    for (p, (node, reserved)) in pages {
        let e = out
            .entry((node as u8, ZoneType::of_pfn(Pfn(p))))
            .or_default();
        e.0 += 1;
        e.1 += reserved as u64;
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        order: u32,
        constraint: Constraint,
        node: usize,
        /// The simulated CPU, or `None` for the zones directly.
        cpu: Option<u32>,
        /// Whether it is `MOVABLE`.
        movable: bool,
    },
    Free {
        pick: usize,
        cpu: Option<u32>,
    },
    Drain {
        cpu: u32,
    },
    Worker {
        node: usize,
    },
    Lookup {
        offset: u64,
    },
    /// An idle-time pass: give-back alone, or with free page reporting.
    Idle {
        report: bool,
    },
    /// Adds or removes chunks `first..first + len` of the hot-pluggable range
    /// (refused if the map has none, or past its end).
    Hotplug {
        add: bool,
        first: u64,
        len: u64,
    },
    /// `n` blocks of a cached order allocated on CPU `from`, then freed on
    /// CPU `to`: past a high mark, whole batches go through the depots.
    Churn {
        order: u32,
        from: u32,
        to: u32,
        n: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let constraint = prop_oneof![
        4 => Just(Constraint::Any),
        1 => Just(Constraint::Dma32),
        1 => Just(Constraint::Dma),
    ];
    let order = prop_oneof![6 => 0..3u32, 2 => 3..8u32, 1 => 8..=MAX_ORDER];
    // A few CPUs, and now and then no CPU at all.
    let cpu = || prop_oneof![4 => (0..4u32).prop_map(Some), 1 => Just(None)];
    prop_oneof![
        8 => (order, constraint, 0..3usize, cpu(), any::<bool>()).prop_map(|(order, constraint, node, cpu, movable)| Op::Alloc { order, constraint, node, cpu, movable }),
        6 => (any::<usize>(), cpu()).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        1 => (0..4u32).prop_map(|cpu| Op::Drain { cpu }),
        1 => (0..3usize).prop_map(|node| Op::Worker { node }),
        1 => any::<u64>().prop_map(|offset| Op::Lookup { offset }),
        2 => any::<bool>().prop_map(|report| Op::Idle { report }),
        2 => (any::<bool>(), 0..8u64, 1..8u64).prop_map(|(add, first, len)| Op::Hotplug { add, first, len }),
        1 => (prop_oneof![3 => 0..4u32, 1 => Just(meminit::PAGEBLOCK_ORDER)], 0..4u32, 0..4u32, 1..400usize)
            .prop_map(|(order, from, to, n)| Op::Churn { order, from, to, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any map gives a layout or a typed error, never a panic; a layout counts what a
    /// page-by-page reading of the same ranges counts.
    #[test]
    fn layouts_count_pages_like_a_page_by_page_reading(
        ranges in map_strategy(96 * MIB, 12),
        section in prop_oneof![Just(4 * MIB), Just(8 * MIB), Just(128 * MIB)],
    ) {
        let (b, placed) = build(&ranges, section);
        match b.build() {
            Ok(layout) => {
                let naive = naive_counts(&placed);
                let mut seen = 0;
                for (n, node) in layout.nodes() {
                    for zt in ZoneType::ALL {
                        let z = node.zones[zt as usize];
                        let (present, reserved) = naive.get(&(n.0 as u8, zt)).copied().unwrap_or((0, 0));
                        prop_assert_eq!((z.present, z.reserved), (present, reserved), "node {} {:?}", n, zt);
                        prop_assert!(z.present <= z.spanned());
                        seen += z.present;
                    }
                }
                prop_assert_eq!(seen, layout.present_pages());
                prop_assert!(layout.usable_pages() > 0);
            }
            Err(LayoutError::NoUsableMemory) => {
                let usable: u64 = naive_counts(&placed).values().map(|(p, r)| p - r).sum();
                prop_assert_eq!(usable, 0);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Arbitrary ranges, overlapping or not: a layout or an error naming a range.
    #[test]
    fn arbitrary_ranges_never_panic(
        ranges in prop::collection::vec((any::<u64>(), any::<u64>(), 0..4u8, 0..20u32), 0..20),
        section_shift in 10u32..60,
    ) {
        let mut b = LayoutBuilder::new();
        b.section_size(1 << section_shift);
        for (s, e, k, n) in ranges {
            let kind = [RangeKind::Usable, RangeKind::Reserved, RangeKind::Other, RangeKind::Hotplug][k as usize];
            b.add(s, e, kind, NodeId(n));
        }
        if let Err(e) = b.build() {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Random operation sequences under each strategy, chunk size and memmap
    /// granularity keep every invariant, and once all is freed and initialised
    /// every zone coalesces back whole. The maps' holes and node boundaries fall
    /// anywhere, inside chunks too.
    #[test]
    fn operation_sequences_keep_the_invariants(
        ranges in map_strategy(48 * MIB, 8),
        section in prop_oneof![Just(4 * MIB), Just(8 * MIB)],
        strategy in prop_oneof![Just(InitStrategy::Eager), Just(InitStrategy::Deferred), Just(InitStrategy::OnDemand)],
        ops in prop::collection::vec(op_strategy(), 1..120),
        chunk in prop_oneof![Just(4 * MIB), Just(8 * MIB)],
        granularity in prop_oneof![Just(Granularity::Section), Just(Granularity::Chunk)],
        give_back in any::<bool>(),
        reserve in prop_oneof![Just(0u64), Just(4 * MIB)],
        hotplug in any::<bool>(),
    ) {
        let (mut b, placed) = build(&ranges, section);
        // Two sections of hot-pluggable memory a section past the map, on node 0.
        let end = placed.last().map_or(0, |r| r.1);
        let hot_start = end.div_ceil(section) * section + section;
        let hot_end = hot_start + 2 * section;
        if hotplug {
            b.add(hot_start, hot_end, RangeKind::Hotplug, NodeId(0));
        }
        let Ok(layout) = b.build() else { return Ok(()) };
        let config = Config {
            chunk_size: chunk.min(section),
            give_back,
            give_back_reserve: reserve,
            ..Config::new(strategy)
        };
        with_allocator_chunked(&layout, config, granularity, |a| -> Result<(), TestCaseError> {
            let mut ledger = Ledger::default();
            let nodes = layout.node_count();
            for op in ops {
                match op {
                    Op::Alloc { order, constraint, node, cpu, movable } => {
                        let flags = if movable { AllocFlags::MOVABLE } else { AllocFlags::NONE };
                        let node = NodeId((node % nodes) as u32);
                        let request = AllocRequest::order(order)
                            .on_cpu(cpu.map(CpuId))
                            .within(constraint)
                            .node(node)
                            .flags(flags);
                        let got = a.alloc(request);
                        match got {
                            Ok(pfn) => {
                                prop_assert_eq!(pfn.0 % (1 << order), 0);
                                prop_assert_eq!(a.page(pfn).unwrap().mobility(), Some(flags.class()));
                                let (_, zone) = a.page(pfn).unwrap().zone().unwrap();
                                prop_assert!(zone <= constraint.highest_zone());
                                ledger.record(a, pfn, order);
                            }
                            Err(AllocError::OutOfMemory { .. }) => {
                                // Truly exhausted: nothing eligible is left
                                // uninitialised, in a CPU's cache, or free in a
                                // block of the order or larger, of any class.
                                for z in a.zones().filter(|z| z.zone <= constraint.highest_zone()) {
                                    prop_assert_eq!(z.uninitialised, 0, "{:?}", z);
                                    prop_assert_eq!(z.cached, 0, "{:?}", z);
                                    prop_assert_eq!(z.depot, 0, "{:?}", z);
                                    let blocks = a.zone(z.node, z.zone).map(|z| z.free_blocks).unwrap_or_default();
                                    prop_assert!(
                                        blocks[order as usize..].iter().all(|&b| b == 0),
                                        "{:?}: {:?}", z, blocks
                                    );
                                }
                            }
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Drain { cpu } => {
                        a.drain(Some(CpuId(cpu))).unwrap();
                        prop_assert_eq!(a.drain(Some(CpuId(cpu))).unwrap(), 0);
                    }
                    Op::Free { pick, cpu } => {
                        if !ledger.blocks.is_empty() {
                            let mut keys: Vec<u64> = ledger.blocks.keys().copied().collect();
                            keys.sort_unstable();
                            let pfn = keys[pick % keys.len()];
                            let order = ledger.release(a, pfn);
                            let free = FreeRequest::pfn(Pfn(pfn)).order(order);
                            a.free(free.on_cpu(cpu.map(CpuId))).unwrap();
                            // A double free is refused wherever the block went.
                            prop_assert!(a.free(FreeRequest::pfn(Pfn(pfn)).order(order)).is_err());
                            prop_assert!(a.free(FreeRequest::pfn(Pfn(pfn)).on(CpuId(0)).order(order)).is_err());
                        }
                    }
                    Op::Worker { node } => {
                        a.run_deferred_worker(NodeId((node % nodes) as u32));
                    }
                    Op::Idle { report } => {
                        let cached: Vec<u64> = a.zones().map(|z| z.cached).collect();
                        let stats = if report {
                            a.report_free(&mut meminit::NoReporter).unwrap()
                        } else {
                            a.give_back()
                        };
                        if !give_back {
                            prop_assert_eq!(stats.chunks_given_back, 0);
                        }
                        // Nothing held, nothing in a CPU's cache, goes back.
                        for (&pfn, &order) in &ledger.blocks {
                            let page = a.page(Pfn(pfn));
                            prop_assert!(page.is_ok(), "held {:#x} given back", pfn);
                            prop_assert_eq!(page.unwrap().state(), PageState::Allocated { order });
                        }
                        let after: Vec<u64> = a.zones().map(|z| z.cached).collect();
                        prop_assert_eq!(cached, after);
                        // A pass that runs flushes the depots first: their
                        // batches pin chunks (`give_back` alone does nothing
                        // when give-back is off).
                        if report || give_back {
                            prop_assert!(a.zones().all(|z| z.depot == 0));
                        }
                        prop_assert_eq!(a.unmerged_free_blocks(), 0);
                    }
                    Op::Hotplug { add, first, len } => {
                        let chunk_pages = chunk.min(section) / PAGE_SIZE;
                        let start = hot_start / PAGE_SIZE + first * chunk_pages;
                        let range = Pfn(start)..Pfn(start + len * chunk_pages);
                        let inside = hotplug && range.end.0 <= hot_end / PAGE_SIZE;
                        if add {
                            match a.add_memory(range.clone()) {
                                Ok(pages) => prop_assert_eq!(pages, len * chunk_pages),
                                Err(HotplugError::AlreadyPresent { .. }) => prop_assert!(inside),
                                Err(e) => prop_assert!(!inside, "{e}"),
                            }
                        } else {
                            match a.remove_memory(range.clone()) {
                                Ok(r) => {
                                    prop_assert!(inside);
                                    prop_assert_eq!(r.pages + r.absent + r.kept, len * chunk_pages);
                                }
                                Err(e) => prop_assert!(!inside, "{e}"),
                            }
                        }
                        // No page held is ever removed.
                        for (&pfn, &order) in &ledger.blocks {
                            let page = a.page(Pfn(pfn));
                            prop_assert!(page.is_ok(), "held {:#x} removed", pfn);
                            prop_assert_eq!(page.unwrap().state(), PageState::Allocated { order });
                        }
                    }
                    Op::Churn { order, from, to, n } => {
                        let mut got = Vec::new();
                        for _ in 0..n {
                            match a.alloc(AllocRequest::order(order).on(CpuId(from))) {
                                Ok(pfn) => {
                                    ledger.record(a, pfn, order);
                                    got.push(pfn);
                                }
                                Err(AllocError::OutOfMemory { .. }) => break,
                                Err(e) => prop_assert!(false, "{e}"),
                            }
                        }
                        for pfn in got {
                            ledger.release(a, pfn.0);
                            a.free(FreeRequest::pfn(pfn).on(CpuId(to)).order(order)).unwrap();
                            prop_assert!(a.free(FreeRequest::pfn(pfn).on(CpuId(from)).order(order)).is_err());
                        }
                    }
                    Op::Lookup { offset } => {
                        let pfn = Pfn(offset % layout.end_pfn().0);
                        match a.page_or_init(pfn) {
                            Ok(page) => {
                                if layout.node_of(pfn).is_none() {
                                    prop_assert_eq!(page.state(), PageState::Reserved);
                                }
                            }
                            Err(e) => prop_assert!(layout.node_of(pfn).is_none(), "{e}"),
                        }
                    }
                }
                check_counts(a, &ledger.per_zone);
            }
            let held: Vec<(u64, u32)> = ledger.blocks.iter().map(|(&p, &o)| (p, o)).collect();
            for (pfn, order) in held {
                ledger.release(a, pfn);
                a.free(FreeRequest::pfn(Pfn(pfn)).order(order)).unwrap();
            }
            if hotplug {
                // Nothing is held: every hot-plugged page goes.
                let all = Pfn(hot_start / PAGE_SIZE)..Pfn(hot_end / PAGE_SIZE);
                let removed = a.remove_memory(all).unwrap();
                prop_assert!(removed.is_complete(), "{:?}", removed);
            }
            init_all(a);
            check_counts(a, &ledger.per_zone);
            check_fully_coalesced(a);
            Ok(())
        })?;
    }
}
