//! meminit beside its peers, on the same number of frames, in one run: order-0
//! allocation throughput at 1, 2, ... threads.
//!
//! Two workloads, each at every thread count, several rounds, the allocators
//! interleaved within a round so that noise from the (shared) machine hits them alike:
//!
//! - **batch**: every thread allocates 32 order-0 frames, then frees them, and
//!   repeats, on its own CPU (meminit's `CpuId`, LLFree's core index).
//! - **producer/consumer**: threads in pairs; thread 2k allocates batches of 32 and
//!   passes them over a bounded queue (64 batches by default) to thread 2k+1, which frees them on
//!   its own CPU. Frees on another CPU than the allocation's are what per-CPU caches
//!   find hardest.
//!
//! One *op* is one frame allocated and freed again (an alloc + free pair); figures are
//! the total across all threads, in millions per second. The allocators:
//!
//! - `meminit-spin`: meminit with a `spin::mutex::SpinMutex` as its lock type, through
//!   the per-CPU caches (`alloc_on` / `free_on`), eager start;
//! - `meminit-pl`: the same with `parking_lot::RawMutex`;
//! - `meminit-zone`: `meminit-spin` without caches (no `CpuCache` lent, `alloc` /
//!   `free`): every call takes the zone lock, as before the caches; shown to say where
//!   the time goes;
//! - `llfree`: LLFree (Wrenger et al., USENIX ATC 2023), one local reservation per
//!   thread;
//! - `buddy`: `buddy_system_allocator::LockedFrameAllocator` (one spin lock).
//!
//! Run `meminit-peers --help` for the options. Build it standalone with
//! `cargo build --release` here; the binary needs nothing else, so it can be copied to
//! a machine with more cores.

use std::fmt::Write as _;
use std::hint::spin_loop;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use llfree::{Alloc, Class, Classing, FrameId, Init, LLFree, MetaData, Request};
use lock_api::RawMutex;
use meminit::{
    Allocator, Config, Constraint, CpuCache, CpuId, LayoutBuilder, NodeId, Page, RangeKind,
    SectionSlot, SliceBacking, Strategy,
};

/// Frames each thread allocates before it frees them (or passes them on).
const BATCH: usize = 32;
/// Batches in flight between a producer and its consumer, by default.
const QUEUE: usize = 64;

/// Order-0 frames, shared by threads; `cpu` is the calling thread's CPU index.
trait Frames: Sync {
    fn alloc(&self, cpu: usize) -> u64;
    fn free(&self, cpu: usize, frame: u64);
    /// After a run, with every frame freed: whether all frames are free again.
    fn check(&self) -> Result<(), String>;
}

/// meminit over a heap memmap; `CACHED` picks `alloc_on`/`free_on` or `alloc`/`free`.
struct Meminit<R: RawMutex + 'static, const CACHED: bool> {
    a: Allocator<'static, SliceBacking<'static>, R>,
    usable: u64,
}

impl<R: RawMutex + 'static, const CACHED: bool> Meminit<R, CACHED> {
    fn new(frames: u64, cpus: usize) -> Self {
        let mut map = LayoutBuilder::new();
        map.add(0, frames * 4096, RangeKind::Usable, NodeId(0));
        let layout = map.build().expect("layout");
        // Leaked: they live as long as the benchmark.
        let memmap: &'static mut [MaybeUninit<Page>] =
            Box::leak(Box::new_uninit_slice(layout.memmap_descriptors() as usize));
        let slots: &'static [SectionSlot] = Box::leak(
            (0..layout.section_count())
                .map(|_| SectionSlot::new())
                .collect(),
        );
        let caches: &'static [CpuCache<R>] = if CACHED {
            Box::leak((0..cpus).map(|_| CpuCache::new()).collect())
        } else {
            &[]
        };
        let a = Allocator::new(
            layout,
            SliceBacking::new(memmap),
            slots,
            caches,
            Config::new(Strategy::Eager),
        )
        .expect("start meminit");
        let usable = a.zone_stats().map(|z| z.managed).sum();
        Meminit { a, usable }
    }
}

impl<R: RawMutex + Sync + 'static, const CACHED: bool> Frames for Meminit<R, CACHED>
where
    Allocator<'static, SliceBacking<'static>, R>: Sync,
{
    #[inline]
    fn alloc(&self, cpu: usize) -> u64 {
        let r = if CACHED {
            self.a
                .alloc_on(CpuId(cpu as u32), 0, Constraint::Any, NodeId(0))
        } else {
            self.a.alloc(0, Constraint::Any, NodeId(0))
        };
        r.expect("meminit alloc").0
    }

    #[inline]
    fn free(&self, cpu: usize, frame: u64) {
        let r = if CACHED {
            self.a
                .free_order_on(CpuId(cpu as u32), meminit::Pfn(frame), 0)
        } else {
            self.a.free_order(meminit::Pfn(frame), 0)
        };
        r.expect("meminit free");
    }

    fn check(&self) -> Result<(), String> {
        self.a.drain_all_cpus();
        let free: u64 = self.a.zone_stats().map(|z| z.free).sum();
        (free == self.usable)
            .then_some(())
            .ok_or_else(|| format!("{free} pages free of {}", self.usable))
    }
}

/// LLFree with one local reservation per thread.
struct Llfree {
    ll: LLFree<'static>,
    frames: usize,
}

impl Llfree {
    fn new(frames: usize, cores: usize) -> Self {
        let (classing, _) = Classing::simple(cores);
        let meta = MetaData::alloc(&LLFree::metadata_size(&classing, frames));
        let ll = LLFree::new(frames, Init::FreeAll, &classing, meta).expect("start LLFree");
        Llfree { ll, frames }
    }

    /// What `Classing::simple`'s request function makes for order 0 on `cpu` (small
    /// frames are class 0), built inline rather than through its closure.
    #[inline]
    fn request(cpu: usize) -> Request {
        Request::new(0, Class(0), Some(cpu))
    }
}

impl Frames for Llfree {
    #[inline]
    fn alloc(&self, cpu: usize) -> u64 {
        let (frame, _) = self.ll.get(None, Self::request(cpu)).expect("LLFree get");
        frame.0 as u64
    }

    #[inline]
    fn free(&self, cpu: usize, frame: u64) {
        self.ll
            .put(FrameId(frame as usize), Self::request(cpu))
            .expect("LLFree put");
    }

    fn check(&self) -> Result<(), String> {
        let free = self.ll.stats().free_frames;
        (free == self.frames)
            .then_some(())
            .ok_or_else(|| format!("{free} frames free of {}", self.frames))
    }
}

/// buddy_system_allocator's locked frame allocator.
struct Buddy {
    b: buddy_system_allocator::LockedFrameAllocator<32>,
}

impl Buddy {
    fn new(frames: usize) -> Self {
        let b = buddy_system_allocator::LockedFrameAllocator::<32>::new();
        b.lock().add_frame(0, frames);
        Buddy { b }
    }
}

impl Frames for Buddy {
    #[inline]
    fn alloc(&self, _cpu: usize) -> u64 {
        self.b.lock().alloc(1).expect("buddy alloc") as u64
    }

    #[inline]
    fn free(&self, _cpu: usize, frame: u64) {
        self.b.lock().dealloc(frame as usize, 1);
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// No allocator at all: frames out of thin air. Measures the harness (the loop, the
/// queue between pairs) and how much parallelism the machine gives right now: on a
/// shared machine, 2 threads may not get 2 cores.
struct Nothing;

impl Frames for Nothing {
    #[inline]
    fn alloc(&self, cpu: usize) -> u64 {
        std::hint::black_box(cpu as u64)
    }

    #[inline]
    fn free(&self, _cpu: usize, frame: u64) {
        std::hint::black_box(frame);
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Keeps what it holds on its own pair of cache lines.
#[repr(align(128))]
struct Padded<T>(T);

/// A bounded single-producer, single-consumer queue of batches of frames.
struct Queue {
    slots: Box<[[AtomicU64; BATCH]]>,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    /// Set by the producer after its last push.
    done: AtomicBool,
}

impl Queue {
    fn new(depth: usize) -> Self {
        Queue {
            slots: (0..depth)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            done: AtomicBool::new(false),
        }
    }

    fn push(&self, batch: &[u64; BATCH]) -> bool {
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

    fn pop(&self, batch: &mut [u64; BATCH]) -> bool {
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
fn backoff(spins: &mut u32, limit: u32) {
    if *spins < limit {
        spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins += 1;
}

/// Pins the calling thread to the `i`th CPU of the process's affinity mask (cyclic).
#[cfg(target_os = "linux")]
fn pin(i: usize, cpus: &[usize]) {
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
fn pin(_: usize, _: &[usize]) {}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
fn affinity() -> Vec<usize> {
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
fn affinity() -> Vec<usize> {
    Vec::new()
}

/// How a run is made: its length, and the CPUs to pin threads to (none: unpinned).
struct Run<'c> {
    time: Duration,
    pin: &'c [usize],
    /// Batches a producer may have in flight to its consumer.
    queue: usize,
}

impl Run<'_> {
    /// Spins before a waiting thread yields, with `threads` running.
    fn spins(&self, threads: usize) -> u32 {
        if threads <= self.pin.len() {
            1 << 14
        } else {
            128
        }
    }
}

/// The CPU time the calling thread has had, in seconds.
fn thread_cpu() -> f64 {
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
struct Sample {
    mops: f64,
    per_cpu: f64,
}

impl Sample {
    fn new(ops: u64, wall: Duration, cpu: f64) -> Self {
        Sample {
            mops: ops as f64 / wall.as_secs_f64() / 1e6,
            per_cpu: ops as f64 / cpu / 1e6,
        }
    }
}

/// The two workloads, for any allocator: ops across all threads.
trait Workloads: Sync {
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

struct Options {
    threads: usize,
    rounds: usize,
    time: Duration,
    frames: u64,
    pin: bool,
    queue: usize,
    json: Option<String>,
    only: Option<Vec<String>>,
    workloads: Vec<String>,
}

const USAGE: &str = "\
meminit-peers: order-0 allocate + free throughput of meminit, LLFree and
buddy_system_allocator on the same frames, at 1..N threads, rounds interleaved.

options:
  --threads N     the most threads (default: this machine's cores; more is allowed)
  --rounds N      rounds per point; min/median/max over them (default 5)
  --ms N          milliseconds per measurement (default 200)
  --frames N      frames each allocator manages, a multiple of 16384 (default 2^20: 4 GiB)
  --queue N       batches of 32 in flight from a producer to its consumer (default 64)
  --pin           pin thread i to the i-th CPU of the affinity mask (default: unpinned)
  --only A,B      only these allocators: meminit-spin, meminit-pl, meminit-zone, llfree,
                  buddy, none (no allocator: the harness alone, and the machine's parallelism)
  --workload W    batch, pairs or both (default both)
  --json FILE     also write the results as JSON to FILE (- for stdout; tables then go
                  to stderr)";

fn options() -> Result<Options, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Options {
        threads: cores,
        rounds: 5,
        time: Duration::from_millis(200),
        frames: 1 << 20,
        pin: false,
        queue: QUEUE,
        json: None,
        only: None,
        workloads: vec!["batch".into(), "pairs".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match arg.as_str() {
            "--threads" => o.threads = number(value()?)? as usize,
            "--rounds" => o.rounds = number(value()?)? as usize,
            "--ms" => o.time = Duration::from_millis(number(value()?)?),
            "--frames" => o.frames = number(value()?)?,
            "--pin" => o.pin = true,
            "--queue" => o.queue = number(value()?)? as usize,
            "--json" => o.json = Some(value()?),
            "--only" => o.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--workload" => {
                o.workloads = match value()?.as_str() {
                    "both" => vec!["batch".into(), "pairs".into()],
                    w @ ("batch" | "pairs") => vec![w.into()],
                    w => return Err(format!("unknown workload {w}")),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            _ => return Err(format!("unknown argument {arg}\n\n{USAGE}")),
        }
    }
    if o.threads == 0 || o.rounds == 0 || o.queue == 0 {
        return Err("--threads, --rounds and --queue must be at least 1".into());
    }
    if o.frames == 0 || !o.frames.is_multiple_of(16384) {
        return Err("--frames must be a positive multiple of 16384 (LLFree's tree)".into());
    }
    Ok(o)
}

/// min, median, max.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Which figure of a [`Sample`].
#[derive(Clone, Copy, PartialEq)]
enum Metric {
    /// Ops per second of wall-clock time.
    Wall,
    /// Ops per second of CPU time the threads got.
    PerCpu,
}

/// The figures of one workload: per thread count, per allocator, one per round.
struct Table {
    workload: &'static str,
    title: &'static str,
    threads: Vec<usize>,
    names: Vec<&'static str>,
    /// `[thread count][allocator][round]`.
    samples: Vec<Vec<Vec<Sample>>>,
}

impl Table {
    fn runs(&self, t: usize, a: usize, m: Metric) -> Vec<f64> {
        self.samples[t][a]
            .iter()
            .map(|s| match m {
                Metric::Wall => s.mops,
                Metric::PerCpu => s.per_cpu,
            })
            .collect()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    /// Median over rounds of the per-round ratio of allocator `a` here at thread
    /// index `t` to allocator `b` in `other` at thread index `to` (the same table, or
    /// the batch table for producer/consumer), with its min and max. Within a round,
    /// allocators run back to back, so each ratio compares figures measured under the
    /// same noise.
    fn paired(
        &self,
        m: Metric,
        t: usize,
        a: &str,
        other: &Table,
        to: usize,
        b: &str,
    ) -> Option<(f64, f64, f64)> {
        let x = self.runs(t, self.index(a)?, m);
        let y = other.runs(to, other.index(b)?, m);
        let r: Vec<f64> = x.iter().zip(&y).map(|(x, y)| x / y).collect();
        Some(summary(&r))
    }

    fn render(&self, out: &mut String, baseline: Option<&Table>) {
        let _ = writeln!(out, "\n{}", self.title);
        self.render_metric(out, baseline, Metric::Wall);
        self.render_metric(out, baseline, Metric::PerCpu);
    }

    fn render_metric(&self, out: &mut String, baseline: Option<&Table>, m: Metric) {
        let rounds = self.samples[0][0].len();
        let _ = writeln!(
            out,
            "{}, median [min-max] of {rounds} rounds",
            match m {
                Metric::Wall => "Mops/s (alloc+free pairs per second, all threads together)",
                Metric::PerCpu => {
                    "Mops per CPU-second (alloc+free pairs per second of CPU time the threads \
                     got; flat from 1 thread to N = no slow-down from sharing, whatever the \
                     machine gave)"
                }
            }
        );
        let _ = write!(out, "{:>7}", "threads");
        for n in &self.names {
            let _ = write!(out, " | {n:>20}");
        }
        let _ = writeln!(out);
        for (t, &threads) in self.threads.iter().enumerate() {
            let _ = write!(out, "{threads:>7}");
            for a in 0..self.names.len() {
                let (lo, med, hi) = summary(&self.runs(t, a, m));
                let cell = format!("{med:.1} [{lo:.1}-{hi:.1}]");
                let _ = write!(out, " | {cell:>20}");
            }
            let _ = writeln!(out);
        }
        // Ratios: meminit against LLFree at each count, and against its own 1 thread.
        let ours: Vec<&str> = self
            .names
            .iter()
            .copied()
            .filter(|n| n.starts_with("meminit"))
            .collect();
        if ours.is_empty() {
            return;
        }
        let base = baseline.unwrap_or(self);
        let one = base.threads.iter().position(|&n| n == 1);
        let none = self.names.contains(&"none");
        let _ = writeln!(
            out,
            "  ratios of the above, median [min-max] of per-round ratios; x/1t: against {}{}",
            if baseline.is_some() {
                "the same allocator's 1-thread batch figure of the same round"
            } else {
                "the same allocator's 1-thread figure of the same round"
            },
            if none && m == Metric::Wall {
                "; none/1t: no allocator, so the parallelism the machine gave"
            } else {
                ""
            }
        );
        let _ = write!(out, "{:>7}", "threads");
        for m in &ours {
            let short = m.trim_start_matches("meminit-");
            let _ = write!(
                out,
                " | {:>18} | {:>18}",
                format!("{short}/llfree"),
                format!("{short}/1t")
            );
        }
        if none {
            let _ = write!(out, " | {:>18}", "none/1t");
        }
        let _ = writeln!(out);
        let cell = |r: Option<(f64, f64, f64)>| match r {
            Some((lo, med, hi)) => format!("{med:.2} [{lo:.2}-{hi:.2}]"),
            None => "-".into(),
        };
        for (t, &threads) in self.threads.iter().enumerate() {
            let _ = write!(out, "{threads:>7}");
            for &a in &ours {
                let vs_llfree = self.paired(m, t, a, self, t, "llfree");
                let vs_one = one.and_then(|one| self.paired(m, t, a, base, one, a));
                let _ = write!(out, " | {:>18} | {:>18}", cell(vs_llfree), cell(vs_one));
            }
            if none {
                let r = one.and_then(|one| self.paired(m, t, "none", base, one, "none"));
                let _ = write!(out, " | {:>18}", cell(r));
            }
            let _ = writeln!(out);
        }
    }

    fn json(&self) -> serde_json::Value {
        let points: Vec<_> = self
            .threads
            .iter()
            .enumerate()
            .map(|(t, &threads)| {
                let per: serde_json::Map<_, _> = self
                    .names
                    .iter()
                    .enumerate()
                    .map(|(a, n)| {
                        let figures = |m| {
                            let runs = self.runs(t, a, m);
                            let (lo, med, hi) = summary(&runs);
                            serde_json::json!({"min": lo, "median": med, "max": hi, "runs": runs})
                        };
                        (
                            n.to_string(),
                            serde_json::json!({
                                "mops": figures(Metric::Wall),
                                "mops_per_cpu_second": figures(Metric::PerCpu),
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({"threads": threads, "allocators": per})
            })
            .collect();
        serde_json::json!({"workload": self.workload, "title": self.title, "points": points})
    }
}

/// The aims, checked on the batch table: (aim, met, figure). The verdict is
/// on wall-clock throughput, as the issue states them; each line also gives the
/// figure per CPU-second, which a shared machine disturbs far less.
fn verdicts(batch: &Table, name: &str) -> Vec<(String, bool, String)> {
    let mut v = Vec::new();
    let (w, c) = (Metric::Wall, Metric::PerCpu);
    let median = |m, t, a: &str, to, b: &str| batch.paired(m, t, a, batch, to, b).map(|r| r.1);
    let one = batch.threads.iter().position(|&n| n == 1);
    if let Some(one) = one {
        if let (Some(r), Some(rc)) = (
            median(w, one, name, one, "llfree"),
            median(c, one, name, one, "llfree"),
        ) {
            v.push((
                format!("{name}: 1 thread >= 2x llfree"),
                r >= 2.0,
                format!("{r:.2}x; per CPU-second {rc:.2}x"),
            ));
        }
    }
    for (t, &threads) in batch.threads.iter().enumerate().skip(1) {
        if let (Some(r), Some(rc)) = (
            median(w, t, name, t, "llfree"),
            median(c, t, name, t, "llfree"),
        ) {
            v.push((
                format!("{name}: {threads} threads >= llfree"),
                r >= 1.0,
                format!("{r:.2}x; per CPU-second {rc:.2}x"),
            ));
        }
    }
    if let (Some(one), Some(two)) = (one, batch.threads.iter().position(|&n| n == 2)) {
        if let Some(r) = median(w, two, name, one, name) {
            let machine = match median(w, two, "none", one, "none") {
                Some(m) => format!("; no allocator at all: {m:.2}x"),
                None => String::new(),
            };
            let per_cpu = match median(c, two, name, one, name) {
                Some(c) => format!(
                    "; per CPU-second {c:.2}x, so about {:.2}x on 2 free cores",
                    2.0 * c
                ),
                None => String::new(),
            };
            v.push((
                format!("{name}: 2 threads >= 1.6x its 1 thread"),
                r >= 1.6,
                format!("{r:.2}x{machine}{per_cpu}"),
            ));
        }
    }
    v
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("meminit-peers: {e}");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let pinned = if o.pin { affinity() } else { Vec::new() };
    let run = Run {
        time: o.time,
        pin: &pinned,
        queue: o.queue,
    };

    let t = Instant::now();
    let spin = Meminit::<spin::mutex::SpinMutex<()>, true>::new(o.frames, o.threads);
    let pl = Meminit::<parking_lot::RawMutex, true>::new(o.frames, o.threads);
    let zone = Meminit::<spin::mutex::SpinMutex<()>, false>::new(o.frames, o.threads);
    let ll = Llfree::new(o.frames as usize, o.threads);
    let buddy = Buddy::new(o.frames as usize);
    let setup = t.elapsed();
    let all: [(&'static str, &dyn Workloads); 6] = [
        ("meminit-spin", &spin),
        ("meminit-pl", &pl),
        ("meminit-zone", &zone),
        ("llfree", &ll),
        ("buddy", &buddy),
        ("none", &Nothing),
    ];
    let subjects: Vec<(&'static str, &dyn Workloads)> = all
        .iter()
        .copied()
        .filter(|(n, _)| {
            o.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|x| x == n))
        })
        .collect();
    if subjects.is_empty() {
        eprintln!("meminit-peers: --only names no allocator");
        std::process::exit(2);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "meminit-peers: {} cores (available_parallelism), {model}; {} frames ({} GiB) each; \
         {} rounds of {} ms per point, allocators interleaved; threads {}; set-up {:.1} s",
        cores,
        o.frames,
        (o.frames * 4096) >> 30,
        o.rounds,
        o.time.as_millis(),
        if o.pin { "pinned" } else { "unpinned" },
        setup.as_secs_f64()
    );
    if o.threads > cores {
        let _ = writeln!(
            out,
            "note: up to {} threads on {cores} cores: beyond {cores}, threads share cores",
            o.threads
        );
    }
    let report = |s: &str| {
        if o.json.as_deref() == Some("-") {
            eprint!("{s}");
        } else {
            print!("{s}");
        }
    };
    report(&out);
    out.clear();

    let mut tables = Vec::new();
    for w in &o.workloads {
        let (workload, title, threads): (&'static str, &'static str, Vec<usize>) = if w == "batch" {
            (
                "batch",
                "batch: each thread allocates 32 order-0 frames, then frees them, on its own CPU",
                (1..=o.threads).collect(),
            )
        } else {
            (
                    "pairs",
                    "producer/consumer: thread 2k allocates batches of 32, thread 2k+1 frees them on its own CPU",
                    (2..=o.threads).step_by(2).collect(),
                )
        };
        if threads.is_empty() {
            let _ = writeln!(out, "\n{title}: skipped (needs --threads 2 or more)");
            continue;
        }
        let mut samples = vec![vec![Vec::new(); subjects.len()]; threads.len()];
        for round in 0..o.rounds {
            for (t, &n) in threads.iter().enumerate() {
                // Rotate the order each round, so no allocator always runs first.
                for i in 0..subjects.len() {
                    let a = (i + round) % subjects.len();
                    let (_, s) = subjects[a];
                    let m = if workload == "batch" {
                        s.batch(&run, n)
                    } else {
                        s.pairs(&run, n)
                    };
                    samples[t][a].push(m);
                }
            }
        }
        tables.push(Table {
            workload,
            title,
            threads,
            names: subjects.iter().map(|(n, _)| *n).collect(),
            samples,
        });
    }
    for (name, s) in &subjects {
        if let Err(e) = s.check() {
            let _ = writeln!(out, "error: {name} lost frames: {e}");
        }
    }

    let batch = tables.iter().find(|t| t.workload == "batch");
    for t in &tables {
        let baseline = (t.workload == "pairs").then_some(batch).flatten();
        t.render(&mut out, baseline);
    }
    let mut aims = Vec::new();
    if let Some(batch) = batch {
        let _ = writeln!(
            out,
            "\naims (batch, from issue 7; verdict on Mops/s, medians of per-round ratios):"
        );
        for name in ["meminit-spin", "meminit-pl"] {
            for (aim, met, figure) in verdicts(batch, name) {
                let _ = writeln!(
                    out,
                    "  {:<4} {aim}: {figure}",
                    if met { "met" } else { "MISS" }
                );
                aims.push(serde_json::json!({"aim": aim, "met": met, "figure": figure}));
            }
        }
    }
    report(&out);

    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "machine": {"cores": cores, "cpu": model},
            "frames": o.frames,
            "rounds": o.rounds,
            "ms": o.time.as_millis() as u64,
            "pinned": o.pin,
            "workloads": tables.iter().map(Table::json).collect::<Vec<_>>(),
            "aims": aims,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        if path == "-" {
            print!("{text}");
        } else if let Err(e) = std::fs::write(path, text) {
            eprintln!("meminit-peers: {path}: {e}");
            std::process::exit(1);
        }
    }
}
