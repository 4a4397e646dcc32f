//! The chunk as the unit of initialisation: an allocation initialises what it
//! needs and no more, the memmap is populated in the backing's own granularity,
//! and each chunk's memory is accepted exactly once, before any of its pages is
//! handed out.

mod common;

use std::collections::HashSet;

use common::*;
use meminit::{
    AllocError, AllocRequest, Allocator, Config, Constraint, CpuId, FreeRequest, Granularity,
    InitError, Layout, LookupError, Pfn, SliceBacking, Strategy, DEFAULT_CHUNK_SIZE, MAX_ORDER,
};

const MIB: u64 = 1 << 20;
/// Descriptors of one default chunk.
const CHUNK_MEMMAP: u64 = 1024 * 64;

#[test]
fn an_order_0_allocation_writes_exactly_one_chunk() {
    let l = simple(256 * MIB, 128 * MIB);
    with_allocator_chunked(
        &l,
        Config::new(Strategy::OnDemand),
        Granularity::Chunk,
        |a| {
            let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
            let s = a.stats();
            assert_eq!((s.by_growth, s.chunks_done), (1, 1));
            assert_eq!(s.chunk_bytes, DEFAULT_CHUNK_SIZE);
            assert_eq!(a.stats().memmap_bytes, CHUNK_MEMMAP);
            // The next chunk of the same section is untouched.
            let next = Pfn((p.0 | 1023) + 1);
            assert_eq!(
                a.page(next).err(),
                Some(LookupError::Uninitialised { pfn: next })
            );
            // A max-order allocation takes one more chunk, and no more.
            a.alloc(AllocRequest::order(MAX_ORDER)).unwrap();
            assert_eq!(a.stats().chunks_done, 2);
            assert_eq!(a.stats().memmap_bytes, 2 * CHUNK_MEMMAP);
        },
    );
}

#[test]
fn a_section_granular_backing_populates_the_section_once_for_all_its_chunks() {
    let l = simple(256 * MIB, 128 * MIB);
    with_allocator(&l, Strategy::OnDemand, |a| {
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        assert_eq!(a.stats().chunks_done, 1);
        // The whole section's memmap: 2 MiB.
        assert_eq!(a.stats().memmap_bytes, 2 * MIB);
        let big: Vec<_> = (0..3)
            .map(|_| a.alloc(AllocRequest::order(MAX_ORDER)).unwrap())
            .collect();
        assert_eq!(a.stats().chunks_done, 4);
        assert_eq!(a.stats().memmap_bytes, 2 * MIB);
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
        for b in big {
            a.free(FreeRequest::pfn(b).order(MAX_ORDER)).unwrap();
        }
        init_all(a);
        assert_eq!(a.stats().memmap_bytes, 4 * MIB);
        check_fully_coalesced(a);
    });
}

#[test]
fn chunk_sizes_from_a_max_order_block_to_a_section() {
    let l = simple(256 * MIB, 128 * MIB);
    for chunk in [4 * MIB, 8 * MIB, 32 * MIB, 128 * MIB] {
        let config = Config {
            chunk_size: chunk,
            ..Config::new(Strategy::OnDemand)
        };
        with_allocator_chunked(&l, config, Granularity::Chunk, |a| {
            let p = a.alloc(AllocRequest::order(0)).unwrap();
            assert_eq!(a.stats().memmap_bytes, chunk / 4096 * 64);
            a.free(FreeRequest::pfn(p).order(0)).unwrap();
            init_all(a);
            check_fully_coalesced(a);
        });
    }
}

#[test]
fn bad_chunk_sizes_are_refused() {
    let l = simple(256 * MIB, 256 * MIB);
    for chunk in [0, 4096, 2 * MIB, 6 * MIB, 512 * MIB, u64::MAX, 4 * MIB] {
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&l);
        let r = Allocator::new(
            l.clone(),
            SliceBacking::new(&mut lent.memmap),
            &lent.slots,
            &lent.cpus,
            Config {
                chunk_size: chunk,
                ..Config::new(Strategy::OnDemand)
            },
        );
        // 4 MiB chunks would make 64 of a 256 MiB section: too many.
        assert!(
            matches!(r, Err(InitError::BadChunkSize { .. })),
            "chunk {chunk:#x}"
        );
        if let Err(e) = r {
            assert!(e.to_string().contains("chunk size"));
        }
    }
}

/// An allocator of `strategy` over a chunk-granular backing that records every
/// acceptance, and refuses the chunks starting at `refuse` once each.
fn with_accepting(
    layout: &Layout,
    strategy: Strategy,
    refuse: &[u64],
    f: impl FnOnce(&Doubled<'_>),
) {
    let mut double = Double::new().granularity(Granularity::Chunk);
    for &chunk in refuse {
        double = double.failing_accept_times(Pfn(chunk), 1);
    }
    with_double(layout, Config::new(strategy), double, f)
}

#[test]
fn each_chunk_is_accepted_once_before_its_first_page_is_handed_out() {
    let l = simple(64 * MIB, 32 * MIB);
    with_accepting(&l, Strategy::OnDemand, &[], |a| {
        assert!(a.backing().accepted().is_empty());
        let mut handed_out = HashSet::new();
        let mut held = Vec::new();
        for i in 0..6000u32 {
            let order = i % 3;
            let p = a
                .alloc(AllocRequest::order(order).on(CpuId(i % 2)))
                .unwrap();
            let chunk = p.0 & !1023;
            // Accepted before this returned.
            assert!(
                a.backing().accepted().contains(&chunk),
                "{p} handed out from a chunk never accepted"
            );
            handed_out.insert(chunk);
            held.push((p, order));
        }
        let accepted = a.backing().accepted();
        let unique: HashSet<u64> = accepted.iter().copied().collect();
        assert_eq!(unique.len(), accepted.len(), "a chunk accepted twice");
        // Single-threaded: every chunk accepted had a page handed out.
        assert_eq!(unique, handed_out);
        for (p, o) in held {
            a.free(FreeRequest::pfn(p).order(o)).unwrap();
        }
    });
}

#[test]
fn a_chunk_that_cannot_be_accepted_is_given_back_and_tried_again() {
    let l = simple(64 * MIB, 32 * MIB);
    // The zone's first chunk (DMA32 starts at 16 MiB) refuses once.
    let first = (16 * MIB) >> 12;
    with_accepting(&l, Strategy::OnDemand, &[first], |a| {
        let p = a
            .alloc(AllocRequest::order(0).within(Constraint::Dma32))
            .unwrap();
        assert_ne!(p.0 & !1023, first);
        // Now it accepts; a look-up initialises it, once.
        a.page_or_init(Pfn(first)).unwrap();
        let accepted = a.backing().accepted();
        assert_eq!(accepted.iter().filter(|&&c| c == first).count(), 1);
    });
}

#[test]
fn eager_accepts_every_present_chunk_once() {
    let l = simple(64 * MIB, 32 * MIB);
    with_accepting(&l, Strategy::Eager, &[], |a| {
        let accepted = a.backing().accepted();
        assert_eq!(accepted.len() as u64, a.stats().chunks_present);
        let unique: HashSet<u64> = accepted.iter().copied().collect();
        assert_eq!(unique.len(), accepted.len());
        assert!(matches!(
            a.alloc(AllocRequest::order(MAX_ORDER + 1)),
            Err(AllocError::OrderTooLarge { .. })
        ));
    });
}
