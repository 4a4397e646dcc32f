//! The workloads, for any [`Frames`]: batch, producer/consumer pairs, huge
//! frames and a random mix of orders; the threads, their barriers and their
//! timing. It owns how a figure is measured; it neither chooses allocators nor
//! prints (`main` and `table` do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use crate::frames::Frames;
use crate::harness::{backoff, pin, thread_cpu, Queue, Run, Sample, BATCH};

/// Order-9 (2 MiB) frames each thread allocates before it frees them, in the
/// huge-frame workload.
pub(crate) const HUGE_BATCH: usize = 16;

/// The workloads, for any allocator: ops across all threads.
pub(crate) trait Workloads: Sync {
    fn batch(&self, run: &Run, threads: usize) -> Sample;
    fn pairs(&self, run: &Run, threads: usize) -> Sample;
    /// Each thread allocates [`HUGE_BATCH`] order-9 frames, then frees them, on
    /// its own CPU.
    fn huge(&self, run: &Run, threads: usize) -> Sample;
    /// Each thread allocates 32 blocks of random orders 0 to 3, then frees each
    /// on a random CPU of the run (its own or another thread's).
    fn mix(&self, run: &Run, threads: usize) -> Sample;
    /// Each thread allocates 32 blocks of random orders 0 to 3 and hands each
    /// to a random thread of the run (itself included), which frees it on its
    /// own CPU: frees on another CPU than the allocation's, as a kernel makes
    /// them, in batches of 32 per destination.
    fn scatter(&self, run: &Run, threads: usize) -> Sample;
    fn check(&self) -> Result<(), String>;
}

/// A small per-thread generator (xorshift64*): the mix's orders and CPUs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Every thread allocates `n` blocks (of the orders `order` draws) on its own
/// CPU, then frees them (each on the CPU `free_on` draws), and repeats.
fn own_cpu<F: Frames>(
    frames: &F,
    run: &Run,
    threads: usize,
    n: usize,
    order: impl Fn(&mut Rng) -> u32 + Sync,
    free_on: impl Fn(usize, &mut Rng) -> usize + Sync,
) -> Sample {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|cpu| {
                let (stop, start, order, free_on) = (&stop, &start, &order, &free_on);
                s.spawn(move || {
                    pin(cpu, run.pin);
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (cpu as u64 + 1) << 17);
                    let mut held = [(0u64, 0u32); BATCH];
                    let held = &mut held[..n.min(BATCH)];
                    let mut ops = 0u64;
                    start.wait();
                    let cpu0 = thread_cpu();
                    while !stop.load(Ordering::Relaxed) {
                        for f in held.iter_mut() {
                            let o = order(&mut rng);
                            *f = (frames.alloc_order(cpu, o), o);
                        }
                        for &(f, o) in held.iter() {
                            frames.free_order(free_on(cpu, &mut rng), f, o);
                        }
                        ops += held.len() as u64;
                    }
                    (ops, thread_cpu() - cpu0)
                })
            })
            .collect();
        timed(run, &start, &stop, workers)
    })
}

/// Batches of 32 in flight from one thread to another in the scatter workload.
const SCATTER_DEPTH: usize = 4;

/// A block and its order in one word, for the scatter workload's queues.
fn pack(frame: u64, order: u32) -> u64 {
    debug_assert!(frame >> 62 == 0 && order < 4);
    frame << 2 | u64::from(order)
}

fn unpack(packed: u64) -> (u64, u32) {
    (packed >> 2, (packed & 3) as u32)
}

/// Frees every batch waiting for thread `me` from the others, on `me`'s CPU;
/// returns the blocks freed.
fn free_incoming<F: Frames>(frames: &F, queues: &[Vec<Queue>], me: usize) -> u64 {
    let mut batch = [0u64; BATCH];
    let mut freed = 0;
    for from in queues {
        while from[me].pop(&mut batch) {
            for &p in &batch {
                let (f, o) = unpack(p);
                frames.free_order(me, f, o);
            }
            freed += BATCH as u64;
        }
    }
    freed
}

/// Starts the `workers` waiting on `start`, lets them run for the run's time,
/// stops them and sums what they did: operations and CPU seconds, over the
/// wall time from the start to the stop.
fn timed(
    run: &Run,
    start: &Barrier,
    stop: &AtomicBool,
    workers: Vec<std::thread::ScopedJoinHandle<'_, (u64, f64)>>,
) -> Sample {
    start.wait();
    let t = Instant::now();
    std::thread::sleep(run.time);
    stop.store(true, Ordering::Relaxed);
    let done: Vec<(u64, f64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let wall = t.elapsed();
    let ops = done.iter().map(|d| d.0).sum();
    let cpu = done.iter().map(|d| d.1).sum();
    Sample::new(ops, wall, cpu)
}

impl<F: Frames> Workloads for F {
    fn batch(&self, run: &Run, threads: usize) -> Sample {
        own_cpu(self, run, threads, BATCH, |_| 0, |cpu, _| cpu)
    }

    fn huge(&self, run: &Run, threads: usize) -> Sample {
        own_cpu(self, run, threads, HUGE_BATCH, |_| 9, |cpu, _| cpu)
    }

    fn mix(&self, run: &Run, threads: usize) -> Sample {
        own_cpu(
            self,
            run,
            threads,
            BATCH,
            |rng| (rng.next() >> 62) as u32,
            |_, rng| (rng.next() >> 33) as usize % threads,
        )
    }

    fn scatter(&self, run: &Run, threads: usize) -> Sample {
        let stop = AtomicBool::new(false);
        let start = Barrier::new(threads + 1);
        let stopped = Barrier::new(threads);
        // queues[from][to]: batches thread `from` hands to thread `to`.
        let queues: Vec<Vec<Queue>> = (0..threads)
            .map(|_| (0..threads).map(|_| Queue::new(SCATTER_DEPTH)).collect())
            .collect();
        let limit = run.spins(threads);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|me| {
                    let (stop, start, stopped, queues) = (&stop, &start, &stopped, &queues);
                    s.spawn(move || {
                        pin(me, run.pin);
                        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (me as u64 + 1) << 17);
                        let mut held = [(0u64, 0u32); BATCH];
                        let mut out = vec![([0u64; BATCH], 0usize); threads];
                        let mut ops = 0u64;
                        start.wait();
                        let cpu0 = thread_cpu();
                        while !stop.load(Ordering::Relaxed) {
                            for f in held.iter_mut() {
                                let o = (rng.next() >> 62) as u32;
                                *f = (self.alloc_order(me, o), o);
                            }
                            for &(f, o) in held.iter() {
                                let to = (rng.next() >> 33) as usize % threads;
                                if to == me {
                                    self.free_order(me, f, o);
                                    ops += 1;
                                    continue;
                                }
                                let (batch, n) = &mut out[to];
                                batch[*n] = pack(f, o);
                                *n += 1;
                                if *n < BATCH {
                                    continue;
                                }
                                let mut spins = 0;
                                loop {
                                    if queues[me][to].push(batch) {
                                        *n = 0;
                                        break;
                                    }
                                    if stop.load(Ordering::Relaxed) {
                                        // The receiver may have stopped
                                        // taking: free the batch here,
                                        // uncounted.
                                        for &p in batch.iter() {
                                            let (f, o) = unpack(p);
                                            self.free_order(me, f, o);
                                        }
                                        *n = 0;
                                        break;
                                    }
                                    // The receiver may be waiting on us: free
                                    // what came in meanwhile.
                                    ops += free_incoming(self, queues, me);
                                    backoff(&mut spins, limit);
                                }
                            }
                            ops += free_incoming(self, queues, me);
                        }
                        let cpu = thread_cpu() - cpu0;
                        // Uncounted: what is still held or in flight goes back.
                        for (batch, n) in &out {
                            for &p in &batch[..*n] {
                                let (f, o) = unpack(p);
                                self.free_order(me, f, o);
                            }
                        }
                        stopped.wait();
                        free_incoming(self, queues, me);
                        (ops, cpu)
                    })
                })
                .collect();
            timed(run, &start, &stop, workers)
        })
    }

    fn pairs(&self, run: &Run, threads: usize) -> Sample {
        assert!(
            threads.is_multiple_of(2),
            "producer/consumer runs need pairs"
        );
        let stop = AtomicBool::new(false);
        let start = Barrier::new(threads + 1);
        let queues: Vec<Queue> = (0..threads / 2).map(|_| Queue::new(run.queue)).collect();
        let limit = run.spins(threads);
        std::thread::scope(|s| {
            let mut workers = Vec::new();
            for (k, q) in queues.iter().enumerate() {
                let (stop, start) = (&stop, &start);
                let (producer, consumer) = (2 * k, 2 * k + 1);
                workers.push(s.spawn(move || {
                    pin(producer, run.pin);
                    let mut batch = [0u64; BATCH];
                    start.wait();
                    let cpu0 = thread_cpu();
                    while !stop.load(Ordering::Relaxed) {
                        for f in batch.iter_mut() {
                            *f = self.alloc(producer);
                        }
                        let mut spins = 0;
                        while !q.push(&batch) {
                            backoff(&mut spins, limit);
                        }
                    }
                    // Release: every push before it.
                    q.done.store(true, Ordering::Release);
                    (0, thread_cpu() - cpu0)
                }));
                workers.push(s.spawn(move || {
                    pin(consumer, run.pin);
                    let mut batch = [0u64; BATCH];
                    let mut ops = 0u64;
                    let mut spins = 0;
                    start.wait();
                    let cpu0 = thread_cpu();
                    loop {
                        if q.pop(&mut batch) {
                            spins = 0;
                        } else if q.done.load(Ordering::Acquire) {
                            // The producer pushed its last batch before `done`.
                            if !q.pop(&mut batch) {
                                break;
                            }
                        } else {
                            backoff(&mut spins, limit);
                            continue;
                        }
                        for &f in batch.iter() {
                            self.free(consumer, f);
                        }
                        ops += BATCH as u64;
                    }
                    (ops, thread_cpu() - cpu0)
                }));
            }
            timed(run, &start, &stop, workers)
        })
    }

    fn check(&self) -> Result<(), String> {
        Frames::check(self)
    }
}
