//! The depots between the CPU caches and the zones: a full stock's batch goes
//! there whole and an empty stock takes it back whole; their pages count as
//! free; a free of a block in a depot is a double free; a depot holds no more
//! than its bound; and batches merge when something needs merged memory (an
//! allocation of an order no stock holds, a drain, an idle-time pass). Then
//! producer/consumer threads (allocating on one CPU id, freeing on another)
//! keep every invariant, and once they stop, idle passes give the memory back.

#![cfg(not(miri))]

mod common;

use std::sync::mpsc;

use common::*;
use meminit::{
    AllocRequest, Config, CpuId, FreeError, FreeRequest, NodeId, PageState, Pfn, Strategy,
    ZoneType, CACHE_BATCH, CACHE_BATCH_MAX, CACHE_HIGH, DEPOT_BATCHES_PER_CPU, MAX_ORDER,
    PAGEBLOCK_ORDER,
};

const MIB: u64 = 1 << 20;

fn dma32(a: &Alloc<'_>) -> meminit::ZoneStats {
    a.zone(NodeId(0), ZoneType::Dma32).unwrap()
}

/// `n` order-`order` blocks from the zones directly (no CPU's cache).
fn take(a: &Alloc<'_>, n: usize, order: u32) -> Vec<Pfn> {
    (0..n)
        .map(|_| a.alloc(AllocRequest::order(order)).unwrap())
        .collect()
}

#[test]
fn a_full_stock_pushes_a_batch_that_an_empty_one_pops_whole() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let before = dma32(a);
        let blocks = take(a, CACHE_HIGH[0] + 1, 0);
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        let z = dma32(a);
        assert_eq!(z.depot, CACHE_BATCH[0] as u64, "{z:?}");
        assert_eq!(z.free, before.free, "depot pages count as free");
        // Not merged: still off the lists, and a second free is refused
        // wherever it is tried.
        let first = blocks[0];
        assert_eq!(
            a.page(first).unwrap().state(),
            PageState::Cached { order: 0 }
        );
        for cpu in [None, Some(CpuId(0)), Some(CpuId(1))] {
            assert_eq!(
                a.free(FreeRequest::pfn(first).on_cpu(cpu).order(0)),
                Err(FreeError::DoubleFree { pfn: first })
            );
        }
        // CPU 2's stock is empty: it takes the batch, coldest first freed.
        let got = a.alloc(AllocRequest::order(0).on(CpuId(2))).unwrap();
        assert_eq!(got, first);
        let z = dma32(a);
        // 129 freed, one handed out again: the rest in the two CPUs' stocks.
        assert_eq!((z.depot, z.cached), (0, CACHE_HIGH[0] as u64));
        a.free(FreeRequest::pfn(got).on(CpuId(2)).order(0)).unwrap();
        check_counts(a, &Default::default());
        check_fully_coalesced(a);
    });
}

#[test]
fn a_cpu_that_frees_more_than_it_allocates_moves_larger_batches() {
    let l = simple(64 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        // Two drains in a row: 32, then 64 (and never more than the maximum).
        let blocks = take(a, CACHE_HIGH[0] + 1 + CACHE_BATCH[0], 0);
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        assert_eq!(dma32(a).depot, (CACHE_BATCH[0] + 2 * CACHE_BATCH[0]) as u64);
        let more = take(a, 4 * CACHE_HIGH[0], 0);
        let depot = dma32(a).depot;
        for &p in &more {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        // Every further batch is the maximum: 4 * 128 frees are 8 batches.
        assert_eq!(
            dma32(a).depot - depot,
            (4 * CACHE_HIGH[0] / CACHE_BATCH_MAX[0] * CACHE_BATCH_MAX[0]) as u64
        );
        check_counts(a, &Default::default());
        check_fully_coalesced(a);
    });
}

#[test]
fn a_depot_holds_no_more_than_its_bound() {
    let l = simple(256 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let bound = (CPUS as u32 * DEPOT_BATCHES_PER_CPU) as u64;
        let n = (bound as usize + 8) * CACHE_BATCH_MAX[0] + CACHE_HIGH[0];
        let blocks = take(a, n, 0);
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(3)).order(0)).unwrap();
            assert!(dma32(a).depot <= bound * CACHE_BATCH_MAX[0] as u64);
        }
        let z = dma32(a);
        // Full: the batches beyond it went to the lists.
        assert!(z.depot > (bound - 1) * CACHE_BATCH[0] as u64, "{z:?}");
        check_counts(a, &Default::default());
        check_fully_coalesced(a);
    });
}

/// All of memory is freed into a CPU's cache and the depot, in order-0 blocks:
/// a max-order allocation (no stock holds that order) finds the lists empty
/// and must merge the depot's batches, without growing (there is nothing to
/// grow) and without failing.
#[test]
fn an_allocation_of_an_order_no_stock_holds_merges_the_depot() {
    let l = simple(16 * MIB, 4 * MIB);
    with_allocator(&l, Strategy::Eager, |a| {
        let mut all = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(0)) {
            all.push(p);
        }
        for &p in &all {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        let depot: u64 = a.zones().map(|z| z.depot).sum();
        let free: u64 = a.zones().map(|z| z.free).sum();
        assert!(depot > free / 2, "{depot} of {free}");
        let big = a.alloc(AllocRequest::order(MAX_ORDER)).unwrap();
        assert_eq!(zone_of(a, big).unwrap().1, ZoneType::Dma);
        assert_eq!(a.zones().map(|z| z.depot).sum::<u64>(), 0);
        a.free(big).unwrap();
        // A pageblock through a CPU: its stock and the pageblock depot are
        // empty, the lists have whole blocks again.
        let p = a
            .alloc(AllocRequest::order(PAGEBLOCK_ORDER).on(CpuId(2)))
            .unwrap();
        a.free(FreeRequest::pfn(p).on(CpuId(5))).unwrap();
        check_counts(a, &Default::default());
        check_fully_coalesced(a);
    });
}

#[test]
fn idle_passes_and_drains_flush_the_depots() {
    let l = simple(64 * MIB, 4 * MIB);
    let config = Config {
        give_back_reserve: 0,
        ..Config::new(Strategy::OnDemand)
    };
    with_allocator_chunked(&l, config, meminit::Granularity::Section, |a| {
        let blocks = take(a, 2048, 0);
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        assert!(dma32(a).depot > 0);
        // The drain of one CPU flushes the depots too.
        assert!(a.drain(Some(CpuId(1))).unwrap() >= 2048);
        assert_eq!((dma32(a).depot, dma32(a).cached), (0, 0));
        let blocks = take(a, 2048, 0);
        for &p in &blocks {
            a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        }
        assert!(dma32(a).depot > 0);
        // The first pass flushes and marks, the second gives back: only what
        // the CPU's own stock still holds stays.
        a.give_back();
        assert_eq!(dma32(a).depot, 0);
        a.drain(Some(CpuId(1))).unwrap();
        let stats = a.give_back();
        assert!(stats.chunks_given_back > 0, "{stats:?}");
        assert!(dma32(a).uninitialised >= stats.pages_given_back);
        check_counts(a, &Default::default());
    });
}

/// Producer/consumer pairs: thread 2k allocates batches on CPU 2k (orders 0,
/// 1, 3 and the pageblock's), thread 2k+1 frees them on CPU 2k+1, so every
/// block crosses between caches through the depots. The counts hold at the
/// end, no page is handed out twice, and idle passes give the memory back
/// once the threads stop.
#[test]
fn producers_and_consumers_on_other_cpus_keep_the_invariants() {
    let l = simple(512 * MIB, 128 * MIB);
    let config = Config {
        give_back_reserve: 0,
        ..Config::new(Strategy::OnDemand)
    };
    with_allocator_chunked(&l, config, meminit::Granularity::Chunk, |a| {
        let owners = std::sync::Mutex::new(std::collections::HashSet::new());
        let depot_seen = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for k in 0..2u32 {
                let (tx, rx) = mpsc::sync_channel::<Vec<(Pfn, u32)>>(8);
                let owners = &owners;
                let depot_seen = &depot_seen;
                s.spawn(move || {
                    for round in 0..300u32 {
                        let order = [0, 0, 1, 3, 0, PAGEBLOCK_ORDER][(round % 6) as usize];
                        let n = if order == PAGEBLOCK_ORDER { 4 } else { 40 };
                        let batch: Vec<(Pfn, u32)> = (0..n)
                            .map(|_| {
                                let p = a
                                    .alloc(AllocRequest::order(order).on(CpuId(2 * k)))
                                    .unwrap();
                                assert!(owners.lock().unwrap().insert(p.0), "{p} twice");
                                (p, order)
                            })
                            .collect();
                        tx.send(batch).unwrap();
                    }
                });
                s.spawn(move || {
                    for batch in rx {
                        for (p, order) in batch {
                            assert!(owners.lock().unwrap().remove(&p.0));
                            a.free(FreeRequest::pfn(p).on(CpuId(2 * k + 1)).order(order))
                                .unwrap();
                        }
                        let d = a.zones().map(|z| z.depot).sum::<u64>();
                        depot_seen.fetch_max(d, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert!(depot_seen.into_inner() > 0, "the depots were used");
        check_counts(a, &Default::default());
        // Idle: the first pass flushes the depots and marks, the second gives
        // back all but the chunks the CPUs' own stocks pin.
        a.give_back();
        let stats = a.give_back();
        assert!(stats.chunks_given_back > 0, "{stats:?}");
        check_counts(a, &Default::default());
        // Those go once the caches are drained (CPUs going offline): then all
        // of it, since nothing is held and the reserve is zero.
        a.drain(None).unwrap();
        a.give_back();
        a.give_back();
        for z in a.zones() {
            assert_eq!(z.uninitialised, z.managed, "{z:?}");
        }
        for z in a.zones() {
            assert_eq!((z.depot, z.cached), (0, 0), "{z:?}");
        }
        check_counts(a, &Default::default());
    });
}
