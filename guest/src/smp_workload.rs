//! The `smp` workload: every vCPU allocates and frees at once through its own page
//! cache, and hands some blocks to the others to free.
//!
//! Each allocated block's first word is stamped with its owner and a sequence
//! number and checked when it is freed, so a block handed out to two CPUs at once
//! is caught (as a stamp that changed under its owner). At the end the boot CPU
//! frees what is left in the hand-off ring, drains every cache, and checks that the
//! counts hold and that no two free buddies were left unmerged.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use meminit::{AllocRequest, CpuId, FreeRequest, NodeId, Pfn};
use meminit_boot::XorShift;

use crate::GuestAllocator;

/// Operations per CPU; set by the boot CPU before it starts the job.
pub static OPS: AtomicU64 = AtomicU64::new(0);
/// Allocations that failed, frees that were refused, stamps found changed.
pub static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Allocations that succeeded, all CPUs together.
pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Blocks freed on another CPU than the one that allocated them.
pub static HANDED: AtomicU64 = AtomicU64::new(0);

/// Blocks waiting in the hand-off ring at most.
const RING: usize = 256;
/// Blocks one CPU holds at most.
const HELD: usize = 64;

/// A block held by the workload: its pfn, order and stamp.
type Held = (Pfn, u32, u64);

/// Blocks handed from one CPU to whichever frees them, and how many there are.
static HANDOFF: spin::Mutex<([Held; RING], usize)> = spin::Mutex::new(([(Pfn(0), 0, 0); RING], 0));

fn stamp(cpu: usize, seq: u64) -> u64 {
    (cpu as u64) << 48 | seq
}

fn write_stamp(pfn: Pfn, value: u64) {
    // SAFETY: the block was just handed to this CPU and RAM is identity-mapped.
    unsafe { (pfn.addr() as *mut u64).write_volatile(value) };
}

fn read_stamp(pfn: Pfn) -> u64 {
    // SAFETY: the block is held by this workload until freed below; RAM is
    // identity-mapped.
    unsafe { (pfn.addr() as *const u64).read_volatile() }
}

/// Frees `pfn` on `cpu` after checking its stamp.
fn free(a: &GuestAllocator, cpu: usize, (pfn, order, stamped): Held) {
    if read_stamp(pfn) != stamped
        || a.free(FreeRequest::pfn(pfn).on(CpuId(cpu as u32)).order(order))
            .is_err()
    {
        // Relaxed: a counter, read after every CPU has finished.
        FAILURES.fetch_add(1, Relaxed);
    }
}

/// CPU `cpu`'s share, allocating on `node`.
pub fn run_on(a: &GuestAllocator, cpu: usize, node: usize) {
    let mut held: [Held; HELD] = [(Pfn(0), 0, 0); HELD];
    let mut count = 0;
    let mut rng = XorShift::stream(cpu as u64);
    // Relaxed: published by the job's Release generation increment.
    let ops = OPS.load(Relaxed);
    for seq in 0..ops {
        let x = rng.next_u64();
        match x % 8 {
            0..=3 if count < HELD => {
                let order = (x >> 8) as u32 % 4;
                match a.alloc(
                    AllocRequest::order(order)
                        .on(CpuId(cpu as u32))
                        .node(NodeId(node as u32)),
                ) {
                    Ok(pfn) => {
                        let s = stamp(cpu, seq);
                        write_stamp(pfn, s);
                        held[count] = (pfn, order, s);
                        count += 1;
                        // Relaxed: counters, read once every CPU has finished.
                        ALLOCATIONS.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        FAILURES.fetch_add(1, Relaxed);
                    }
                }
            }
            4 if count > 0 => {
                let i = (x >> 24) as usize % count;
                let block = held[i];
                let mut ring = HANDOFF.lock();
                if ring.1 < RING {
                    let n = ring.1;
                    ring.0[n] = block;
                    ring.1 += 1;
                    held[i] = held[count - 1];
                    count -= 1;
                }
            }
            5 => {
                let mut ring = HANDOFF.lock();
                let taken = (ring.1 > 0).then(|| {
                    ring.1 -= 1;
                    ring.0[ring.1]
                });
                drop(ring);
                if let Some(block) = taken {
                    HANDED.fetch_add(1, Relaxed);
                    free(a, cpu, block);
                }
            }
            _ if count > 0 => {
                let i = (x >> 24) as usize % count;
                let block = held[i];
                held[i] = held[count - 1];
                count -= 1;
                free(a, cpu, block);
            }
            _ => {}
        }
    }
    for &block in &held[..count] {
        free(a, cpu, block);
    }
}

/// After every CPU finished: frees what waits in the ring, drains every cache, and
/// returns the number of free blocks left unmerged with their buddies (zero when
/// all is well).
pub fn finish(a: &GuestAllocator) -> u64 {
    let mut ring = HANDOFF.lock();
    let n = ring.1;
    for i in 0..n {
        free(a, 0, ring.0[i]);
    }
    ring.1 = 0;
    drop(ring);
    a.drain(None).unwrap_or(0);
    a.unmerged_free_blocks()
}
