//! What the workloads run on: the batch size, the bounded producer/consumer queue,
//! back-off, pinning threads to CPUs, a run's settings, CPU-time clocks and one
//! measurement ([`Sample`]). It knows no allocator and prints nothing.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Frames each thread allocates before it frees them (or passes them on).
pub(crate) const BATCH: usize = 32;
/// Batches in flight between a producer and its consumer, by default.
pub(crate) const QUEUE: usize = 64;

/// Keeps what it holds on its own pair of cache lines.
#[repr(align(128))]
pub(crate) struct Padded<T>(T);

/// A bounded single-producer, single-consumer queue of batches of frames.
pub(crate) struct Queue {
    pub(crate) slots: Box<[[AtomicU64; BATCH]]>,
    pub(crate) head: Padded<AtomicUsize>,
    pub(crate) tail: Padded<AtomicUsize>,
    /// Set by the producer after its last push.
    pub(crate) done: AtomicBool,
}

impl Queue {
    pub(crate) fn new(depth: usize) -> Self {
        Queue {
            slots: (0..depth)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            done: AtomicBool::new(false),
        }
    }

    pub(crate) fn push(&self, batch: &[u64; BATCH]) -> bool {
        let tail = self.tail.0.load(Ordering::Relaxed);
        // Acquire: the consumer has read the slot it released.
        if tail - self.head.0.load(Ordering::Acquire) == self.slots.len() {
            return false;
        }
        for (slot, &f) in self.slots[tail % self.slots.len()].iter().zip(batch) {
            slot.store(f, Ordering::Relaxed);
        }
        // Release: the slot's frames before the new tail.
        self.tail.0.store(tail + 1, Ordering::Release);
        true
    }

    pub(crate) fn pop(&self, batch: &mut [u64; BATCH]) -> bool {
        let head = self.head.0.load(Ordering::Relaxed);
        // Acquire: pairs with the producer's release of the tail.
        if self.tail.0.load(Ordering::Acquire) == head {
            return false;
        }
        for (f, slot) in batch.iter_mut().zip(&self.slots[head % self.slots.len()]) {
            *f = slot.load(Ordering::Relaxed);
        }
        self.head.0.store(head + 1, Ordering::Release);
        true
    }
}

/// Spins up to `limit` times, then yields. Unpinned threads may share a core with
/// the partner they wait for, so they yield soon; pinned ones, each on its own core,
/// spin longer (a yield on a shared machine may hand the core to another process
/// for a whole time slice).
pub(crate) fn backoff(spins: &mut u32, limit: u32) {
    if *spins < limit {
        spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins += 1;
}

/// Pins the calling thread to the `i`th CPU of the process's affinity mask (cyclic).
#[cfg(target_os = "linux")]
pub(crate) fn pin(i: usize, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[i % cpus.len()], &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pin(_: usize, _: &[usize]) {}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
pub(crate) fn affinity() -> Vec<usize> {
    // SAFETY: as in `pin`; the call writes the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn affinity() -> Vec<usize> {
    Vec::new()
}

/// How a run is made: its length, and the CPUs to pin threads to (none: unpinned).
pub(crate) struct Run<'c> {
    pub(crate) time: Duration,
    pub(crate) pin: &'c [usize],
    /// Batches a producer may have in flight to its consumer.
    pub(crate) queue: usize,
}

impl Run<'_> {
    /// Spins before a waiting thread yields, with `threads` running.
    pub(crate) fn spins(&self, threads: usize) -> u32 {
        if threads <= self.pin.len() {
            1 << 14
        } else {
            128
        }
    }
}

/// The CPU time the calling thread has had, in seconds.
pub(crate) fn thread_cpu() -> f64 {
    // SAFETY: a plain out-parameter for the call.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid timespec; the clock id is a constant the call knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// One measurement: ops per second of wall-clock time, and per second of CPU time
/// the threads got. The second does not depend on how many cores a shared machine
/// gave the run: if its N-thread figure equals its 1-thread one, the threads do not
/// slow each other down, and N free cores would give N times the throughput.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) mops: f64,
    pub(crate) per_cpu: f64,
}

impl Sample {
    pub(crate) fn new(ops: u64, wall: Duration, cpu: f64) -> Self {
        Sample {
            mops: ops as f64 / wall.as_secs_f64() / 1e6,
            per_cpu: ops as f64 / cpu / 1e6,
        }
    }
}
