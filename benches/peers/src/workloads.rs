//! The two workloads, batch and producer/consumer pairs, for any [`Frames`]: the
//! threads, their barriers and their timing. It owns how a figure is measured; it
//! neither chooses allocators nor prints (`main` and `table` do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use crate::frames::Frames;
use crate::harness::{backoff, pin, thread_cpu, Queue, Run, Sample, BATCH};

/// The two workloads, for any allocator: ops across all threads.
pub(crate) trait Workloads: Sync {
    fn batch(&self, run: &Run, threads: usize) -> Sample;
    fn pairs(&self, run: &Run, threads: usize) -> Sample;
    fn check(&self) -> Result<(), String>;
}

impl<F: Frames> Workloads for F {
    fn batch(&self, run: &Run, threads: usize) -> Sample {
        let stop = AtomicBool::new(false);
        let start = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|cpu| {
                    let (stop, start) = (&stop, &start);
                    s.spawn(move || {
                        pin(cpu, run.pin);
                        let mut held = [0u64; BATCH];
                        let mut ops = 0u64;
                        start.wait();
                        let cpu0 = thread_cpu();
                        while !stop.load(Ordering::Relaxed) {
                            for f in held.iter_mut() {
                                *f = self.alloc(cpu);
                            }
                            for &f in held.iter() {
                                self.free(cpu, f);
                            }
                            ops += BATCH as u64;
                        }
                        (ops, thread_cpu() - cpu0)
                    })
                })
                .collect();
            start.wait();
            let t = Instant::now();
            std::thread::sleep(run.time);
            stop.store(true, Ordering::Relaxed);
            let done: Vec<(u64, f64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            let wall = t.elapsed();
            let ops = done.iter().map(|d| d.0).sum();
            let cpu = done.iter().map(|d| d.1).sum();
            Sample::new(ops, wall, cpu)
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
            start.wait();
            let t = Instant::now();
            std::thread::sleep(run.time);
            stop.store(true, Ordering::Relaxed);
            let done: Vec<(u64, f64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            let wall = t.elapsed();
            let ops = done.iter().map(|d| d.0).sum();
            let cpu = done.iter().map(|d| d.1).sum();
            Sample::new(ops, wall, cpu)
        })
    }

    fn check(&self) -> Result<(), String> {
        Frames::check(self)
    }
}
