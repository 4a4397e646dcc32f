//! Many threads allocating and freeing random orders through their CPUs' caches
//! while deferred workers run and allocations grow zones, handing blocks to each
//! other to free on another CPU. The threads together never hold more than a known
//! part of memory, so every allocation must succeed: `OutOfMemory` is a failure.
//! Every page handed out is tracked in an ownership map: no page is ever handed out
//! twice, nothing is lost, and after all is freed and the caches drained every zone
//! coalesces back to whole max-order blocks. Allocations draw their mobility class
//! at random; at every quiescent point each chunk's word of use matches its
//! descriptors.

#![cfg(not(miri))]

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use common::*;
use meminit::NodeId;
use meminit::{
    AllocFlags, AllocRequest, Config, Constraint, CpuId, FreeReporter, FreeRequest, Granularity,
    LayoutBuilder, Pfn, RangeKind, ReportError, Strategy, MAX_ORDER, PAGEBLOCK_ORDER,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How much the threads may hold, and of which orders.
#[derive(Clone, Copy)]
struct Limits {
    /// Blocks one thread holds at most.
    held: usize,
    /// Blocks waiting in the hand-off queue at most.
    handoff: usize,
    /// Whether max-order and other large blocks are asked for, or only the cached
    /// orders.
    large: bool,
}

/// On `machine()`, with up to 8 threads and the hand-off queue, fewer than 128
/// blocks are held at once, so fewer than 128 of the ~300 max-order-aligned regions
/// can be broken up by held blocks: whatever is asked for, memory that could serve
/// it exists somewhere (on a free list, in a CPU's cache, or uninitialised), and
/// any `OutOfMemory` is a bug.
const ROOMY: Limits = Limits {
    held: 12,
    handoff: 16,
    large: true,
};

/// On `small_machine()`, the CPU caches can hold most of memory, and 4 threads
/// holding 4 blocks each (plus 4 handed off) break up at most 20 of its 31 whole
/// pageblocks: allocations of the pageblock order succeed only if the caches of
/// other CPUs are drained so that their blocks merge. (Not under the DMA
/// constraint: its zone has only 7 whole pageblocks, which 20 held blocks can all
/// break up, so there a pageblock-order failure would be no bug.)
const TIGHT: Limits = Limits {
    held: 4,
    handoff: 4,
    large: false,
};

/// One node of 64 MiB less a reserved range, in two 32 MiB sections.
fn small_machine() -> meminit::Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(32 * MIB)
        .add(MIB, 33 * MIB, RangeKind::Usable, NodeId(0))
        .add(33 * MIB, 33 * MIB + 0x3000, RangeKind::Reserved, NodeId(0))
        .add(33 * MIB + 0x3000, 64 * MIB, RangeKind::Usable, NodeId(0));
    b.build().unwrap()
}

/// Two nodes, holes, a reserved range, a node boundary inside a section, and
/// memory above 4 GiB so that all three zones exist.
fn machine() -> meminit::Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
        .add(MIB, 300 * MIB, RangeKind::Usable, NodeId(0))
        .add(300 * MIB, 302 * MIB, RangeKind::Reserved, NodeId(0))
        .add(302 * MIB, 510 * MIB + 0x5000, RangeKind::Usable, NodeId(0))
        .add(510 * MIB + 0x5000, GIB, RangeKind::Usable, NodeId(1))
        .add(4 * GIB, 4 * GIB + 256 * MIB, RangeKind::Usable, NodeId(1));
    b.build().unwrap()
}

fn stress(strategy: Strategy, allocators: usize, workers_per_node: usize, rounds: usize) {
    let _ = stress_on(
        machine(),
        ROOMY,
        Config::new(strategy),
        false,
        allocators,
        workers_per_node,
        rounds,
    );
}

/// An allocating thread still running: counted out when dropped, on a panic too.
struct Running<'r>(&'r std::sync::atomic::AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks that no page of a reported range is held by anyone.
struct Unowned<'o>(&'o [AtomicU8]);

impl FreeReporter for Unowned<'_> {
    fn report(&mut self, ranges: &[std::ops::Range<Pfn>]) -> Result<(), ReportError> {
        for r in ranges {
            for p in r.start.0..r.end.0 {
                assert_eq!(
                    self.0[p as usize].load(Ordering::Relaxed),
                    0,
                    "pfn {p:#x} reported while allocated"
                );
            }
        }
        Ok(())
    }
}

fn stress_on(
    layout: meminit::Layout,
    limits: Limits,
    config: Config,
    trim: bool,
    allocators: usize,
    workers_per_node: usize,
    rounds: usize,
) -> meminit::Stats {
    let strategy = config.strategy;
    let running = std::sync::atomic::AtomicUsize::new(allocators);
    let nodes = layout.node_count();
    let owned: Vec<AtomicU8> = (0..layout.end_pfn().0).map(|_| AtomicU8::new(0)).collect();
    // Blocks allocated on one thread and freed on another.
    let handoff: Mutex<Vec<(Pfn, u32)>> = Mutex::new(Vec::new());

    with_allocator_chunked(&layout, config, Granularity::Section, |a| {
        std::thread::scope(|s| {
            if trim {
                let (owned, running) = (&owned, &running);
                // Free page reporting and give-back, over and over, while the
                // allocators run: nothing held is ever reported or given back.
                s.spawn(move || {
                    while running.load(Ordering::Relaxed) > 0 {
                        a.report_free(&mut Unowned(owned)).unwrap();
                        a.give_back();
                    }
                });
            }
            for node in 0..nodes {
                for _ in 0..workers_per_node {
                    s.spawn(move || a.run_deferred_worker(NodeId(node as u32)));
                }
            }
            for t in 0..allocators {
                let (owned, handoff, running) = (&owned, &handoff, &running);
                s.spawn(move || {
                    // Counted out however the thread ends: a panic here must
                    // fail the test, not leave the trimming thread waiting.
                    let _running = Running(running);
                    let mut rng = Rng(0x9e3779b97f4a7c15 ^ ((t as u64 + 1) * 0x1234567));
                    let mut held: Vec<(Pfn, u32)> = Vec::new();
                    let own = CpuId((t % CPUS) as u32);
                    let release = |pfn: Pfn, order: u32| {
                        for p in pfn.0..pfn.0 + (1 << order) {
                            assert_eq!(owned[p as usize].swap(0, Ordering::Relaxed), 1);
                        }
                    };
                    for _ in 0..rounds {
                        let r = rng.next();
                        // Now and then a thread runs as another CPU, as a migrated
                        // task would: slower, never wrong.
                        let cpu = if r % 32 == 0 {
                            CpuId((r >> 40) as u32 % CPUS as u32)
                        } else {
                            own
                        };
                        let action = r % 8;
                        if held.len() < limits.held && action < 5 {
                            let constraint = match (r >> 16) % 8 {
                                0 => Constraint::Dma,
                                1 => Constraint::Dma32,
                                _ => Constraint::Any,
                            };
                            let order = match (r >> 8) % 16 {
                                // Not under DMA: its 7 whole pageblocks could
                                // all be broken up by the 20 blocks held, so a
                                // pageblock there may truly not exist.
                                1 if !limits.large && constraint != Constraint::Dma => {
                                    PAGEBLOCK_ORDER
                                }
                                _ if constraint == Constraint::Dma || !limits.large => {
                                    (r >> 24) as u32 % 4
                                }
                                0 => MAX_ORDER,
                                1 => PAGEBLOCK_ORDER,
                                2 => (r >> 24) as u32 % MAX_ORDER,
                                _ => (r >> 24) as u32 % 4,
                            };
                            let node = (r >> 20) as usize % nodes;
                            // Either class: a class out of its own memory
                            // steals rather than fail.
                            let flags = if (r >> 40) % 2 == 0 {
                                AllocFlags::MOVABLE
                            } else {
                                AllocFlags::NONE
                            };
                            let (pfn, _) = a
                                .alloc_traced(AllocRequest::order(order).on(cpu).within(constraint).node(NodeId(node as u32)).flags(flags))
                                .unwrap_or_else(|e| {
                                    panic!("order {order} {constraint:?} {flags:?} on node {node}: {e}")
                                });
                            for p in pfn.0..pfn.0 + (1 << order) {
                                let was = owned[p as usize].swap(1, Ordering::Relaxed);
                                assert_eq!(was, 0, "pfn {p:#x} handed out twice");
                            }
                            held.push((pfn, order));
                        } else if action == 5 && !held.is_empty() {
                            // Hand a block to whichever thread takes it next.
                            let mut q = handoff.lock().unwrap();
                            if q.len() < limits.handoff {
                                q.push(held.swap_remove(r as usize % held.len()));
                            }
                        } else if action == 7 && r % 64 == 7 {
                            // The lists are consistent under each zone's lock at
                            // any moment, whatever the other threads are doing.
                            assert_eq!(a.unmerged_free_blocks(), 0);
                        } else if action == 6 {
                            let taken = handoff.lock().unwrap().pop();
                            if let Some((pfn, order)) = taken {
                                release(pfn, order);
                                a.free(FreeRequest::pfn(pfn).on(cpu).order(order)).unwrap();
                            }
                        } else if !held.is_empty() {
                            let (pfn, order) = held.swap_remove(r as usize % held.len());
                            release(pfn, order);
                            a.free(FreeRequest::pfn(pfn).on(cpu).order(order)).unwrap();
                        }
                    }
                    for (pfn, order) in held {
                        release(pfn, order);
                        a.free(FreeRequest::pfn(pfn).on(own).order(order)).unwrap();
                    }
                });
            }
        });
        for (pfn, order) in handoff.lock().unwrap().drain(..) {
            a.free(FreeRequest::pfn(pfn).order(order)).unwrap();
        }
        // Quiescent: everything freed; the caches' pages count as free.
        check_counts(a, &Default::default());
        a.drain(None).unwrap_or(0);
        check_counts(a, &Default::default());
        // On demand, or given back after the workers were done: initialise the
        // rest through look-ups.
        if strategy == Strategy::OnDemand || trim {
            init_all(a);
        }
        check_fully_coalesced(a);
        let s = a.stats();
        // A chunk given back is counted again when it is initialised anew.
        assert_eq!(
            s.by_boot + s.by_workers + s.by_growth + s.by_lookup,
            s.chunks_present + s.given_back
        );
        s
    })
}

/// Reporting and give-back (with no reserve, so chunks go back as soon as they
/// stayed free for two passes) racing allocations that grow the same zones.
#[test]
fn give_back_and_reporting_race_allocations() {
    for strategy in [Strategy::OnDemand, Strategy::Deferred] {
        let mut config = Config::new(strategy);
        config.give_back = true;
        config.give_back_reserve = 0;
        for _ in 0..3 {
            let s = stress_on(machine(), ROOMY, config, true, 4, 1, 20_000);
            assert!(s.given_back > 0, "the race was run: {s:?}");
        }
    }
    // Tight memory: allocations must wait for blocks away being reported.
    let mut config = Config::new(Strategy::OnDemand);
    config.give_back_reserve = 0;
    for _ in 0..3 {
        let _ = stress_on(small_machine(), TIGHT, config, true, 4, 0, 20_000);
    }
}

#[test]
fn deferred_workers_race_growing_allocations() {
    for _ in 0..5 {
        stress(Strategy::Deferred, 4, 2, 20_000);
    }
}

#[test]
fn ondemand_growth_from_many_threads() {
    for _ in 0..5 {
        stress(Strategy::OnDemand, 6, 0, 20_000);
    }
}

#[test]
fn eager_many_threads() {
    stress(Strategy::Eager, 4, 0, 20_000);
}

#[test]
fn tight_memory_needs_other_cpus_caches_drained() {
    for strategy in Strategy::ALL {
        for _ in 0..3 {
            stress_on(
                small_machine(),
                TIGHT,
                Config::new(strategy),
                false,
                4,
                1,
                20_000,
            );
        }
    }
}
