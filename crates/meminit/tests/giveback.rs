//! Give-back and free page reporting: memory follows use down.
//!
//! A backing that records every populate and depopulate (and refuses to populate a
//! piece twice, or to depopulate one that is not populated), scribbles over the
//! memmap it releases (so a descriptor read after give-back and before the next
//! initialisation shows up as garbage), and hears of reported memory used again.

#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::ops::Range;

use common::{check_counts, with_double, Double, Doubled, Ledger};
use meminit::{
    AllocRequest, Config, CpuId, FreeReporter, FreeRequest, Granularity, Layout, LayoutBuilder,
    NodeId, PageState, Pfn, RangeKind, ReportError, Strategy, REPORT_ORDER,
};

const MIB: u64 = 1 << 20;

type Alloc<'a> = Doubled<'a>;

fn config(reserve: u64) -> Config {
    let mut c = Config::new(Strategy::OnDemand);
    c.give_back_reserve = reserve;
    c
}

/// An allocator over a backing that records every call, checks that no piece is
/// populated twice nor depopulated unless populated, and releases what it is
/// asked to (scribbling over it).
fn with_releasing<T>(
    layout: &Layout,
    config: Config,
    granularity: Granularity,
    f: impl FnOnce(&Alloc<'_>) -> T,
) -> T {
    let double = Double::new().granularity(granularity).releasing();
    with_double(layout, config, double, f)
}

/// Records what it is given; fails on command.
#[derive(Default)]
struct Recorder {
    ranges: Vec<Range<Pfn>>,
    fail: bool,
}

impl FreeReporter for Recorder {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        assert!(!ranges.is_empty() && ranges.len() <= meminit::REPORT_BATCH);
        if self.fail {
            return Err(ReportError {
                reason: "injected failure",
            });
        }
        self.ranges.extend(ranges.iter().cloned());
        Ok(())
    }
}

/// 64 MiB on one node from 1 MiB, 16 MiB sections, 4 MiB chunks.
fn machine() -> Layout {
    common::simple(64 * MIB, 16 * MIB)
}

/// Allocates `pages` single pages through the CPU caches, writing nothing.
fn fill(a: &Alloc<'_>, pages: u64, ledger: &mut Ledger) -> Vec<Pfn> {
    let mut held = Vec::new();
    for i in 0..pages {
        let pfn = a
            .alloc(AllocRequest::order(0).on(CpuId(i as u32 % 2)))
            .unwrap_or_else(|e| panic!("allocation {i} of {pages}: {e}"));
        ledger.record(a, pfn, 0);
        held.push(pfn);
    }
    held
}

fn release(a: &Alloc<'_>, held: Vec<Pfn>, ledger: &mut Ledger) {
    for (i, pfn) in held.into_iter().enumerate() {
        ledger.release(a, pfn.0);
        a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 2)).order(0))
            .unwrap();
    }
    a.drain(None).unwrap_or(0);
}

/// Every usable page allocated through the CPU caches, then freed and the
/// caches drained: every chunk initialised and free. The ledger, empty again.
fn fill_and_release(a: &Alloc<'_>) -> Ledger {
    let mut ledger = Ledger::default();
    let held = fill(a, usable_pages(a), &mut ledger);
    release(a, held, &mut ledger);
    ledger
}

fn usable_pages(a: &Alloc<'_>) -> u64 {
    a.zones().map(|z| z.managed).sum()
}

#[test]
fn chunks_that_stay_free_for_two_passes_are_given_back_with_their_memmap() {
    for granularity in [Granularity::Section, Granularity::Chunk] {
        with_releasing(&machine(), config(0), granularity, |a| {
            let mut ledger = Ledger::default();
            let all = usable_pages(a);
            let held = fill(a, all, &mut ledger);
            assert!(a.stats().fully_initialised);
            let full = a.stats().memmap_bytes;
            release(a, held, &mut ledger);
            check_counts(a, &ledger.per_zone);

            let first = a.give_back();
            assert_eq!(
                first.chunks_given_back, 0,
                "{granularity:?}: not before two passes"
            );
            assert!(first.chunks_marked > 0);
            assert_eq!(a.stats().memmap_bytes, full);

            let second = a.give_back();
            assert_eq!(second.chunks_given_back, first.chunks_marked);
            assert_eq!(second.pages_given_back, all);
            assert_eq!(second.memmap_bytes_released, full, "{granularity:?}");
            assert_eq!(a.stats().memmap_bytes, 0);
            assert!(!a.stats().fully_initialised, "the off switch is off again");
            assert_eq!(a.backing().populated_now(), 0);
            for z in a.zones() {
                assert_eq!(z.free, 0, "{z:?}");
                assert_eq!(z.uninitialised, z.managed, "{z:?}");
            }
            check_counts(a, &ledger.per_zone);
            assert_eq!(a.stats().given_back, second.chunks_given_back);

            // Everything can be had again, every descriptor written afresh over
            // the garbage the backing left.
            let held = fill(a, all, &mut ledger);
            assert!(a.stats().fully_initialised);
            assert_eq!(a.stats().memmap_bytes, full);
            check_counts(a, &ledger.per_zone);
            release(a, held, &mut ledger);
            common_coalesced(a);
        });
    }
}

/// Every usable page free and merged, nothing uninitialised.
fn common_coalesced(a: &Alloc<'_>) {
    a.drain(None).unwrap_or(0);
    assert_eq!(a.unmerged_free_blocks(), 0);
    for z in a.zones() {
        assert_eq!(z.free, z.managed, "{z:?}");
    }
}

#[test]
fn the_reserve_stays_initialised() {
    with_releasing(&machine(), config(8 * MIB), Granularity::Chunk, |a| {
        let ledger = fill_and_release(a);
        a.give_back();
        let stats = a.give_back();
        assert!(stats.chunks_given_back > 0);
        let z = a.zones().find(|z| z.free > 0).unwrap();
        assert!(z.free >= 8 * MIB / 4096, "{z:?}");
        assert!(
            z.free < 8 * MIB / 4096 + 1024,
            "{z:?}: at most a chunk above"
        );
        check_counts(a, &ledger.per_zone);
    });
}

#[test]
fn chunks_with_an_allocated_or_cached_page_are_kept() {
    with_releasing(&machine(), config(0), Granularity::Chunk, |a| {
        let mut ledger = Ledger::default();
        let held = fill(a, usable_pages(a), &mut ledger);
        // Keep one page allocated, and put one freed page in CPU 0's cache.
        let kept = held[5000];
        for (i, pfn) in held.into_iter().enumerate() {
            if pfn == kept {
                continue;
            }
            ledger.release(a, pfn.0);
            a.free(FreeRequest::pfn(pfn).on(CpuId((i % 2) as u32)).order(0))
                .unwrap();
        }
        // Drain everything, then cache exactly one page again.
        a.drain(None).unwrap_or(0);
        let again = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        a.free(FreeRequest::pfn(again).on(CpuId(0)).order(0))
            .unwrap();
        a.give_back();
        // The other chunks do go back: the two kept are kept for a reason.
        assert!(a.give_back().chunks_given_back > 0);
        let page = a.page(kept).unwrap();
        assert_eq!(page.state(), PageState::Allocated { order: 0 });
        let cached_page = a.page(again).expect("a cached page's chunk is kept");
        assert_eq!(cached_page.state(), PageState::Cached { order: 0 });
        ledger.release(a, kept.0);
        a.free(FreeRequest::pfn(kept).order(0)).unwrap();
        check_counts(a, &ledger.per_zone);
    });
}

#[test]
fn a_chunk_used_between_passes_waits_for_two_more() {
    with_releasing(&machine(), config(0), Granularity::Chunk, |a| {
        fill_and_release(a);
        let marked = a.give_back().chunks_marked;
        // Use one page between the passes: its chunk is no longer aged.
        let p = a.alloc(AllocRequest::order(0)).unwrap();
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
        let second = a.give_back();
        assert_eq!(second.chunks_given_back, marked - 1);
        assert_eq!(second.chunks_marked, 1);
        assert_eq!(a.give_back().chunks_given_back, 1);
        check_counts(a, &HashMap::new());
    });
}

#[test]
fn free_blocks_are_reported_once_off_the_lists_and_their_reuse_is_told() {
    let mut c = config(0);
    c.give_back = false;
    with_releasing(&machine(), c, Granularity::Chunk, |a| {
        let all = usable_pages(a);
        let ledger = fill_and_release(a);

        struct Checking<'r, 'a> {
            a: &'r Alloc<'a>,
            seen: Vec<Range<Pfn>>,
        }
        impl FreeReporter for Checking<'_, '_> {
            fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
                for r in ranges {
                    let pages = r.end.0 - r.start.0;
                    assert!(pages >= 1 << REPORT_ORDER && pages.is_power_of_two());
                    assert_eq!(r.start.0 % pages, 0, "{r:?} aligned");
                    // Off the lists while the host has it: no one can take it.
                    assert!(matches!(
                        self.a.page(r.start).unwrap().state(),
                        PageState::Cached { .. }
                    ));
                }
                self.seen.extend(ranges.iter().cloned());
                Ok(())
            }
        }
        let mut reporter = Checking { a, seen: vec![] };
        let stats = a.report_free(&mut reporter).unwrap();
        assert!(stats.pages > all - 2048, "{stats:?} of {all}");
        assert_eq!(stats.chunks_given_back, 0, "give-back is off");
        let reported: u64 = a.zones().map(|z| z.reported).sum();
        assert_eq!(reported, stats.pages);
        // Nothing new to report.
        let mut again = Recorder::default();
        assert_eq!(a.report_free(&mut again).unwrap().pages, 0);
        assert!(again.ranges.is_empty());
        check_counts(a, &ledger.per_zone);
        assert_eq!(a.unmerged_free_blocks(), 0);

        // Taking reported memory again tells the backing, exactly for what was
        // taken.
        let p = a.alloc(AllocRequest::order(3)).unwrap();
        let told = a.backing().reused();
        assert_eq!(told, vec![p..Pfn(p.0 + 8)]);
        let after: u64 = a.zones().map(|z| z.reported).sum();
        assert_eq!(after, reported - 8, "the split-off halves stay reported");
        // Freed, it merges with reported buddies: those are no longer counted
        // reported, and the backing is told of each.
        a.free(FreeRequest::pfn(p).order(0)).unwrap_err();
        a.free(FreeRequest::pfn(p).order(3)).unwrap();
        let merged: u64 = a.zones().map(|z| z.reported).sum();
        let told: u64 = a
            .backing()
            .reused()
            .iter()
            .map(|r| r.end.0 - r.start.0)
            .sum();
        assert_eq!(
            merged + told,
            reported,
            "every reported page is counted or told"
        );
        let stats = a.report_free(&mut Recorder::default()).unwrap();
        assert_eq!(stats.pages, 1024, "the merged max-order block, again");
    });
}

#[test]
fn a_failed_report_puts_everything_back_unreported() {
    with_releasing(&machine(), config(0), Granularity::Chunk, |a| {
        let ledger = fill_and_release(a);
        let mut failing = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let e = a.report_free(&mut failing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "free page reporting failed: injected failure"
        );
        assert_eq!(a.zones().map(|z| z.reported).sum::<u64>(), 0);
        check_counts(a, &ledger.per_zone);
        assert_eq!(a.unmerged_free_blocks(), 0);
        let mut ok = Recorder::default();
        assert!(a.report_free(&mut ok).unwrap().pages > 0);
    });
}

#[test]
fn given_back_chunks_are_reported_unless_they_were_already() {
    with_releasing(&machine(), config(0), Granularity::Section, |a| {
        let ledger = fill_and_release(a);
        // Give-back without reporting marks the chunks; the next pass reports
        // the free blocks of a pageblock or more, then gives the chunks back.
        a.give_back();
        let mut r = Recorder::default();
        let stats = a.report_free(&mut r).unwrap();
        assert_eq!(stats.chunks_given_back, 16, "{stats:?}");
        // Only the first chunk (from 1 MiB: 768 pages in blocks of order 8 and 9)
        // held memory not reported as blocks; it is reported as the chunk goes.
        assert_eq!(stats.pages_given_back_reported, 768, "{stats:?}");
        let chunk0: Vec<_> = r.ranges.iter().filter(|x| x.start.0 < 1024).collect();
        assert!(chunk0.contains(&&(Pfn(256)..Pfn(1024))), "{chunk0:?}");
        check_counts(a, &ledger.per_zone);
        // Re-initialised, the chunk is accepted and whole again.
        fill_and_release(a);
        common_coalesced(a);
    });
}

#[test]
fn spikes_of_random_sizes_never_fail_and_keep_the_counts() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut l = LayoutBuilder::new();
    // Two nodes with a hole and reserved memory inside usable memory.
    l.section_size(16 * MIB)
        .add(MIB, 40 * MIB, RangeKind::Usable, NodeId(0))
        .add(20 * MIB, 21 * MIB, RangeKind::Reserved, NodeId(0))
        .add(48 * MIB, 96 * MIB, RangeKind::Usable, NodeId(1));
    let layout = l.build().unwrap();
    for granularity in [Granularity::Section, Granularity::Chunk] {
        with_releasing(&layout, config(4 * MIB), granularity, |a| {
            let mut ledger = Ledger::default();
            let all = usable_pages(a);
            for round in 0..12 {
                let pages = rng.below(all) + 1;
                let mut held = Vec::new();
                let mut left = pages;
                while left > 0 {
                    let order = (rng.below(4) as u32).min(63 - left.leading_zeros());
                    let node = NodeId(rng.below(2) as u32);
                    let pfn = a
                        .alloc(AllocRequest::order(order).on(CpuId(round % 2)).node(node))
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    ledger.record(a, pfn, order);
                    held.push((pfn, order));
                    left -= 1 << order;
                }
                check_counts(a, &ledger.per_zone);
                for (i, (pfn, order)) in held.into_iter().enumerate() {
                    ledger.release(a, pfn.0);
                    a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 3)).order(order))
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                for _ in 0..rng.below(3) {
                    a.report_free(&mut Recorder::default()).unwrap();
                }
                a.drain(None).unwrap_or(0);
                check_counts(a, &ledger.per_zone);
                assert_eq!(a.unmerged_free_blocks(), 0);
            }
        });
    }
}

/// A small deterministic generator, enough to vary spike sizes.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
