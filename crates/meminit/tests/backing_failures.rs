//! A backing that fails on command: a section whose memmap cannot be populated
//! must not stop growth from the zone's other sections, nor the fall-back to lower
//! zones, and the failure is reported only when nothing else can serve. A
//! deferred worker goes on past a failing chunk, retries it, and reports it.

#![cfg(not(miri))]

mod common;

use common::{layout, one_node, with_double, zone_of, Double};
use meminit::{
    AllocError, AllocRequest, BackingError, ChunkError, Config, CpuId, Layout, NodeId, RangeKind,
    Strategy, ZoneType, WORKER_RETRIES,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// 16..48 MiB in 4 MiB sections (one chunk each): sections 4 to 11.
fn eight_sections() -> Layout {
    one_node(16 * MIB, 48 * MIB, 4 * MIB)
}

#[test]
fn a_worker_goes_on_past_a_failing_chunk_and_reports_it() {
    let l = eight_sections();
    let double = Double::new().failing_populate([5, 9]);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        // Every other chunk is done; the two failing ones are reported, each
        // tried once in the pass and WORKER_RETRIES times after it.
        assert_eq!(report.chunks, 6, "{report:?}");
        assert_eq!(report.pages, 6 * 1024);
        assert_eq!(report.failed, 2);
        assert!(
            matches!(
                report.error,
                Some(ChunkError::Backing(BackingError { section: 5 | 9, .. }))
            ),
            "{report:?}"
        );
        assert_eq!(a.backing().populates_of(5), 1 + WORKER_RETRIES);
        assert_eq!(a.backing().populates_of(9), 1 + WORKER_RETRIES);
        assert_eq!(a.stats().chunks_done, 6);
        assert!(!a.stats().fully_initialised);
        // They stay uninitialised: once the backing recovers, growth takes them.
        a.backing().recover();
        let mut n = 0;
        while a.alloc(AllocRequest::order(0)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 8 * 1024);
        assert!(a.stats().fully_initialised);
    });
}

#[test]
fn a_worker_retries_a_chunk_that_fails_for_a_moment() {
    let l = eight_sections();
    // Section 6 fails WORKER_RETRIES times, then works: the last retry gets it.
    let double = Double::new().failing_populate_times(6, WORKER_RETRIES);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!(report.chunks, 8, "{report:?}");
        assert_eq!(report.failed, 0);
        assert_eq!(report.error, None);
        assert_eq!(a.backing().populates_of(6), 1 + WORKER_RETRIES);
        assert!(a.stats().fully_initialised);
    });
    // One failure more than the worker tries: reported; the next worker call (the
    // node's cursor is spent) leaves it to growth or a look-up, which succeed.
    let double = Double::new().failing_populate_times(6, WORKER_RETRIES + 1);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!((report.chunks, report.failed), (7, 1), "{report:?}");
        assert_eq!(a.run_deferred_worker(NodeId(0)), Default::default());
        let p = a.page_or_init(meminit::Pfn(6 * 1024)).unwrap();
        assert!(p.zone().is_some());
        assert!(a.stats().fully_initialised);
    });
}

#[test]
fn workers_on_threads_with_failures_finish_everything_else() {
    let l = eight_sections();
    let double = Double::new().failing_populate([4, 7, 11]);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let reports: Vec<_> = std::thread::scope(|s| {
            let h: Vec<_> = (0..4)
                .map(|_| s.spawn(|| a.run_deferred_worker(NodeId(0))))
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let done: u64 = reports.iter().map(|r| r.chunks).sum();
        let failed: u64 = reports.iter().map(|r| r.failed).sum();
        assert_eq!((done, failed), (5, 3), "{reports:?}");
        for s in [4, 7, 11] {
            assert_eq!(a.backing().populates_of(s), 1 + WORKER_RETRIES);
        }
        assert_eq!(a.stats().chunks_done, 5);
    });
}

#[test]
fn a_failing_section_does_not_block_its_zone() {
    let l = one_node(16 * MIB, 32 * MIB, 4 * MIB);
    // Section 4 is the zone's first: it never populates.
    let double = Double::new().failing_populate([4]);
    with_double(&l, Config::new(Strategy::OnDemand), double, |a| {
        let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        assert!(p.addr() >= 20 * MIB);
        let mut n = 1;
        let err = loop {
            match a.alloc(AllocRequest::order(0)) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        // Three sections served; the fourth's memory remains, unreachable: the
        // caller hears why, not "out of memory".
        assert_eq!(n, 3 * 1024);
        assert!(
            matches!(err, AllocError::Backing(BackingError { section: 4, .. })),
            "{err}"
        );
        // Once the backing recovers, the section serves.
        a.backing().recover();
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        assert!(p.addr() < 20 * MIB);
    });
}

#[test]
fn a_failing_zone_falls_back_to_the_next() {
    let l = layout(
        128 * MIB,
        &[
            (MIB, 256 * MIB, RangeKind::Usable, NodeId(0)),
            (4 * GIB, 4 * GIB + 256 * MIB, RangeKind::Usable, NodeId(0)),
        ],
    );
    // Both sections of the Normal zone fail.
    let double = Double::new().failing_populate([32, 33]);
    with_double(&l, Config::new(Strategy::OnDemand), double, |a| {
        let p = a.alloc(AllocRequest::order(3).on(CpuId(1))).unwrap();
        assert_eq!(zone_of(a, p), Some((NodeId(0), ZoneType::Dma32)));
        let z = a.zone(NodeId(0), ZoneType::Normal).unwrap();
        assert_eq!(z.uninitialised, z.managed);
    });
}
