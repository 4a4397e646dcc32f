//! The `smp` workload on the simulator: one thread per simulated CPU, each
//! allocating and freeing through its own CPU's page cache and handing blocks to
//! the others, after which the counts must hold and the free lists be whole.
//!
//! It drives the allocator only through its public API; timing and reporting are
//! [`crate::sim`]'s.

use std::time::Instant;

use meminit::{AllocPath, AllocRequest, Allocator, CpuId, FreeRequest, NodeId, Pfn};
use meminit_boot::XorShift;

use crate::backing::HostBacking;

/// What the SMP workload saw, all CPUs together.
pub(crate) struct SmpSamples {
    pub(crate) fast: Vec<u64>,
    pub(crate) slow: Vec<u64>,
    pub(crate) failures: u64,
}

/// The `smp` workload: one thread per simulated CPU (at most 64), each allocating
/// and freeing `ops` times through its own CPU's cache, and handing some blocks to
/// the others to free. Everything is freed at the end and the caches drained, so
/// the counts must hold and the free lists be whole again.
pub(crate) fn smp_workload(
    allocator: &Allocator<'_, HostBacking, parking_lot::RawMutex>,
    cpus: u32,
    ops: u64,
    nodes: &[NodeId],
) -> std::io::Result<SmpSamples> {
    let threads = cpus.clamp(1, 64);
    let handoff: parking_lot::Mutex<Vec<(Pfn, u32)>> = parking_lot::Mutex::new(Vec::new());
    let results: Vec<std::io::Result<SmpSamples>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|cpu| {
                let handoff = &handoff;
                s.spawn(move || {
                    let me = CpuId(cpu);
                    let node = nodes[cpu as usize % nodes.len()];
                    let mut out = SmpSamples {
                        fast: Vec::new(),
                        slow: Vec::new(),
                        failures: 0,
                    };
                    let mut held: Vec<(Pfn, u32)> = Vec::new();
                    let mut rng = XorShift::stream(cpu as u64);
                    let free = |pfn: Pfn, order: u32| {
                        allocator
                            .free(FreeRequest::pfn(pfn).on(me).order(order))
                            .map_err(|e| std::io::Error::other(e.to_string()))
                    };
                    for _ in 0..ops {
                        let x = rng.next_u64();
                        match x % 8 {
                            0..=3 if held.len() < 256 => {
                                let order = (x >> 8) as u32 % 4;
                                let t = Instant::now();
                                let r = allocator
                                    .alloc_traced(AllocRequest::order(order).on(me).node(node));
                                let ns = t.elapsed().as_nanos() as u64;
                                match r {
                                    Ok((pfn, path)) => {
                                        if path == AllocPath::Grew {
                                            out.slow.push(ns);
                                        } else {
                                            out.fast.push(ns);
                                        }
                                        held.push((pfn, order));
                                    }
                                    Err(_) => out.failures += 1,
                                }
                            }
                            4 if !held.is_empty() => {
                                let block = held.swap_remove((x >> 24) as usize % held.len());
                                let mut q = handoff.lock();
                                if q.len() < 1024 {
                                    q.push(block);
                                } else {
                                    drop(q);
                                    free(block.0, block.1)?;
                                }
                            }
                            5 => {
                                let block = handoff.lock().pop();
                                if let Some((pfn, order)) = block {
                                    free(pfn, order)?;
                                }
                            }
                            _ if !held.is_empty() => {
                                let (pfn, order) =
                                    held.swap_remove((x >> 24) as usize % held.len());
                                free(pfn, order)?;
                            }
                            _ => {}
                        }
                    }
                    for (pfn, order) in held {
                        free(pfn, order)?;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an SMP workload thread panicked"))
            .collect()
    });
    for (pfn, order) in handoff.into_inner() {
        allocator
            .free(FreeRequest::pfn(pfn).order(order))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    allocator.drain(None).unwrap_or(0);
    let mut all = SmpSamples {
        fast: Vec::new(),
        slow: Vec::new(),
        failures: 0,
    };
    for r in results {
        let r = r?;
        all.fast.extend(r.fast);
        all.slow.extend(r.slow);
        all.failures += r.failures;
    }
    let unmerged = allocator.unmerged_free_blocks();
    if unmerged != 0 {
        return Err(std::io::Error::other(format!(
            "after the SMP workload, {unmerged} free blocks did not merge with their buddies"
        )));
    }
    Ok(all)
}
