//! The backing contract a kernel can meet: `populate` takes the pages for its own
//! mapping from the page source the allocator lends it (pages of the section
//! itself, recorded and never handed out), under every strategy, Eager start-up
//! included; and a call back into the allocator from `populate` or `accept` is an
//! error, never a hang.

#![cfg(not(miri))]

mod common;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{layout, leaked_double, one_node, try_with_double, Double, Doubled, Phase};
use meminit::{
    AllocError, AllocRequest, BackingError, ChunkError, Config, Constraint, CpuId, FreeRequest,
    Granularity, Layout, LookupError, MemmapPiece, NodeId, PageSource, PageState, Pfn, RangeKind,
    SourceError, Strategy, MAX_SOURCE_PAGES,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A kernel-style backing: the memmap of each section (or chunk) "mapped" on a
/// block of the section's own pages and two page-table pages right after it, all
/// from the page source.
fn carving() -> Double {
    Double::new().carving()
}

/// The usable pages of `l`: present and not reserved.
fn usable_pages(l: &Layout) -> u64 {
    l.present_runs(Pfn(0)..Pfn(u64::MAX))
        .filter(|r| !r.reserved)
        .map(|r| r.pages())
        .sum()
}

/// 1 MiB to 64 MiB in 4 MiB sections (16 pages of memmap each), with a reserved
/// range at the start of section 2 and a hole in section 5, over two nodes.
fn kernelish() -> Layout {
    layout(
        4 * MIB,
        &[
            (MIB, 8 * MIB, RangeKind::Usable, NodeId(0)),
            (8 * MIB, 8 * MIB + 8 * KIB, RangeKind::Reserved, NodeId(0)),
            (8 * MIB + 8 * KIB, 20 * MIB, RangeKind::Usable, NodeId(0)),
            (20 * MIB + 12 * KIB, 32 * MIB, RangeKind::Usable, NodeId(0)),
            (32 * MIB, 64 * MIB, RangeKind::Usable, NodeId(1)),
        ],
    )
}

/// Allocates every page it can, order 0, on both nodes; frees them all.
fn drain_and_check(a: &Doubled<'_>) -> HashSet<u64> {
    let mut got = HashSet::new();
    for node in [NodeId(0), NodeId(1)] {
        while let Ok(p) = a.alloc(AllocRequest::order(0).on(CpuId(0)).node(node)) {
            assert!(got.insert(p.0), "{p} handed out twice");
        }
    }
    for &p in &got {
        a.free(FreeRequest::pfn(Pfn(p)).order(0)).unwrap();
    }
    got
}

#[test]
fn populate_takes_its_pages_from_the_source_under_every_strategy() {
    let l = kernelish();
    let usable = usable_pages(&l);
    for strategy in Strategy::ALL {
        try_with_double(&l, Config::new(strategy), carving(), |a| {
            let a = a.unwrap();
            if strategy == Strategy::Deferred {
                for node in [NodeId(0), NodeId(1)] {
                    assert_eq!(a.run_deferred_worker(node).failed, 0);
                }
            }
            let got = drain_and_check(a);
            let taken = a.backing().carved();
            assert_eq!(taken.len(), l.section_count(), "{strategy:?}");
            for t in &taken {
                assert_eq!(t.end - t.start, 18, "{t:?}");
                for p in t.clone() {
                    assert!(!got.contains(&p), "{strategy:?}: taken {p:#x} handed out");
                    assert_eq!(a.page(Pfn(p)).unwrap().state(), PageState::Reserved);
                }
            }
            // Section 0 from its first usable page (1 MiB); section 2 from the
            // first aligned block after its reserved start.
            assert!(taken.contains(&(256..274)), "{taken:?}");
            assert!(taken.contains(&(2064..2082)), "{taken:?}");
            assert_eq!(got.len() as u64, usable - 18 * l.section_count() as u64);
            // Each chunk's accept was told the pages it must not touch.
            let told: HashSet<_> = a.backing().accept_taken().into_iter().collect();
            assert_eq!(told, taken.iter().cloned().collect());
            for z in a.zones() {
                assert_eq!(z.free + z.uninitialised + z.reserved, z.present, "{z:?}");
                assert_eq!(z.uninitialised, 0);
            }
            assert_eq!(a.backing().populates(), l.section_count());
        });
    }
}

#[test]
fn a_backing_may_return_what_the_source_gave_or_an_adjacent_range() {
    let l = kernelish();
    // The same range, or one page more right after it: recorded as one.
    let same: fn(Range<u64>) -> Range<u64> = |t| t;
    let next: fn(Range<u64>) -> Range<u64> = |t| t.end..t.end + 1;
    for (returned, pages) in [(same, 18), (next, 19)] {
        try_with_double(
            &l,
            Config::new(Strategy::Eager),
            carving().returning_taken(returned),
            |a| {
                let a = a.unwrap();
                let got = drain_and_check(a);
                let usable = usable_pages(&l);
                assert_eq!(got.len() as u64, usable - pages * l.section_count() as u64);
            },
        );
    }
}

#[test]
fn a_taken_range_apart_from_the_source_pages_is_refused_and_never_populated_again() {
    let l = kernelish();
    let apart: fn(Range<u64>) -> Range<u64> = |t| t.end + 1..t.end + 2;
    try_with_double(
        &l,
        Config::new(Strategy::OnDemand),
        carving().returning_taken(apart),
        |a| {
            let a = a.unwrap();
            let err = a.alloc(AllocRequest::order(0)).unwrap_err();
            assert!(
                matches!(err, AllocError::Backing(BackingError { reason, .. }) if reason.contains("one range")),
                "{err}"
            );
            // Each section's memmap was populated once, whatever came after.
            let n = a.backing().populates();
            let _ = a.alloc(AllocRequest::order(0));
            assert_eq!(a.backing().populates(), n);
        },
    );
}

#[test]
fn a_chunk_holding_source_pages_given_back_keeps_them_reserved() {
    let l = kernelish();
    let config = Config {
        give_back: true,
        give_back_reserve: 0,
        ..Config::new(Strategy::OnDemand)
    };
    try_with_double(&l, config, carving(), |a| {
        let a = a.unwrap();
        // Section 0 (one chunk) holds its memmap and tables at 256..274.
        let p = a
            .alloc(AllocRequest::order(0).within(Constraint::Dma))
            .unwrap();
        assert!(p.0 < 1024);
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
        a.give_back();
        let stats = a.give_back();
        assert!(stats.chunks_given_back >= 1, "{stats:?}");
        assert!(a.page(Pfn(300)).is_err(), "given back");
        // The section's memmap (and so its tables) stays: it holds pages of its
        // own, and is never populated again.
        let populates = a.backing().populates();
        assert_eq!(stats.memmap_bytes_released, 0);
        let got = drain_and_check(a);
        for pfn in 256..274 {
            assert!(!got.contains(&pfn), "{pfn:#x} handed out");
            assert_eq!(a.page(Pfn(pfn)).unwrap().state(), PageState::Reserved);
        }
        assert!(a.backing().populates() > populates);
        let carved = a.backing().carved();
        assert_eq!(carved.iter().filter(|t| t.start == 256).count(), 1);
        // Accepted again, told the same pages.
        let told = a.backing().accept_taken();
        assert_eq!(told.iter().filter(|t| **t == (256..274)).count(), 2);
    });
}

#[test]
fn eager_start_up_takes_pages_before_any_allocator_exists() {
    let l = kernelish();
    try_with_double(&l, Config::new(Strategy::Eager), carving(), |a| {
        let a = a.unwrap();
        assert!(a.stats().fully_initialised);
        assert_eq!(a.backing().carved().len(), l.section_count());
        assert_eq!(a.stats().by_boot, a.stats().chunks_present);
    });
}

#[test]
fn the_source_has_nothing_for_a_chunk_granular_backing() {
    let l = kernelish();
    for strategy in Strategy::ALL {
        try_with_double(
            &l,
            Config::new(strategy),
            carving().granularity(Granularity::Chunk),
            |a| {
                let errors = match a {
                    // Eager start-up fails with the source's reason.
                    Err(meminit::InitError::Backing(e)) => {
                        assert_eq!(strategy, Strategy::Eager);
                        assert!(e.reason.contains("chunk by chunk"), "{e}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                    Ok(a) => {
                        let err = a.alloc(AllocRequest::order(0)).unwrap_err();
                        assert!(matches!(err, AllocError::Backing(_)), "{err}");
                        a.backing().source_errors()
                    }
                };
                assert!(!errors.is_empty());
                assert!(errors
                    .iter()
                    .all(|e| matches!(e, SourceError::ChunkGranularity { .. })));
            },
        );
    }
}

#[test]
fn the_source_aligns_pads_stays_in_one_run_and_stops_at_its_limit() {
    let piece = |l: &Layout, s: usize| {
        let Range { start, end } = l.section_pfns(s);
        MemmapPiece {
            section: s,
            start,
            end,
        }
    };
    let l = kernelish();
    // Section 5 (20..24 MiB): a hole of three pages at its start.
    let mut src = PageSource::new(&l, piece(&l, 5), Granularity::Section);
    assert_eq!(src.taken(), 0..0);
    assert_eq!(src.take(0), Ok(Pfn(5 * 1024 + 3)));
    // Order 2, then 3: each aligned, right after the last; padding taken too.
    assert_eq!(src.take(2), Ok(Pfn(5 * 1024 + 4)));
    assert_eq!(src.take(3), Ok(Pfn(5 * 1024 + 8)));
    assert_eq!(src.taken(), 5 * 1024 + 3..5 * 1024 + 16);
    assert_eq!(src.take(11), Err(SourceError::OrderTooLarge { order: 11 }));
    // No aligned max-order block is left in the section: refused, nothing changed.
    let exhausted = SourceError::Exhausted {
        section: 5,
        order: 10,
    };
    assert_eq!(src.take(10), Err(exhausted));
    assert_eq!(src.taken(), 5 * 1024 + 3..5 * 1024 + 16);
    // Section 2 (8..12 MiB) starts with two reserved pages: no max-order block
    // fits after them, a 2 MiB one does.
    let mut src = PageSource::new(&l, piece(&l, 2), Granularity::Section);
    assert!(matches!(src.take(10), Err(SourceError::Exhausted { .. })));
    assert_eq!(src.take(9), Ok(Pfn(2 * 1024 + 512)));
    // A chunk-granular source has nothing.
    let mut src = PageSource::new(&l, piece(&l, 0), Granularity::Chunk);
    let none = SourceError::ChunkGranularity { section: 0 };
    assert_eq!(src.take(0), Err(none));
    assert!(none.to_string().contains("section 0"), "{none}");

    // 8 MiB sections: room for more than the limit.
    let l = one_node(8 * MIB, 16 * MIB, 8 * MIB);
    let mut src = PageSource::new(&l, piece(&l, 1), Granularity::Section);
    assert_eq!(src.take(0), Ok(Pfn(2048)));
    let limit = SourceError::LimitReached {
        section: 1,
        order: 10,
    };
    assert_eq!(src.take(10), Err(limit));
    assert_eq!(src.taken(), 2048..2049);
    let mut pages = 1;
    let last = loop {
        match src.take(0) {
            Ok(_) => pages += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(pages, MAX_SOURCE_PAGES);
    assert!(matches!(last, SourceError::LimitReached { .. }), "{last}");
}

// --- Calls back into the allocator from inside the backing ---------------------

/// A small id per thread: the embedder's "current context" on a host.
fn thread_context() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, SeqCst));
    ID.with(|id| *id)
}

/// What a call back from inside the backing did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Alloc(Result<Pfn, AllocError>),
    Lookup(Result<(), LookupError>),
    Worker(Option<ChunkError>),
}

/// A leaked allocator (the hook needs `'static`) over `layout`, with thread ids
/// as contexts.
fn reentering(layout: &Layout, strategy: Strategy) -> &'static Doubled<'static> {
    let config = Config {
        context: Some(thread_context),
        ..Config::new(strategy)
    };
    leaked_double(layout, config, Double::new())
}

/// Makes `a`'s backing call `call_back` (which calls the allocator) from `populate`,
/// or from `accept` if `in_accept`; returns what the calls back got, as they come.
fn call_back(
    a: &'static Doubled<'static>,
    in_accept: bool,
    call_back: impl Fn(MemmapPiece) -> Outcome + Send + Sync + 'static,
) -> Arc<Mutex<Vec<Outcome>>> {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    let from = if in_accept {
        Phase::Accept
    } else {
        Phase::Populate
    };
    a.backing().set_hook(move |phase, piece| {
        if phase == from {
            let outcome = call_back(piece);
            seen.lock().unwrap().push(outcome);
        }
    });
    outcomes
}

/// Runs `f` on a thread and fails the test if it has not returned in a minute:
/// a hang becomes a failure.
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the allocator hung on a call from inside its backing")
}

fn small() -> Layout {
    one_node(4 * MIB, 20 * MIB, 4 * MIB)
}

#[test]
fn an_allocation_from_populate_that_would_grow_fails_under_every_strategy() {
    for in_accept in [false, true] {
        for strategy in Strategy::ALL {
            let outcomes = within_a_minute(move || {
                let a = reentering(&small(), strategy);
                let outcomes = call_back(a, in_accept, |_| {
                    Outcome::Alloc(a.alloc(AllocRequest::order(0)))
                });
                // Eager start-up populated everything before the hook existed:
                // nothing calls back, and allocations are served.
                if strategy == Strategy::Deferred {
                    let report = a.run_deferred_worker(NodeId(0));
                    assert_eq!(report.failed, 0, "{report:?}");
                }
                let first = a.alloc(AllocRequest::order(0));
                assert!(first.is_ok(), "{strategy:?}: {first:?}");
                let outcomes = outcomes.lock().unwrap().clone();
                outcomes
            });
            match strategy {
                Strategy::Eager => assert!(outcomes.is_empty()),
                // The first chunk of an empty zone: nothing initialised to serve
                // from, and growing would wait for the caller's own chunk.
                _ => {
                    assert!(!outcomes.is_empty(), "{strategy:?}");
                    assert_eq!(
                        outcomes[0],
                        Outcome::Alloc(Err(AllocError::Reentrant { order: 0 })),
                        "{strategy:?} in_accept {in_accept}"
                    );
                }
            }
        }
    }
}

#[test]
fn an_allocation_from_populate_is_served_from_memory_already_initialised() {
    let outcomes = within_a_minute(|| {
        let a = reentering(&small(), Strategy::OnDemand);
        // The first section, before the hook: it serves the call back later.
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        let outcomes = call_back(a, false, |_| {
            Outcome::Alloc(a.alloc(AllocRequest::order(0)))
        });
        // A max-order block the first chunk cannot give: growth, then a call back.
        a.alloc(AllocRequest::order(10)).unwrap();
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
        let outcomes = outcomes.lock().unwrap().clone();
        outcomes
    });
    assert!(
        matches!(outcomes[..], [Outcome::Alloc(Ok(_))]),
        "{outcomes:?}"
    );
}

#[test]
fn a_look_up_or_a_worker_from_populate_fails_instead_of_waiting() {
    for strategy in [Strategy::Deferred, Strategy::OnDemand] {
        let outcomes = within_a_minute(move || {
            let a = reentering(&small(), strategy);
            // The look-up asks for the chunk being populated: its own caller's.
            let first = call_back(a, false, |piece| {
                Outcome::Lookup(a.page_or_init(piece.start).map(|_| ()))
            });
            a.page_or_init(Pfn(2 * 1024)).unwrap();
            // Another section's chunk, from inside: not initialised either.
            let a2 = reentering(&small(), strategy);
            let second = call_back(a2, false, |_| {
                Outcome::Lookup(a2.page_or_init(Pfn(1024)).map(|_| ()))
            });
            a2.page_or_init(Pfn(3 * 1024)).unwrap();
            let a3 = reentering(&small(), strategy);
            let third = call_back(a3, false, |_| {
                Outcome::Worker(a3.run_deferred_worker(NodeId(0)).error)
            });
            a3.page_or_init(Pfn(3 * 1024)).unwrap();
            let mut all = first.lock().unwrap().clone();
            all.extend(second.lock().unwrap().iter().cloned());
            all.extend(third.lock().unwrap().iter().cloned());
            all
        });
        assert_eq!(
            outcomes[0],
            Outcome::Lookup(Err(LookupError::Reentrant { pfn: Pfn(2 * 1024) }))
        );
        assert_eq!(
            outcomes[1],
            Outcome::Lookup(Err(LookupError::Reentrant { pfn: Pfn(1024) }))
        );
        match strategy {
            // The worker runs, and stops at its first chunk.
            Strategy::Deferred => assert!(
                matches!(
                    outcomes[2],
                    Outcome::Worker(Some(ChunkError::Reentrant { .. }))
                ),
                "{outcomes:?}"
            ),
            // Not deferred: the worker has nothing to do.
            _ => assert_eq!(outcomes[2], Outcome::Worker(None)),
        }
    }
}

#[test]
fn another_thread_waits_for_a_chunk_being_populated_and_is_served() {
    // The context is per thread: a second thread asking for the chunk the first
    // one's populate holds is not re-entrant; it waits and gets its page.
    let got = within_a_minute(|| {
        let a = reentering(&small(), Strategy::OnDemand);
        // While `hold` is set, `populate` waits, holding the chunk.
        let hold = Arc::new(AtomicBool::new(true));
        let inside = Arc::new(AtomicBool::new(false));
        let (held, entered) = (hold.clone(), inside.clone());
        a.backing().set_hook(move |phase, _| {
            if phase == Phase::Populate {
                entered.store(true, SeqCst);
                while held.load(SeqCst) {
                    std::thread::yield_now();
                }
            }
        });
        std::thread::scope(|s| {
            let first = s.spawn(|| a.page_or_init(Pfn(4 * 1024)).map(|_| ()));
            while !inside.load(SeqCst) {
                std::thread::yield_now();
            }
            let second = s.spawn(|| a.page_or_init(Pfn(4 * 1024 + 1)).map(|_| ()));
            std::thread::sleep(Duration::from_millis(20));
            hold.store(false, SeqCst);
            (first.join().unwrap(), second.join().unwrap())
        })
    });
    assert_eq!(got, (Ok(()), Ok(())));
}
