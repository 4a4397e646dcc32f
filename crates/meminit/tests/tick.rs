//! `Allocator::tick`, the idle-time policy: memory that stays free goes back
//! within the configured delay and not before half of it, a zone that grows
//! again soon after giving back is held, and concurrent callers run one pass.

#![cfg(not(miri))]

mod common;

use common::{check_counts, with_allocator_chunked};
use meminit::{
    AllocRequest, Config, CpuId, FreeRequest, Granularity, NoReporter, Pfn, Strategy, HOLD_DELAYS,
    PAGE_SIZE,
};

const MIB: u64 = 1 << 20;
const DELAY: u64 = 1_000_000; // 1 ms, in the nanoseconds `tick` is given

fn config() -> Config {
    Config {
        give_back_reserve: 0,
        give_back_delay_ns: DELAY,
        ..Config::new(Strategy::OnDemand)
    }
}

/// Allocates `bytes` of order-0 pages through two CPUs' caches.
fn fill(a: &common::Alloc<'_>, bytes: u64) -> Vec<Pfn> {
    (0..bytes / PAGE_SIZE)
        .map(|i| {
            a.alloc(AllocRequest::order(0).on(CpuId(i as u32 % 2)))
                .expect("memory is there")
        })
        .collect()
}

fn release(a: &common::Alloc<'_>, held: Vec<Pfn>) {
    for (i, pfn) in held.into_iter().enumerate() {
        a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 2)))
            .unwrap();
    }
    a.drain(None).unwrap();
}

#[test]
fn free_memory_goes_back_within_the_delay_and_not_before_half_of_it() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let held = fill(a, 32 * MIB);
        let uninit = |a: &common::Alloc<'_>| a.zones().map(|z| z.uninitialised).sum::<u64>();
        let grown = uninit(a);
        release(a, held);
        // The first pass marks; a tick before half the delay runs none.
        let first = a
            .tick(0, &mut NoReporter)
            .unwrap()
            .expect("a first pass runs");
        assert_eq!(first.chunks_given_back, 0);
        assert!(first.chunks_marked > 0);
        assert!(a.tick(DELAY / 2 - 1, &mut NoReporter).unwrap().is_none());
        // Half the delay later, the marked chunks go back.
        let second = a.tick(DELAY / 2, &mut NoReporter).unwrap().expect("due");
        assert_eq!(second.chunks_given_back, first.chunks_marked);
        assert_eq!(
            uninit(a) - grown,
            second.pages_given_back,
            "given back counts as uninitialised"
        );
        assert!(
            second.pages_given_back >= 24 * MIB / PAGE_SIZE,
            "{second:?}"
        );
        check_counts(a, &Default::default());
    });
}

#[test]
fn a_zone_that_grows_again_soon_after_giving_back_is_held() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let held = fill(a, 16 * MIB);
        release(a, held);
        a.tick(0, &mut NoReporter).unwrap();
        let gave = a.tick(DELAY / 2, &mut NoReporter).unwrap().unwrap();
        assert!(gave.chunks_given_back > 0);
        // The workload comes back at once: the zone grows again, then frees.
        let held = fill(a, 16 * MIB);
        release(a, held);
        let t = DELAY;
        let held_pass = a.tick(t, &mut NoReporter).unwrap().unwrap();
        assert!(held_pass.zones_held > 0, "{held_pass:?}");
        assert_eq!(held_pass.chunks_given_back, 0);
        assert_eq!(held_pass.chunks_marked, 0);
        // Within the hold, still nothing goes back.
        let later = a.tick(t + DELAY / 2, &mut NoReporter).unwrap().unwrap();
        assert!(later.zones_held > 0);
        assert_eq!(later.chunks_given_back, 0);
        // Once the hold is over, give-back resumes: mark, then give back.
        let after = t + DELAY * HOLD_DELAYS;
        let marked = a.tick(after, &mut NoReporter).unwrap().unwrap();
        assert!(marked.chunks_marked > 0, "{marked:?}");
        let back = a.tick(after + DELAY / 2, &mut NoReporter).unwrap().unwrap();
        assert_eq!(back.chunks_given_back, marked.chunks_marked);
        check_counts(a, &Default::default());
    });
}

#[test]
fn growth_that_never_followed_a_give_back_holds_nothing() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let held = fill(a, 16 * MIB);
        release(a, held);
        let first = a.tick(0, &mut NoReporter).unwrap().unwrap();
        assert_eq!(first.zones_held, 0);
        let second = a.tick(DELAY / 2, &mut NoReporter).unwrap().unwrap();
        assert_eq!(second.zones_held, 0);
        assert!(second.chunks_given_back > 0);
    });
}

#[test]
fn concurrent_callers_run_one_pass() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let held = fill(a, 8 * MIB);
        release(a, held);
        for round in 0..50u64 {
            let now = round * DELAY;
            let ran: usize = std::thread::scope(|s| {
                let workers: Vec<_> = (0..4)
                    .map(|_| s.spawn(move || a.tick(now, &mut NoReporter).unwrap().is_some()))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap() as usize)
                    .sum()
            });
            assert_eq!(ran, 1, "round {round}");
        }
        check_counts(a, &Default::default());
    });
}

#[test]
fn without_give_back_a_tick_only_reports() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    let config = Config {
        give_back: false,
        ..config()
    };
    with_allocator_chunked(&layout, config, Granularity::Section, |a| {
        let held = fill(a, 16 * MIB);
        let grown = a.stats().memmap_bytes;
        release(a, held);
        for t in 0..4 {
            let pass = a.tick(t * DELAY, &mut NoReporter).unwrap().unwrap();
            assert_eq!(pass.chunks_given_back + pass.chunks_marked, 0);
        }
        assert_eq!(a.stats().memmap_bytes, grown);
    });
}

/// A CPU cache that allocated and freed nothing between two passes is drained
/// by the second, so its chunks can go back; one that was busy meanwhile keeps
/// its blocks. Nothing is drained by the first pass, which has nothing to
/// compare with.
#[test]
fn an_idle_cpu_cache_is_drained_at_the_next_pass_and_a_busy_one_is_not() {
    let layout = common::simple(64 * MIB, 16 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let held = fill(a, 4 * MIB);
        // Freed through both CPUs' caches, and left there.
        for (i, pfn) in held.into_iter().enumerate() {
            a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 2)))
                .unwrap();
        }
        let cached = |a: &common::Alloc<'_>| a.zones().map(|z| z.cached).sum::<u64>();
        assert!(cached(a) > 0);
        let first = a
            .tick(0, &mut NoReporter)
            .unwrap()
            .expect("a first pass runs");
        assert_eq!(first.idle_caches_drained, 0, "{first:?}");
        let before = cached(a);
        assert!(before > 0);
        // CPU 1 works between the passes; CPU 0 sleeps.
        let p = a.alloc(AllocRequest::order(0).on(CpuId(1))).unwrap();
        let second = a.tick(DELAY / 2, &mut NoReporter).unwrap().expect("due");
        assert_eq!(second.idle_caches_drained, 1, "{second:?}");
        assert!(second.idle_cache_pages > 0);
        assert_eq!(cached(a), before - 1 - second.idle_cache_pages);
        // CPU 1 sleeps from now on too: the next pass drains it.
        a.free(FreeRequest::pfn(p).on(CpuId(1))).unwrap();
        a.tick(DELAY, &mut NoReporter).unwrap().expect("due");
        let fourth = a
            .tick(3 * DELAY / 2, &mut NoReporter)
            .unwrap()
            .expect("due");
        assert_eq!(fourth.idle_caches_drained, 1, "{fourth:?}");
        assert_eq!(cached(a), 0);
        check_counts(a, &Default::default());
    });
}
