//! Allocation flags: may not grow (interrupt context), this node only, zeroed.

#![cfg(not(miri))]

mod common;

use common::{check_counts, free_all, with_allocator, with_double, Call, Double};
use meminit::{
    AllocError, AllocFlags, AllocPath, AllocRequest, Config, CpuId, FreeRequest, Layout, NodeId,
    Pfn, Strategy,
};

const MIB: u64 = 1 << 20;

/// Two nodes of 16 MiB each, above 16 MiB (one zone each).
fn two_nodes() -> Layout {
    common::two_nodes(16 * MIB, 32 * MIB, 48 * MIB, 16 * MIB)
}

#[test]
fn no_grow_takes_only_free_blocks_and_never_calls_the_backing() {
    let config = Config::new(Strategy::OnDemand);
    with_double(&two_nodes(), config, Double::new(), |a| {
        // Calls that populate or accept (that initialise).
        let calls = || {
            a.backing()
                .count(|c| matches!(c, Call::Populate { .. } | Call::Accept { .. }))
        };
        // Nothing is initialised: an allocation that may not grow fails, saying
        // why, and touches nothing.
        for cpu in [None, Some(CpuId(0))] {
            let e = a
                .alloc_traced(
                    AllocRequest::order(0)
                        .on_cpu(cpu)
                        .flags(AllocFlags::NO_GROW),
                )
                .unwrap_err();
            assert_eq!(e, AllocError::WouldGrow { order: 0 });
            assert!(e.to_string().contains("NO_GROW"), "{e}");
        }
        assert_eq!(calls(), 0);
        assert_eq!(a.stats().memmap_bytes, 0);
        // Once a chunk is there, it serves from it.
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        let before = calls();
        let (q, path) = a
            .alloc_traced(
                AllocRequest::order(0)
                    .on(CpuId(1))
                    .flags(AllocFlags::NO_GROW),
            )
            .unwrap();
        assert_eq!(path, AllocPath::Fast);
        assert_ne!(p, q);
        assert_eq!(calls(), before);
        // Empty the initialised memory: NO_GROW fails again while memory remains
        // uninitialised, and the growing allocation then succeeds.
        let mut held = vec![p, q];
        while let Ok((r, _)) = a.alloc_traced(AllocRequest::order(0).flags(AllocFlags::NO_GROW)) {
            held.push(r);
        }
        assert_eq!(calls(), before, "never grew");
        assert!(a.alloc(AllocRequest::order(0)).is_ok());
        free_all(a, held, 0);
    });
}

#[test]
fn no_grow_reports_out_of_memory_once_nothing_is_left_to_grow() {
    with_allocator(&two_nodes(), Strategy::Eager, |a| {
        let mut held = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(10)) {
            held.push(p);
        }
        let e = a
            .alloc_traced(AllocRequest::order(10).flags(AllocFlags::NO_GROW))
            .unwrap_err();
        assert!(
            matches!(e, AllocError::OutOfMemory { order: 10, .. }),
            "{e:?}"
        );
        free_all(a, held, 10);
    });
}

#[test]
fn this_node_does_not_fall_back() {
    with_allocator(&two_nodes(), Strategy::OnDemand, |a| {
        let mut held = Vec::new();
        // Node 0 until it is full, without falling back.
        loop {
            match a.alloc_traced(
                AllocRequest::order(10)
                    .on(CpuId(0))
                    .flags(AllocFlags::THIS_NODE),
            ) {
                Ok((p, _)) => {
                    assert_eq!(a.layout().node_of(p), Some(NodeId(0)));
                    held.push(p);
                }
                Err(e) => {
                    assert!(matches!(e, AllocError::OutOfMemory { .. }), "{e:?}");
                    break;
                }
            }
        }
        assert_eq!(held.len(), 4, "node 0's 16 MiB in 4 MiB blocks");
        // Without the flag, node 1 serves.
        let p = a.alloc(AllocRequest::order(10)).unwrap();
        assert_eq!(a.layout().node_of(p), Some(NodeId(1)));
        held.push(p);
        let mut ledger = std::collections::HashMap::new();
        for z in a.zones() {
            ledger.insert((z.node, z.zone), z.allocated());
        }
        check_counts(a, &ledger);
        free_all(a, held, 10);
    });
}

#[test]
fn zeroed_asks_the_backing_and_a_backing_that_cannot_gives_the_block_back() {
    let config = Config::new(Strategy::OnDemand);
    with_double(&two_nodes(), config, Double::new().zeroing(), |a| {
        let flags = AllocFlags::ZEROED | AllocFlags::THIS_NODE;
        assert!(flags.contains(AllocFlags::ZEROED) && !flags.contains(AllocFlags::NO_GROW));
        let (p, _) = a
            .alloc_traced(
                AllocRequest::order(2)
                    .on(CpuId(0))
                    .node(NodeId(1))
                    .flags(flags),
            )
            .unwrap();
        assert_eq!(a.backing().zeroed(), vec![p..Pfn(p.0 + 4)]);
        a.free(FreeRequest::pfn(p).order(2)).unwrap();
    });
    with_allocator(&two_nodes(), Strategy::OnDemand, |a| {
        let e = a
            .alloc_traced(
                AllocRequest::order(2)
                    .on(CpuId(0))
                    .flags(AllocFlags::ZEROED),
            )
            .unwrap_err();
        let AllocError::Backing(b) = e else {
            panic!("{e:?}")
        };
        assert_eq!(b.section, 1, "16 MiB sections: the block is in section 1");
        assert!(e.to_string().contains("cannot zero"), "{e}");
        // Nothing leaked: every initialised page is free again.
        a.drain(None).unwrap_or(0);
        check_counts(a, &Default::default());
    });
}

#[test]
fn flags_with_a_cpu_that_has_no_cache_are_refused() {
    with_allocator(&two_nodes(), Strategy::OnDemand, |a| {
        let e = a
            .alloc_traced(AllocRequest::order(0).on(CpuId(999)))
            .unwrap_err();
        assert!(matches!(e, AllocError::UnknownCpu { .. }), "{e:?}");
        assert!(matches!(
            a.alloc_traced(AllocRequest::order(11)),
            Err(AllocError::OrderTooLarge { order: 11 })
        ));
    });
}
