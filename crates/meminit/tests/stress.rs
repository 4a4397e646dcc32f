//! Many threads allocating and freeing random orders while deferred workers run and
//! allocations grow zones. Every page handed out is tracked in an ownership map: no
//! page is ever handed out twice, nothing is lost, and after all is freed every zone
//! coalesces back to whole max-order blocks.

#![cfg(not(miri))]

mod common;

use std::sync::atomic::{AtomicU8, Ordering};

use common::*;
use meminit::{AllocError, Constraint, LayoutBuilder, Pfn, RangeKind, Strategy, MAX_ORDER};

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

fn stress(strategy: Strategy, allocators: usize, workers_per_node: usize, rounds: usize) {
    // Two nodes, holes, a reserved range, a node boundary inside a section, and
    // memory above 4 GiB so that all three zones exist.
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x1000, 0x9f000, RangeKind::Usable, 0)
        .add(MIB, 300 * MIB, RangeKind::Usable, 0)
        .add(300 * MIB, 302 * MIB, RangeKind::Reserved, 0)
        .add(302 * MIB, 510 * MIB + 0x5000, RangeKind::Usable, 0)
        .add(510 * MIB + 0x5000, GIB, RangeKind::Usable, 1)
        .add(4 * GIB, 4 * GIB + 256 * MIB, RangeKind::Usable, 1);
    let layout = b.build().unwrap();
    let owned: Vec<AtomicU8> = (0..layout.end_pfn()).map(|_| AtomicU8::new(0)).collect();

    with_allocator(&layout, strategy, |a| {
        std::thread::scope(|s| {
            for node in [0usize, 1] {
                for _ in 0..workers_per_node {
                    s.spawn(move || a.run_deferred_worker(node).unwrap());
                }
            }
            for t in 0..allocators {
                let owned = &owned;
                s.spawn(move || {
                    let mut rng = Rng(0x9e3779b97f4a7c15 ^ ((t as u64 + 1) * 0x1234567));
                    let mut held: Vec<(Pfn, u32)> = Vec::new();
                    for _ in 0..rounds {
                        let r = rng.next();
                        if held.len() < 64 && r % 3 != 0 {
                            let order = match r % 16 {
                                0 => MAX_ORDER,
                                1..=3 => (r >> 8) as u32 % MAX_ORDER,
                                _ => (r >> 8) as u32 % 3,
                            };
                            let constraint = match (r >> 16) % 8 {
                                0 => Constraint::Dma,
                                1 => Constraint::Dma32,
                                _ => Constraint::Any,
                            };
                            match a.alloc(order, constraint, (r >> 20) as usize % 2) {
                                Ok(pfn) => {
                                    for p in pfn.0..pfn.0 + (1 << order) {
                                        let was = owned[p as usize].swap(1, Ordering::Relaxed);
                                        assert_eq!(was, 0, "pfn {p:#x} handed out twice");
                                    }
                                    held.push((pfn, order));
                                }
                                Err(AllocError::OutOfMemory { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        } else if !held.is_empty() {
                            let (pfn, order) = held.swap_remove(r as usize % held.len());
                            for p in pfn.0..pfn.0 + (1 << order) {
                                owned[p as usize].store(0, Ordering::Relaxed);
                            }
                            a.free(pfn, order).unwrap();
                        }
                    }
                    for (pfn, order) in held {
                        for p in pfn.0..pfn.0 + (1 << order) {
                            owned[p as usize].store(0, Ordering::Relaxed);
                        }
                        a.free(pfn, order).unwrap();
                    }
                });
            }
        });
        // Quiescent: everything freed.
        check_counts(a, &Default::default());
        if strategy == Strategy::OnDemand {
            for i in 0..layout.section_count() {
                let _ = a.page_or_init(Pfn(layout.section_pfns(i).0));
            }
        }
        check_fully_coalesced(a);
        let s = a.init_stats();
        assert_eq!(
            s.by_boot + s.by_workers + s.by_growth + s.by_lookup,
            s.sections_present
        );
    });
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
