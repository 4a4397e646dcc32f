//! The per-CPU caches: what they count, where a freed block goes, what a misuse
//! gets, and that an allocation drains them before it reports `OutOfMemory`.

mod common;

use common::*;
use meminit::NodeId;
use meminit::{
    AllocError, AllocFlags, AllocPath, AllocRequest, Constraint, CpuId, FreeError, FreeRequest,
    PageState, Strategy, ZoneType, CACHE_BATCH, CACHE_HIGH, MAX_ORDER, PAGEBLOCK_ORDER,
};

const MIB: u64 = 1 << 20;

#[test]
fn cached_pages_count_as_free_and_drain_back_whole() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let before = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
        let p = a.alloc(AllocRequest::order(0).on(CpuId(1))).unwrap();
        let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
        // The refill took a batch: one handed out, the rest cached.
        assert_eq!(z.cached, CACHE_BATCH[0] as u64 - 1);
        assert_eq!(z.free, before.free - 1);
        // The lock-free total agrees with the zones' figures, cached pages in.
        let zones: u64 = a.zones().map(|z| z.available()).sum();
        assert_eq!(a.stats().available_pages, zones);
        assert_eq!(
            a.page(p).unwrap().state(),
            PageState::Allocated { order: 0 }
        );
        a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        assert_eq!(a.page(p).unwrap().state(), PageState::Cached { order: 0 });
        let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
        assert_eq!((z.free, z.cached), (before.free, CACHE_BATCH[0] as u64));
        // The same block comes back first: it is the hottest.
        assert_eq!(a.alloc(AllocRequest::order(0).on(CpuId(1))).unwrap(), p);
        a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        assert_eq!(a.drain(Some(CpuId(1))).unwrap(), CACHE_BATCH[0] as u64);
        check_all_free(a);
    });
}

#[test]
fn a_full_cache_drains_its_coldest_batch() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let blocks: Vec<_> = (0..CACHE_HIGH[0] + 1)
            .map(|_| a.alloc(AllocRequest::order(0)).unwrap())
            .collect();
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(0)).order(0)).unwrap();
        }
        let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
        assert_eq!(z.cached, (CACHE_HIGH[0] - CACHE_BATCH[0] + 1) as u64);
        // The first freed went to the zone's depot, whole, off the lists; the
        // last freed is still cached.
        assert_eq!(z.depot, CACHE_BATCH[0] as u64);
        assert_eq!(
            a.page(blocks[0]).unwrap().state(),
            PageState::Cached { order: 0 }
        );
        assert_eq!(
            a.page(*blocks.last().unwrap()).unwrap().state(),
            PageState::Cached { order: 0 }
        );
        check_fully_coalesced(a);
    });
}

#[test]
fn misuse_of_a_cached_block_is_refused() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let p = a.alloc(AllocRequest::order(2).on(CpuId(0))).unwrap();
        a.free(FreeRequest::pfn(p).on(CpuId(0)).order(2)).unwrap();
        for cpu in [CpuId(0), CpuId(3)] {
            assert_eq!(
                a.free(FreeRequest::pfn(p).on(cpu).order(2)),
                Err(FreeError::DoubleFree { pfn: p })
            );
        }
        assert_eq!(
            a.free(FreeRequest::pfn(p).order(2)),
            Err(FreeError::DoubleFree { pfn: p })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(p).order(1)),
            Err(FreeError::DoubleFree { pfn: p })
        );
        let q = a.alloc(AllocRequest::order(2).on(CpuId(0))).unwrap();
        assert_eq!(
            a.free(FreeRequest::pfn(q).on(CpuId(2)).order(1)),
            Err(FreeError::WrongOrder {
                pfn: q,
                allocated: 2,
                given: 1
            })
        );
        a.free(FreeRequest::pfn(q).on(CpuId(2)).order(2)).unwrap();
        let cpus = CPUS;
        assert_eq!(
            a.alloc(AllocRequest::order(0).on(CpuId(cpus as u32))),
            Err(AllocError::UnknownCpu {
                cpu: CpuId(cpus as u32),
                cpus
            })
        );
        assert_eq!(
            a.free(FreeRequest::pfn(q).on(CpuId(u32::MAX)).order(2)),
            Err(FreeError::UnknownCpu {
                cpu: CpuId(u32::MAX),
                cpus
            })
        );
        assert!(a.drain(Some(CpuId(u32::MAX))).is_err());
    });
}

#[test]
fn a_block_of_another_node_goes_back_to_its_own_zone() {
    let l = two_nodes(MIB, 32 * MIB, 64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        // CPU 0 caches node 0's DMA32 blocks.
        let mine = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        assert_eq!(zone_of(a, mine), Some((NodeId(0), ZoneType::Dma32)));
        // A block of node 1 freed on CPU 0 does not join node 0's blocks there.
        let theirs = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
        assert_eq!(zone_of(a, theirs), Some((NodeId(1), ZoneType::Dma32)));
        a.free(FreeRequest::pfn(theirs).on(CpuId(0)).order(0))
            .unwrap();
        assert_eq!(a.zone(NodeId(1), ZoneType::Dma32).unwrap().cached, 0);
        assert!(matches!(
            a.page(theirs).unwrap().state(),
            PageState::Free { .. } | PageState::Tail
        ));
        // Once CPU 0's stock is empty it may serve node 1.
        a.free(FreeRequest::pfn(mine).on(CpuId(0)).order(0))
            .unwrap();
        a.drain(Some(CpuId(0))).unwrap();
        let p = a
            .alloc(AllocRequest::order(0).on(CpuId(0)).node(NodeId(1)))
            .unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(1), ZoneType::Dma32)));
        assert!(a.zone(NodeId(1), ZoneType::Dma32).unwrap().cached > 0);
        a.free(FreeRequest::pfn(p).on(CpuId(0)).order(0)).unwrap();
        check_fully_coalesced(a);
    });
}

/// The common allocation pops the CPU's stock for the first zone of its
/// list and nothing else: a stock holding another node's blocks, or another
/// zone type's, never serves it, whatever the flags.
#[test]
fn a_stock_serves_only_the_zone_its_allocation_would_try_first() {
    let l = two_nodes(MIB, 32 * MIB, 64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        // CPU 0's DMA32 stock holds node 1's blocks.
        let theirs = a
            .alloc_traced(AllocRequest::order(0).on(CpuId(0)).node(NodeId(1)))
            .unwrap();
        assert_eq!(zone_of(a, theirs.0), Some((NodeId(1), ZoneType::Dma32)));
        assert!(a.zone(NodeId(1), ZoneType::Dma32).unwrap().cached > 0);
        // An allocation for node 0 does not take them, with or without
        // THIS_NODE, and leaves them where they are.
        for flags in [AllocFlags::NONE, AllocFlags::THIS_NODE] {
            let (p, _) = a
                .alloc_traced(AllocRequest::order(0).on(CpuId(0)).flags(flags))
                .unwrap();
            assert_eq!(zone_of(a, p), Some((NodeId(0), ZoneType::Dma32)));
            a.free(FreeRequest::pfn(p).on(CpuId(0)).order(0)).unwrap();
        }
        // Node 1 with THIS_NODE takes them, on the fast path.
        let (p, path) = a
            .alloc_traced(
                AllocRequest::order(0)
                    .on(CpuId(0))
                    .node(NodeId(1))
                    .flags(AllocFlags::THIS_NODE),
            )
            .unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(1), ZoneType::Dma32)));
        assert_eq!(path, AllocPath::Fast);
        // A DMA allocation is never served from the DMA32 stock.
        let (dma, _) = a
            .alloc_traced(
                AllocRequest::order(0)
                    .on(CpuId(0))
                    .node(NodeId(1))
                    .within(Constraint::Dma),
            )
            .unwrap();
        assert_eq!(zone_of(a, dma), Some((NodeId(0), ZoneType::Dma)));
        // CPU 0's DMA stock now holds node 0's blocks, the first zone of node
        // 1's DMA list: with THIS_NODE, node 1 (which has no DMA memory) gets
        // none of them.
        let e = a
            .alloc(
                AllocRequest::order(0)
                    .on(CpuId(0))
                    .node(NodeId(1))
                    .within(Constraint::Dma)
                    .flags(AllocFlags::THIS_NODE),
            )
            .unwrap_err();
        assert!(matches!(e, AllocError::OutOfMemory { .. }), "{e:?}");
        for q in [theirs.0, p, dma] {
            a.free(FreeRequest::pfn(q).on(CpuId(0)).order(0)).unwrap();
        }
        a.drain(None).unwrap();
        check_fully_coalesced(a);
    });
}

/// Every page ends up in some CPU's cache; a max-order block exists only once
/// they are drained and merge: the allocation must do that itself.
#[test]
fn an_allocation_drains_every_cache_before_it_fails() {
    let l = simple(16 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let mut all = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(0)) {
            all.push(p);
        }
        let n = all.len();
        assert!(n > 3000);
        // Spread the frees so that each CPU caches some of every region.
        for (i, p) in all.into_iter().enumerate() {
            a.free(FreeRequest::pfn(p).on(CpuId((i % CPUS) as u32)).order(0))
                .unwrap();
        }
        let cached: u64 = a.zones().map(|z| z.cached).sum();
        assert!(cached > 0);
        let big = a
            .alloc(AllocRequest::order(MAX_ORDER).on(CpuId(0)))
            .unwrap();
        a.free(FreeRequest::pfn(big).order(MAX_ORDER)).unwrap();
        let pageblock = a
            .alloc(AllocRequest::order(PAGEBLOCK_ORDER).on(CpuId(1)))
            .unwrap();
        a.free(
            FreeRequest::pfn(pageblock)
                .on(CpuId(1))
                .order(PAGEBLOCK_ORDER),
        )
        .unwrap();
        // And when memory is truly exhausted, the failure is real.
        let mut held = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(0).on(CpuId(2))) {
            held.push(p);
        }
        assert_eq!(held.len(), n);
        for z in a.zones() {
            assert_eq!((z.free, z.cached), (0, 0), "{z:?}");
        }
        for p in held {
            a.free(FreeRequest::pfn(p).on(CpuId(3)).order(0)).unwrap();
        }
        check_fully_coalesced(a);
    });
}
