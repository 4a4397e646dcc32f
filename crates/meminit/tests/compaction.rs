//! Compaction: the hook is the only thing that moves a held block; chunks of
//! sparse movable memory are emptied and go back; a refusal leaves everything
//! as it was; allocating threads run while compaction runs; live pages gather
//! in the sections that stay, so whole sections' memmap goes back; bounded
//! passes add up to a whole one.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::{with_allocator_chunked, with_double, Alloc, Double};
use meminit::{
    AllocFlags, AllocRequest, Config, CpuId, FreeRequest, Granularity, MemmapBacking, Migrate,
    MigrateError, PageState, Pfn, SliceBacking, Strategy,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// An allocator over any backing, with the tests' lock.
type Over<'a, B> = meminit::Allocator<'a, B, parking_lot::RawMutex>;

fn config() -> Config {
    Config {
        give_back_reserve: 0,
        ..Config::new(Strategy::OnDemand)
    }
}

/// The test's ownership table: pfn → (tag, order). A held block's tag is in its
/// head's first user word: its "contents", which only the hook moves.
#[derive(Default)]
struct Table {
    at: HashMap<u64, (u64, u32)>,
}

/// A hook over a table, refusing every `refuse_every`-th call (0: never).
struct Hook<'a, 't, B: MemmapBacking = SliceBacking<'a>> {
    a: &'a Over<'a, B>,
    table: &'t Mutex<Table>,
    calls: u64,
    refuse_every: u64,
    moved: u64,
}

impl<'a, 't, B: MemmapBacking> Hook<'a, 't, B> {
    fn new(a: &'a Over<'a, B>, table: &'t Mutex<Table>, refuse_every: u64) -> Self {
        Hook {
            a,
            table,
            calls: 0,
            refuse_every,
            moved: 0,
        }
    }
}

// SAFETY: on `Ok` the table names `to` instead of `from` and the contents (the
// tag) were copied; the test holds no other reference to the block.
unsafe impl<B: MemmapBacking> Migrate for Hook<'_, '_, B> {
    fn migrate(&mut self, from: Pfn, to: Pfn, order: u32) -> Result<(), MigrateError> {
        self.calls += 1;
        if self.refuse_every != 0 && self.calls % self.refuse_every == 0 {
            return Err(MigrateError { reason: "pinned" });
        }
        let mut table = self.table.lock().unwrap();
        let Some(&(tag, o)) = table.at.get(&from.0) else {
            return Err(MigrateError {
                reason: "not the table's",
            });
        };
        assert_eq!(o, order, "asked to move {from} with the wrong order");
        assert_eq!(
            self.a.page(to).unwrap().state(),
            PageState::Allocated { order },
            "target {to} is not allocated"
        );
        let word = |p: Pfn| self.a.page(p).unwrap().user_word(0).unwrap();
        word(to).store(tag, std::sync::atomic::Ordering::Relaxed);
        table.at.remove(&from.0);
        table.at.insert(to.0, (tag, order));
        self.moved += 1;
        Ok(())
    }
}

fn tag_of<B: MemmapBacking>(a: &Over<'_, B>, pfn: u64) -> u64 {
    a.page(Pfn(pfn))
        .unwrap()
        .user_word(0)
        .unwrap()
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Every block in the table is allocated, with its order and its tag, where
/// the table says it is.
fn check_table<B: MemmapBacking>(a: &Over<'_, B>, table: &Table) {
    for (&pfn, &(tag, order)) in &table.at {
        assert_eq!(
            a.page(Pfn(pfn)).unwrap().state(),
            PageState::Allocated { order },
            "{pfn:#x}"
        );
        assert_eq!(
            tag_of(a, pfn),
            tag,
            "{pfn:#x}: contents not where the table says"
        );
    }
}

/// Allocates `pages` worth of movable blocks of orders 0-2 on two CPUs, keeps
/// one in `keep_one_in` (tagged, in the table), frees the rest.
fn sparse<B: MemmapBacking>(a: &Over<'_, B>, pages: u64, keep_one_in: u64, seed: u64) -> Table {
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut table, mut short) = (Table::default(), Vec::new());
    let mut used = 0;
    let mut tag = 1;
    while used < pages {
        let order = (next() % 3) as u32;
        let cpu = CpuId((used % 2) as u32);
        let req = AllocRequest::order(order)
            .on(cpu)
            .flags(AllocFlags::MOVABLE);
        let pfn = a.alloc(req).unwrap();
        used += 1 << order;
        if next() % keep_one_in == 0 {
            a.page(pfn)
                .unwrap()
                .user_word(0)
                .unwrap()
                .store(tag, std::sync::atomic::Ordering::Relaxed);
            table.at.insert(pfn.0, (tag, order));
            tag += 1;
        } else {
            short.push(pfn);
        }
    }
    for (i, pfn) in short.into_iter().enumerate() {
        a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 2)))
            .unwrap();
    }
    table
}

fn free_table<B: MemmapBacking>(a: &Over<'_, B>, table: &Table) {
    for &pfn in table.at.keys() {
        a.free(Pfn(pfn)).unwrap();
    }
}

#[test]
fn compaction_empties_sparse_movable_chunks_and_they_go_back() {
    let layout = common::simple(128 * MIB, 32 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let table = Mutex::new(sparse(a, 24_000, 30, 7));
        let before: u64 = table.lock().unwrap().at.len() as u64;
        a.drain(None).unwrap();
        let back = |a: &Alloc<'_>| (0..2).map(|_| a.give_back().chunks_given_back).sum::<u64>();
        let without = back(a);
        let mut hook = Hook::new(a, &table, 0);
        let stats = a.compact(&mut hook);
        assert!(
            stats.chunks_emptied > 0 && stats.blocks_moved == hook.moved,
            "{stats:?}"
        );
        assert_eq!(stats.blocks_refused, 0);
        let with = back(a);
        assert!(with >= stats.chunks_emptied, "{with} given back, {stats:?}");
        assert!(with > without);
        let table = table.into_inner().unwrap();
        assert_eq!(table.at.len() as u64, before);
        check_table(a, &table);
        assert_eq!(a.miscounted_chunks(), 0);
        assert_eq!(a.unmerged_free_blocks(), 0);
        free_table(a, &table);
        a.drain(None).unwrap();
        assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
    });
}

/// Memmap goes back a whole section at a time: with few pages live and spread
/// over every section, compaction moves them into the section an unmovable
/// block keeps anyway (not to the top of the zone), and every other section's
/// memmap goes back.
#[test]
fn compaction_empties_whole_sections_when_few_pages_live() {
    let layout = common::simple(256 * MIB, 32 * MIB);
    let per_section = layout.memmap_bytes() / layout.section_count() as u64;
    let section_pages = 32 * MIB / 4096;
    // A backing that releases each section's memmap once its chunks are given
    // back.
    let double = Double::new().granularity(Granularity::Section).releasing();
    with_double(&layout, config(), double, |a| {
        // Unmovable: its chunk, and so its section's memmap, stays.
        let pinned = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        let table = Mutex::new(sparse(a, 50_000, 40, 5));
        a.drain(None).unwrap();
        let peak = a.stats().memmap_bytes;
        assert!(peak >= 6 * per_section, "{peak}");
        let mut hook = Hook::new(a, &table, 0);
        let stats = a.compact(&mut hook);
        assert_eq!(stats.blocks_refused, 0, "{stats:?}");
        a.give_back();
        a.give_back();
        let kept = a.stats().memmap_bytes;
        let table = table.into_inner().unwrap();
        let live: u64 = table.at.values().map(|&(_, o)| 1u64 << o).sum();
        let pinned_section = pinned.0 / section_pages;
        let sections: std::collections::BTreeSet<u64> =
            table.at.keys().map(|pfn| pfn / section_pages).collect();
        assert_eq!(
            kept, per_section,
            "{live} pages live, in sections {sections:?} (the unmovable block's: {pinned_section}), {stats:?}"
        );
        assert!(
            sections.iter().all(|&s| s == pinned_section),
            "{sections:?}"
        );
        check_table(a, &table);
        assert_eq!(a.miscounted_chunks(), 0);
        assert_eq!(a.unmerged_free_blocks(), 0);
        free_table(a, &table);
        a.free(pinned).unwrap();
        a.drain(None).unwrap();
        assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
    });
}

/// A bounded pass takes no new chunk once it moved its budget (it finishes the
/// chunk it is emptying); bounded passes called again and again do the whole
/// work, as an idle loop spreads it.
#[test]
fn bounded_passes_add_up_to_a_whole_pass() {
    let layout = common::simple(128 * MIB, 32 * MIB);
    let max_used = config().compact_max_used / 4096;
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let table = Mutex::new(sparse(a, 24_000, 30, 7));
        a.drain(None).unwrap();
        let mut hook = Hook::new(a, &table, 0);
        let (mut passes, mut emptied) = (0, 0);
        loop {
            let stats = a.compact_up_to(&mut hook, 64);
            assert!(stats.pages_moved < 64 + max_used, "{stats:?}");
            emptied += stats.chunks_emptied;
            if stats.pages_moved == 0 {
                break;
            }
            passes += 1;
            assert!(passes < 1000, "bounded passes never finish");
        }
        assert!(
            passes > 1 && emptied > 0,
            "{passes} passes, {emptied} emptied"
        );
        assert_eq!(a.compact(&mut hook).pages_moved, 0);
        let table = table.into_inner().unwrap();
        check_table(a, &table);
        assert_eq!(a.miscounted_chunks(), 0);
        assert_eq!(a.unmerged_free_blocks(), 0);
        free_table(a, &table);
        a.drain(None).unwrap();
        assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
    });
}

#[test]
fn refusals_leave_their_chunk_and_put_everything_back() {
    let layout = common::simple(64 * MIB, 32 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let table = Mutex::new(sparse(a, 12_000, 20, 3));
        let mut hook = Hook::new(a, &table, 3);
        let stats = a.compact(&mut hook);
        assert!(stats.blocks_refused > 0, "{stats:?}");
        let table = table.into_inner().unwrap();
        check_table(a, &table);
        assert_eq!(a.miscounted_chunks(), 0);
        assert_eq!(a.unmerged_free_blocks(), 0);
        for z in a.zones() {
            assert_eq!(
                z.free + z.allocated() + z.uninitialised + z.reserved,
                z.present
            );
        }
        free_table(a, &table);
        a.drain(None).unwrap();
        assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
    });
}

/// Two threads allocate and free movable and unmovable blocks of their own
/// (tagged, never in the hook's table) while the main thread compacts over and
/// over: every block a thread holds keeps its place and tag (only the hook
/// moves, and it moves only the table's), and the table's blocks are where it
/// says.
#[test]
fn threads_allocate_while_compaction_runs() {
    let layout = common::simple(128 * MIB, 32 * MIB);
    with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
        let table = Mutex::new(sparse(a, 20_000, 25, 11));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let stop = &stop;
                s.spawn(move || {
                    let mut held: Vec<(Pfn, u32, u64)> = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 2000 {
                        i += 1;
                        if held.len() < 3000 && i % 3 != 0 {
                            let order = (i % 3) as u32;
                            let flags = if i % 5 == 0 {
                                AllocFlags::NONE
                            } else {
                                AllocFlags::MOVABLE
                            };
                            let req = AllocRequest::order(order).on(CpuId(t)).flags(flags);
                            let pfn = a.alloc(req).unwrap();
                            let tag = (u64::from(t) << 40) | i;
                            a.page(pfn)
                                .unwrap()
                                .user_word(0)
                                .unwrap()
                                .store(tag, std::sync::atomic::Ordering::Relaxed);
                            held.push((pfn, order, tag));
                        } else if let Some((pfn, order, tag)) = held.pop() {
                            assert_eq!(
                                a.page(pfn).unwrap().state(),
                                PageState::Allocated { order }
                            );
                            assert_eq!(tag_of(a, pfn.0), tag, "{pfn}: a thread's block changed");
                            a.free(FreeRequest::pfn(pfn).on(CpuId(t)).order(order))
                                .unwrap();
                        }
                    }
                    for (pfn, order, tag) in held {
                        assert_eq!(tag_of(a, pfn.0), tag, "{pfn}: a thread's block changed");
                        a.free(FreeRequest::pfn(pfn).on(CpuId(t)).order(order))
                            .unwrap();
                    }
                });
            }
            let mut hook = Hook::new(a, &table, 0);
            for _ in 0..50 {
                a.compact(&mut hook);
                a.give_back();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let table = table.into_inner().unwrap();
        check_table(a, &table);
        a.drain(None).unwrap();
        assert_eq!(a.miscounted_chunks(), 0);
        assert_eq!(a.unmerged_free_blocks(), 0);
        free_table(a, &table);
        a.drain(None).unwrap();
        assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Drawn workloads and drawn refusals: after compaction the table holds,
    /// the counts and words hold, and everything freed coalesces.
    #[test]
    fn drawn_migrations_keep_every_invariant(
        seed in 1u64..u64::MAX,
        keep_one_in in 2u64..60,
        refuse_every in 0u64..6,
        pages in 2_000u64..10_000,
    ) {
        let layout = common::simple(48 * MIB, 16 * MIB);
        with_allocator_chunked(&layout, config(), Granularity::Section, |a| {
            let table = Mutex::new(sparse(a, pages, keep_one_in, seed));
            let mut hook = Hook::new(a, &table, refuse_every);
            let stats = a.compact(&mut hook);
            assert_eq!(stats.blocks_moved, hook.moved);
            a.give_back();
            a.give_back();
            let table = table.into_inner().unwrap();
            check_table(a, &table);
            assert_eq!(a.miscounted_chunks(), 0);
            assert_eq!(a.unmerged_free_blocks(), 0);
            free_table(a, &table);
            a.drain(None).unwrap();
            assert_eq!(a.zones().map(|z| z.allocated()).sum::<u64>(), 0);
            assert_eq!(a.unmerged_free_blocks(), 0);
            assert_eq!(a.miscounted_chunks(), 0);
        });
    }
}
