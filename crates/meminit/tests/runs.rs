//! Start-up and the deferred workers initialise a section's chunks as one run:
//! one claim, one publish, one splice per zone and one finish for the run. A
//! backing failure in the middle of a run must cost that chunk alone: the
//! chunks before it are initialised, those after it are initialised later in
//! the same pass, the failing one is retried, and the contract still holds
//! (each piece populated once, each chunk accepted exactly once while it
//! succeeds).

#![cfg(not(miri))]

mod common;

use common::{leaked_double, one_node, try_with_double, with_double, Call, Double, Doubled, Phase};
use meminit::{
    AllocError, AllocRequest, ChunkError, Config, Granularity, InitError, Layout, NodeId, Pfn,
    Strategy, WORKER_RETRIES, WORKER_RUN,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;
/// Pages in a chunk (one 4 MiB max-order block).
const CHUNK: u64 = 1024;

/// 16..80 MiB in 16 MiB sections of four 4 MiB chunks: sections 1 to 4,
/// chunks 4 to 19.
fn four_sections() -> Layout {
    one_node(16 * MIB, 80 * MIB, 16 * MIB)
}

/// Chunk 6, the third of section 1: a run from chunk 4 fails in its middle.
const BAD: Pfn = Pfn(6 * CHUNK);

/// Successful accepts per chunk (its first pfn).
fn accepts(a: &Doubled<'_>) -> HashMap<u64, usize> {
    let mut by = HashMap::new();
    for pfn in a.backing().accepted() {
        *by.entry(pfn).or_insert(0) += 1;
    }
    by
}

/// Calls of `accept` for the chunk at `start`, failed ones included.
fn accept_calls(a: &Doubled<'_>, start: Pfn) -> usize {
    a.backing()
        .count(|c| matches!(c, Call::Accept { chunk, .. } if chunk.start == start))
}

/// Every chunk but `BAD` accepted exactly once, `BAD` never.
fn every_other_chunk_accepted_once(a: &Doubled<'_>) {
    let by = accepts(a);
    for chunk in 4..20 {
        let expected = usize::from(chunk * CHUNK != BAD.0);
        assert_eq!(
            by.get(&(chunk * CHUNK)).copied().unwrap_or(0),
            expected,
            "chunk {chunk}: {by:?}"
        );
    }
}

/// What the allocator hands out until it runs out, in pages.
fn drain(a: &Doubled<'_>) -> (u64, Option<AllocError>) {
    let mut n = 0;
    loop {
        match a.alloc(AllocRequest::order(0)) {
            Ok(_) => n += 1,
            Err(AllocError::OutOfMemory { .. }) => return (n, None),
            Err(e) => return (n, Some(e)),
        }
    }
}

#[test]
fn a_worker_goes_on_past_a_chunk_whose_accept_fails_in_the_middle_of_a_run() {
    let l = four_sections();
    let double = Double::new().failing_accept([BAD]);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!((report.chunks, report.failed), (15, 1), "{report:?}");
        assert_eq!(report.pages, 15 * CHUNK);
        assert!(
            matches!(report.error, Some(ChunkError::Backing(_))),
            "{report:?}"
        );
        // The chunks before the failing one and after it, in its section too.
        for chunk in [4, 5, 7] {
            assert!(a.page(Pfn(chunk * CHUNK)).is_ok(), "chunk {chunk}");
        }
        assert!(a.page(BAD).is_err());
        every_other_chunk_accepted_once(a);
        assert_eq!(accept_calls(a, BAD), 1 + WORKER_RETRIES as usize);
        // One populate for each section: the run's failure did not repeat it.
        for section in 1..5 {
            assert_eq!(a.backing().populates_of(section), 1, "section {section}");
        }
        let stats = a.stats();
        assert_eq!((stats.chunks_done, stats.by_workers), (15, 15));
        assert!(!stats.fully_initialised);
        // Everything the worker initialised serves; the failing chunk's
        // memory stays out of reach and the caller hears why.
        let (n, e) = drain(a);
        assert_eq!(n, 15 * CHUNK);
        assert!(matches!(e, Some(AllocError::Backing(_))), "{e:?}");
    });
}

#[test]
fn a_worker_goes_on_past_a_chunk_whose_populate_fails_in_the_middle_of_a_run() {
    let l = four_sections();
    let double = Double::new()
        .granularity(Granularity::Chunk)
        .failing_populate_of(BAD);
    with_double(&l, Config::new(Strategy::Deferred), double, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!((report.chunks, report.failed), (15, 1), "{report:?}");
        let populates = |start: Pfn| {
            a.backing()
                .count(|c| matches!(c, Call::Populate { piece, .. } if piece.start == start))
        };
        // Each chunk's memmap populated once; the failing one tried once in
        // the pass and again in each retry.
        for chunk in (4..20).filter(|&c| c * CHUNK != BAD.0) {
            assert_eq!(populates(Pfn(chunk * CHUNK)), 1, "chunk {chunk}");
        }
        assert_eq!(populates(BAD), 1 + WORKER_RETRIES as usize);
        every_other_chunk_accepted_once(a);
        assert_eq!(accept_calls(a, BAD), 0);
        assert_eq!(drain(a).0, 15 * CHUNK);
    });
}

#[test]
fn a_chunk_that_fails_for_a_moment_in_a_run_is_retried_and_accepted_once() {
    let l = four_sections();
    for granularity in [Granularity::Section, Granularity::Chunk] {
        let double = Double::new()
            .granularity(granularity)
            .failing_accept_times(BAD, 1);
        with_double(&l, Config::new(Strategy::Deferred), double, |a| {
            let report = a.run_deferred_worker(NodeId(0));
            assert_eq!((report.chunks, report.failed), (16, 0), "{report:?}");
            assert_eq!(report.error, None);
            let by = accepts(a);
            assert!((4..20).all(|c| by.get(&(c * CHUNK)) == Some(&1)), "{by:?}");
            assert_eq!(accept_calls(a, BAD), 2);
            assert!(a.stats().fully_initialised);
            assert_eq!(drain(a), (16 * CHUNK, None));
        });
    }
}

#[test]
fn eager_start_up_stops_at_a_chunk_that_fails_in_the_middle_of_a_run() {
    let l = four_sections();
    for chunk_granular in [false, true] {
        // What `accept` was called for, failures included (the hook runs first).
        let seen = Arc::new(Mutex::new(Vec::new()));
        let double = if chunk_granular {
            Double::new()
                .granularity(Granularity::Chunk)
                .failing_populate_of(BAD)
        } else {
            Double::new().failing_accept([BAD])
        };
        let double = double.hook({
            let seen = seen.clone();
            move |phase, piece| {
                if phase == Phase::Accept {
                    seen.lock().unwrap().push(piece.start.0 / CHUNK);
                }
            }
        });
        try_with_double(&l, Config::new(Strategy::Eager), double, |started| {
            let Err(e) = started else {
                panic!("start-up over a failing chunk succeeded");
            };
            assert!(matches!(e, InitError::Backing(_)), "{e}");
        });
        // The chunks before the failing one, once each; the failing one once
        // when its accept fails, never when its populate did; none after it.
        let expected: &[u64] = if chunk_granular { &[4, 5] } else { &[4, 5, 6] };
        assert_eq!(*seen.lock().unwrap(), expected);
    }
}

#[test]
fn start_up_claims_each_section_as_one_run() {
    // Chunk by chunk memmap: a run populates its chunks' memmap, then accepts
    // them, then writes them; a chunk at a time would alternate.
    let l = four_sections();
    let double = Double::new().granularity(Granularity::Chunk);
    with_double(&l, Config::new(Strategy::Eager), double, |a| {
        let order: Vec<(char, u64)> = a.backing().pick(|c| match c {
            Call::Populate { piece, .. } => Some(('p', piece.start.0 / CHUNK)),
            Call::Accept { chunk, .. } => Some(('a', chunk.start.0 / CHUNK)),
            _ => None,
        });
        let expected: Vec<(char, u64)> = (1..5)
            .flat_map(|s| {
                let chunks = 4 * s..4 * s + 4;
                chunks
                    .clone()
                    .map(|c| ('p', c))
                    .chain(chunks.map(|c| ('a', c)))
            })
            .collect();
        assert_eq!(order, expected);
    });
}

#[test]
fn a_worker_claims_its_chunks_as_runs_and_growth_stays_a_chunk_at_a_time() {
    let l = four_sections();
    let a = leaked_double(&l, Config::new(Strategy::Deferred), Double::new());
    // At each accept, whether the chunk before it (in the same section) could
    // be read: a run publishes its chunks together, after every accept.
    let readable: &'static Mutex<Vec<(u64, bool)>> = Box::leak(Box::default());
    a.backing().set_hook(move |phase, piece| {
        let chunk = piece.start.0 / CHUNK;
        if phase == Phase::Accept && chunk % 4 != 0 {
            let before = a.page(Pfn((chunk - 1) * CHUNK)).is_ok();
            readable.lock().unwrap().push((chunk, before));
        }
    });
    // Growth first: one chunk (4), alone, so chunk 5's accept comes later.
    a.alloc(AllocRequest::order(0)).unwrap();
    assert_eq!(a.stats().by_growth, 1);
    let report = a.run_deferred_worker(NodeId(0));
    assert_eq!(report.chunks, 15, "{report:?}");
    let seen = readable.lock().unwrap().clone();
    // Chunk 5 starts a run after the grown chunk 4; every other chunk of a
    // section is accepted while the one before it is still unpublished.
    let expected: Vec<(u64, bool)> = (4..20)
        .filter(|c| c % 4 != 0)
        .map(|c| (c, c == 5))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_workers_runs_are_bounded_so_that_growth_waits_for_a_few_chunks() {
    // One 64 MiB section of sixteen chunks (16 to 31).
    let l = one_node(64 * MIB, 128 * MIB, 64 * MIB);
    let a = leaked_double(&l, Config::new(Strategy::Deferred), Double::new());
    let readable: &'static Mutex<Vec<(u64, bool)>> = Box::leak(Box::default());
    a.backing().set_hook(move |phase, piece| {
        let chunk = piece.start.0 / CHUNK;
        if phase == Phase::Accept && chunk > 16 {
            let before = a.page(Pfn((chunk - 1) * CHUNK)).is_ok();
            readable.lock().unwrap().push((chunk, before));
        }
    });
    let report = a.run_deferred_worker(NodeId(0));
    assert_eq!(report.chunks, 16, "{report:?}");
    // A new run starts every WORKER_RUN chunks: only there is the chunk before
    // already published.
    let expected: Vec<(u64, bool)> = (17..32)
        .map(|c| (c, (c - 16) % WORKER_RUN as u64 == 0))
        .collect();
    assert_eq!(*readable.lock().unwrap(), expected);
}

#[test]
fn eager_start_up_accepts_every_chunk_once_and_counts_them_by_boot() {
    let l = four_sections();
    for granularity in [Granularity::Section, Granularity::Chunk] {
        let double = Double::new().granularity(granularity);
        with_double(&l, Config::new(Strategy::Eager), double, |a| {
            let by = accepts(a);
            assert!((4..20).all(|c| by.get(&(c * CHUNK)) == Some(&1)), "{by:?}");
            let stats = a.stats();
            assert_eq!((stats.chunks_done, stats.by_boot), (16, 16));
            assert!(stats.fully_initialised);
            assert_eq!(drain(a), (16 * CHUNK, None));
        });
    }
}

#[test]
fn workers_and_growers_share_the_chunks_of_runs_exactly() {
    let l = four_sections();
    for round in 0..20 {
        let double = Double::new().failing_accept_times(BAD, 1);
        with_double(&l, Config::new(Strategy::Deferred), double, |a| {
            let (reports, taken): (Vec<_>, Vec<_>) = std::thread::scope(|s| {
                let workers: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| a.run_deferred_worker(NodeId(0))))
                    .collect();
                let growers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let mut mine = Vec::new();
                            while let Ok(pfn) = a.alloc(AllocRequest::order(0)) {
                                mine.push(pfn.0);
                            }
                            mine
                        })
                    })
                    .collect();
                (
                    workers.into_iter().map(|h| h.join().unwrap()).collect(),
                    growers.into_iter().map(|h| h.join().unwrap()).collect(),
                )
            });
            let mut pfns: Vec<u64> = taken.into_iter().flatten().collect();
            pfns.sort_unstable();
            pfns.dedup();
            // Every page handed out once: none lost to a run, none twice.
            let (rest, e) = drain(a);
            assert_eq!(e, None, "round {round}");
            assert_eq!(pfns.len() as u64 + rest, 16 * CHUNK, "round {round}");
            let stats = a.stats();
            assert_eq!(stats.chunks_done, 16, "round {round}: {reports:?}");
            let by_workers: u64 = reports.iter().map(|r| r.chunks).sum();
            assert_eq!(stats.by_workers, by_workers, "round {round}");
            assert_eq!(stats.by_workers + stats.by_growth + stats.by_lookup, 16);
            let by = accepts(a);
            assert!((4..20).all(|c| by.get(&(c * CHUNK)) == Some(&1)), "{by:?}");
        });
    }
}
