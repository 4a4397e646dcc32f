//! Test machines: a layout, a memmap in host memory, a configurable memmap backing
//! ([`Double`], [`TestBacking`]), and invariant checks.
#![allow(dead_code)]

mod double;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use double::{Call, Double, Hook, Phase, TestBacking};

use std::collections::HashMap;
use std::mem::MaybeUninit;

use meminit::PresentRun;
use meminit::{
    Allocator, Config, CpuCache, FreeRequest, Granularity, InitError, Layout, LayoutBuilder,
    MemmapBacking, NodeId, Page, Pfn, RangeKind, SectionSlot, SliceBacking, Strategy, ZoneType,
    MAX_ORDER,
};

/// CPU caches lent to every test allocator.
pub const CPUS: usize = 8;

pub type Alloc<'a> = Allocator<'a, SliceBacking<'a>, parking_lot::RawMutex>;

/// What a test lends an allocator over `layout`: the memmap (allocated
/// uninitialised, so only what the allocator initialises is touched), the section
/// slots, and one page cache for each of [`CPUS`] CPUs.
pub struct Lent<R: lock_api::RawMutex> {
    pub memmap: Box<[MaybeUninit<Page>]>,
    pub slots: Vec<SectionSlot>,
    pub cpus: Vec<CpuCache<R>>,
}

impl<R: lock_api::RawMutex> Lent<R> {
    pub fn for_layout(layout: &Layout) -> Self {
        Lent {
            memmap: Box::new_uninit_slice(layout.memmap_descriptors() as usize),
            slots: (0..layout.section_count())
                .map(|_| SectionSlot::new())
                .collect(),
            cpus: (0..CPUS).map(|_| CpuCache::new()).collect(),
        }
    }
}

/// Builds an allocator over `layout` with memmap and section slots on the heap, and
/// runs `f` on it. The memmap is allocated uninitialised, so only sections the
/// allocator initialises are touched.
pub fn with_allocator<T>(
    layout: &Layout,
    strategy: Strategy,
    f: impl FnOnce(&Alloc<'_>) -> T,
) -> T {
    with_allocator_chunked(layout, Config::new(strategy), Granularity::Section, f)
}

/// [`with_allocator`] with a chosen configuration (chunk size) and memmap
/// granularity.
pub fn with_allocator_chunked<T>(
    layout: &Layout,
    config: Config,
    granularity: Granularity,
    f: impl FnOnce(&Alloc<'_>) -> T,
) -> T {
    let mut lent = Lent::<parking_lot::RawMutex>::for_layout(layout);
    let allocator = Allocator::new(
        layout.clone(),
        SliceBacking::new(&mut lent.memmap).with_granularity(granularity),
        &lent.slots,
        &lent.cpus,
        config,
    )
    .expect("allocator starts");
    f(&allocator)
}

/// An allocator over a [`TestBacking`].
pub type Doubled<'a> = Allocator<'a, TestBacking<'a>, parking_lot::RawMutex>;

/// Builds an allocator of `config` over `layout` whose memmap backing behaves as
/// `double` says, and runs `f` on it (or on why it did not start).
pub fn try_with_double<T>(
    layout: &Layout,
    config: Config,
    double: Double,
    f: impl FnOnce(Result<&Doubled<'_>, InitError>) -> T,
) -> T {
    let mut lent = Lent::<parking_lot::RawMutex>::for_layout(layout);
    let backing = double.over(&mut lent.memmap, layout);
    let started = Allocator::new(layout.clone(), backing, &lent.slots, &lent.cpus, config);
    // Bound to a local so that the allocator is dropped before what it borrows.
    let result = match started {
        Ok(a) => f(Ok(&a)),
        Err(e) => f(Err(e)),
    };
    #[allow(clippy::let_and_return)]
    result
}

/// [`try_with_double`] for an allocator that must start.
pub fn with_double<T>(
    layout: &Layout,
    config: Config,
    double: Double,
    f: impl FnOnce(&Doubled<'_>) -> T,
) -> T {
    try_with_double(layout, config, double, |a| f(a.expect("allocator starts")))
}

/// An allocator over a [`TestBacking`] that lives for the rest of the test binary
/// (what it borrows is leaked too), for hooks that call it back from inside its
/// backing and so must hold a `'static` reference to it.
pub fn leaked_double(layout: &Layout, config: Config, double: Double) -> &'static Doubled<'static> {
    let lent: &'static mut Lent<parking_lot::RawMutex> =
        Box::leak(Box::new(Lent::for_layout(layout)));
    let backing = double.over(&mut lent.memmap, layout);
    let a = Allocator::new(layout.clone(), backing, &lent.slots, &lent.cpus, config)
        .expect("allocator starts");
    Box::leak(Box::new(a))
}

/// A layout of `section`-byte sections over `ranges`: (start, end, kind, node).
pub fn layout(section: u64, ranges: &[(u64, u64, RangeKind, NodeId)]) -> Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(section);
    for &(start, end, kind, node) in ranges {
        b.add(start, end, kind, node);
    }
    b.build().unwrap()
}

/// One node of usable memory from `start` to `end`, in `section`-byte sections.
pub fn one_node(start: u64, end: u64, section: u64) -> Layout {
    layout(section, &[(start, end, RangeKind::Usable, NodeId(0))])
}

/// Two nodes of usable memory, node 0 from `start` to `split` and node 1 from
/// there to `end`, in `section`-byte sections.
pub fn two_nodes(start: u64, split: u64, end: u64, section: u64) -> Layout {
    layout(
        section,
        &[
            (start, split, RangeKind::Usable, NodeId(0)),
            (split, end, RangeKind::Usable, NodeId(1)),
        ],
    )
}

/// One node of `bytes` usable from 1 MiB, with small sections.
pub fn simple(bytes: u64, section: u64) -> Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(section)
        .add(1 << 20, bytes, RangeKind::Usable, NodeId(0));
    b.build().unwrap()
}

/// Runs every node's deferred worker to completion on this thread.
pub fn run_workers(a: &Alloc<'_>) {
    let nodes: Vec<NodeId> = a.layout().nodes().map(|(n, _)| n).collect();
    for n in nodes {
        let report = a.run_deferred_worker(n);
        assert_eq!(report.failed, 0, "{report:?}");
    }
}

/// The node and zone of the allocated or free page `pfn`.
pub fn zone_of<B: MemmapBacking, R: lock_api::RawMutex>(
    a: &Allocator<'_, B, R>,
    pfn: Pfn,
) -> Option<(NodeId, ZoneType)> {
    a.page(pfn).unwrap().zone()
}

/// Frees each of `blocks`, of `order`, to its zone.
pub fn free_all<B: MemmapBacking, R: lock_api::RawMutex>(
    a: &Allocator<'_, B, R>,
    blocks: impl IntoIterator<Item = Pfn>,
    order: u32,
) {
    for pfn in blocks {
        a.free(FreeRequest::pfn(pfn).order(order)).unwrap();
    }
}

/// Eager start-up in place over a memmap of only `descriptors` descriptors, too
/// few for `layout`: the error it ends with. The slot is dropped as it is.
pub fn start_in_place_over_a_short_memmap(
    layout: &Layout,
    lent: &Lent<parking_lot::RawMutex>,
    descriptors: usize,
) -> InitError {
    let mut short = Box::<[Page]>::new_uninit_slice(descriptors);
    let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
    Allocator::init_in_place(
        &mut slot,
        layout,
        SliceBacking::new(&mut short),
        &lent.slots,
        &lent.cpus,
        Config::new(Strategy::Eager),
    )
    .err()
    .unwrap()
}

/// Initialises every chunk that is not yet, through descriptor look-ups.
pub fn init_all(a: &Alloc<'_>) {
    let chunk = (a.stats().chunk_bytes / meminit::PAGE_SIZE) as usize;
    for pfn in (0..a.layout().end_pfn().0).step_by(chunk) {
        // Chunks without present pages answer NotPresent: nothing to do there.
        let _ = a.page_or_init(Pfn(pfn));
    }
}

/// Pages allocated per (node, zone), tracked by the test itself.
#[derive(Default, Clone)]
pub struct Ledger {
    pub blocks: HashMap<u64, u32>,
    pub per_zone: HashMap<(NodeId, ZoneType), u64>,
}

impl Ledger {
    pub fn record<B: MemmapBacking, R: lock_api::RawMutex>(
        &mut self,
        a: &Allocator<'_, B, R>,
        pfn: Pfn,
        order: u32,
    ) {
        let (node, zone) = a.page(pfn).unwrap().zone().unwrap();
        let end = pfn.0 + (1 << order);
        // No block may overlap one still held.
        for (&p, &o) in &self.blocks {
            let e = p + (1 << o);
            assert!(
                end <= p || e <= pfn.0,
                "{pfn} order {order} overlaps held pfn {p:#x} order {o}"
            );
        }
        assert!(self.blocks.insert(pfn.0, order).is_none());
        *self.per_zone.entry((node, zone)).or_default() += 1 << order;
    }

    pub fn release<B: MemmapBacking, R: lock_api::RawMutex>(
        &mut self,
        a: &Allocator<'_, B, R>,
        pfn: u64,
    ) -> u32 {
        let order = self.blocks.remove(&pfn).unwrap();
        let (node, zone) = a.page(Pfn(pfn)).unwrap().zone().unwrap();
        *self.per_zone.get_mut(&(node, zone)).unwrap() -= 1 << order;
        order
    }
}

/// free + allocated + uninitialised + reserved == present, per zone, with
/// `allocated` from the test's own ledger.
pub fn check_counts<B: MemmapBacking, R: lock_api::RawMutex>(
    a: &Allocator<'_, B, R>,
    allocated: &HashMap<(NodeId, ZoneType), u64>,
) {
    for z in a.zones() {
        let held = allocated.get(&(z.node, z.zone)).copied().unwrap_or(0);
        assert_eq!(
            z.free + held + z.uninitialised + z.reserved,
            z.present,
            "node {} zone {:?}: {z:?}, held {held}",
            z.node,
            z.zone
        );
        let span = a.layout().node(z.node).unwrap().zones[z.zone as usize];
        // Hot-pluggable pages count as present while added.
        assert!(
            (span.present..=span.present + span.hotplug).contains(&z.present),
            "{z:?}, {span:?}"
        );
        // Free pages by list: per class, wholly free chunks, CPU caches and
        // depots (nothing is away for reporting at a quiescent point).
        let listed: u64 = z.free_by_class.iter().sum::<u64>() + z.free_whole;
        assert_eq!(listed + z.cached + z.depot, z.free, "{z:?}");
    }
    assert_eq!(a.miscounted_chunks(), 0, "chunks' words of use");
}

/// With nothing allocated: the counts add up, and every block is whole (see
/// [`check_fully_coalesced`]).
pub fn check_all_free(a: &Alloc<'_>) {
    check_counts(a, &Default::default());
    check_fully_coalesced(a);
}

/// After everything is freed and initialised: every max-order-aligned block of
/// usable pages is whole on its zone's free list, and nothing else is free.
pub fn check_fully_coalesced(a: &Alloc<'_>) {
    assert!(a.stats().fully_initialised);
    a.drain(None).unwrap_or(0);
    assert_eq!(a.unmerged_free_blocks(), 0);
    let mut expected: HashMap<(NodeId, ZoneType), (u64, u64)> = HashMap::new();
    let runs: Vec<PresentRun> = a.layout().present_runs(Pfn(0)..Pfn(u64::MAX)).collect();
    for r in runs.iter().filter(|r| !r.reserved) {
        let e = expected.entry((r.node, r.zone)).or_default();
        let block = 1u64 << MAX_ORDER;
        let first = r.start.0.div_ceil(block) * block;
        if r.end.0 >= first {
            e.0 += (r.end.0 - first) / block;
        }
        e.1 += r.pages();
    }
    assert_eq!(a.miscounted_chunks(), 0, "chunks' words of use");
    // Usable pages per zone in chunks with usable pages of another zone too.
    let chunk = a.stats().chunk_bytes / meminit::PAGE_SIZE;
    let mut shared: HashMap<(NodeId, ZoneType), u64> = HashMap::new();
    for start in (0..a.layout().end_pfn().0).step_by(chunk as usize) {
        let runs: Vec<PresentRun> = a
            .layout()
            .present_runs(Pfn(start)..Pfn(start + chunk))
            .filter(|r| !r.reserved)
            .collect();
        if runs
            .iter()
            .any(|r| (r.node, r.zone) != (runs[0].node, runs[0].zone))
        {
            for r in runs {
                *shared.entry((r.node, r.zone)).or_default() += r.pages();
            }
        }
    }
    for z in a.zones() {
        let (blocks, pages) = expected.get(&(z.node, z.zone)).copied().unwrap_or((0, 0));
        assert_eq!(z.free, pages, "zone {z:?} free pages");
        // Nothing is allocated: every chunk is wholly free, of no class, but
        // for a chunk shared with another zone, whose blocks in this zone stay
        // on the lists they were on when the other zone's last page came back.
        let shared = shared.get(&(z.node, z.zone)).copied().unwrap_or(0);
        assert!(
            z.free_whole + shared >= pages,
            "zone {z:?} wholly free pages, {shared} in shared chunks"
        );
        assert_eq!(z.uninitialised, 0);
        let free = a
            .zone(z.node, z.zone)
            .map(|z| z.free_blocks)
            .unwrap_or_default();
        assert_eq!(
            free[MAX_ORDER as usize], blocks,
            "zone {z:?} max-order blocks {free:?}"
        );
    }
}
