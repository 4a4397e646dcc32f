//! Benchmarks as ratios, each pair measured side by side in one run, interleaved,
//! because these machines are noisy. Run with `scripts/bench` (or
//! `cargo bench -p meminit-host --bench ratios`).
//!
//! 1. Off switch: the order-0 fast path (through a CPU's cache) after a lazy
//!    start, once everything is initialised, against the same after an eager start.
//! 2. memmap initialisation throughput against a plain fill of the same bytes.
//! 3. Deferred initialisation with 2 threads against 1.
//! 4. Order-0 allocate + free against the `buddy_system_allocator` crate on the
//!    same memory.
//! 5. Time until ready, on-demand, at 2 GiB, 64 GiB and 1 TiB, against eager where
//!    it fits.
//! 6. Growing into chunks given back (descriptors written with atomic stores,
//!    since a stale reference may touch them) against growing into them the first
//!    time (plain writes); and what a give-back pass costs.
//! 7. A give-back pass over 64 GiB whose every chunk is pinned by an allocated
//!    block in its second half (its first half free): the cost per chunk passed
//!    over.
//! 8. Descriptor writes of whole chunks through the real path (eager, and
//!    deferred workers) against the fastest fill of the same bytes (one core, or as
//!    many threads as workers), both into memory mapped, touched and not in cache.

use std::hint::black_box;
use std::time::Instant;

use meminit::{
    AllocRequest, Allocator, Config, CpuCache, CpuId, FreeRequest, Layout, NodeId, Pfn,
    SectionSlot, Strategy,
};
use meminit_host::sim::{default_memory_budget, fill_time};
use meminit_host::{HostBacking, Machine};

/// A spin lock around each zone, as a kernel would embed it (and as
/// `buddy_system_allocator`'s locked allocator has).
type HostAllocator<'a> = Allocator<'a, HostBacking, spin::mutex::SpinMutex<()>>;

fn with_allocator<T>(
    layout: &Layout,
    strategy: Strategy,
    f: impl FnOnce(&HostAllocator<'_>, u64) -> T,
) -> T {
    with_config(layout, Config::new(strategy), f)
}

fn with_config<T>(
    layout: &Layout,
    config: Config,
    f: impl FnOnce(&HostAllocator<'_>, u64) -> T,
) -> T {
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: Vec<CpuCache<spin::mutex::SpinMutex<()>>> = (0..2).map(|_| CpuCache::new()).collect();
    let backing = HostBacking::new(layout).expect("reserve memmap");
    let t = Instant::now();
    let a = Allocator::new(layout.clone(), backing, &slots, &cpus, config).expect("start");
    let ready = t.elapsed().as_nanos() as u64;
    f(&a, ready)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn layout(name: &str) -> Layout {
    Machine::built_in(name).unwrap().layout().unwrap()
}

/// ns per order-0 allocate + free pair, through CPU 0's cache.
fn fast_path(a: &HostAllocator<'_>, ops: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..ops {
        let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        a.free(FreeRequest::pfn(black_box(p)).on(CpuId(0)).order(0))
            .unwrap();
    }
    t.elapsed().as_nanos() as f64 / ops as f64
}

fn run_workers(a: &HostAllocator<'_>, threads: usize) -> u64 {
    let nodes: Vec<NodeId> = a.layout().nodes().map(|(n, _)| n).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads.max(nodes.len()) {
            let node = nodes[i % nodes.len()];
            s.spawn(move || a.run_deferred_worker(node));
        }
    });
    t.elapsed().as_nanos() as u64
}

fn main() {
    let rounds = 7;
    let ops = 200_000;
    let container = layout("container");
    let server = layout("server");
    // Warm the host's memory once, so that no measurement pays for first touch.
    let _ = fill_time(server.memmap_bytes());

    println!("meminit benchmarks: ratios of pairs measured side by side, {rounds} interleaved rounds, medians");

    // 1. The off switch.
    let (mut lazy, mut eager) = (Vec::new(), Vec::new());
    with_allocator(&container, Strategy::Deferred, |d, _| {
        run_workers(d, 2);
        assert!(d.stats().fully_initialised);
        with_allocator(&container, Strategy::Eager, |e, _| {
            for _ in 0..rounds {
                lazy.push(fast_path(d, ops));
                eager.push(fast_path(e, ops));
            }
        })
    });
    let (lazy, eager) = (median(lazy), median(eager));
    println!(
        "1. fast path, order-0 alloc+free: lazy start {lazy:.1} ns, eager start {eager:.1} ns: ratio {:.3} (aim: 1.0 within noise)",
        lazy / eager
    );

    // 2. Initialisation throughput against the physical limit.
    let (mut init, mut fill) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = with_allocator(&server, Strategy::Eager, |_, ready| ready);
        init.push(t as f64);
        fill.push(fill_time(server.memmap_bytes()).unwrap() as f64);
    }
    let (init, fill) = (median(init), median(fill));
    println!(
        "2. memmap init, 64 GiB (1 GiB of descriptors): eager {:.1} ms, plain fill {:.1} ms: throughput ratio {:.2} (aim: >= 0.8)",
        init / 1e6,
        fill / 1e6,
        fill / init
    );

    // 3. Deferred init, 2 threads against 1.
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let single = {
        let mut b = meminit::LayoutBuilder::new();
        b.add(1 << 20, 32 << 30, meminit::RangeKind::Usable, NodeId(0));
        b.build().unwrap()
    };
    for _ in 0..3 {
        one.push(with_allocator(&single, Strategy::Deferred, |a, _| run_workers(a, 1)) as f64);
        two.push(with_allocator(&single, Strategy::Deferred, |a, _| run_workers(a, 2)) as f64);
    }
    let (one, two) = (median(one), median(two));
    println!(
        "3. deferred init, 32 GiB on one node: 1 thread {:.1} ms, 2 threads {:.1} ms: speed-up {:.2} (aim: >= 1.8 on 2 cores)",
        one / 1e6,
        two / 1e6,
        one / two
    );

    // 4. Against buddy_system_allocator on the same memory (2 GiB of frames): a
    //    batch of order-0 allocations then their frees, and single pairs.
    let frames = container.end_pfn().0 as usize;
    // meminit locks its zone on every call; compare with the crate's own locked
    // allocator, and show its unlocked one too.
    let locked = buddy_system_allocator::LockedFrameAllocator::<32>::new();
    let mut other = buddy_system_allocator::FrameAllocator::<32>::new();
    for r in container.present_runs(Pfn(0)..Pfn(u64::MAX)) {
        other.add_frame(r.start.0 as usize, r.end.0 as usize);
        locked
            .lock()
            .add_frame(r.start.0 as usize, r.end.0 as usize);
    }
    let batch = 16_384;
    let (mut ours, mut theirs, mut unlocked) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_pair, mut theirs_pair) = (Vec::new(), Vec::new());
    with_allocator(&container, Strategy::Eager, |e, _| {
        let mut held = Vec::with_capacity(batch);
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..ops / batch as u32 {
                held.extend(
                    (0..batch).map(|_| e.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap()),
                );
                for p in held.drain(..) {
                    e.free(FreeRequest::pfn(p).on(CpuId(0)).order(0)).unwrap();
                }
            }
            ours.push(t.elapsed().as_nanos() as f64 / (ops as f64));
            let mut held: Vec<usize> = Vec::with_capacity(batch);
            let t = Instant::now();
            for _ in 0..ops / batch as u32 {
                held.extend((0..batch).map(|_| locked.lock().alloc(1).unwrap()));
                for f in held.drain(..) {
                    locked.lock().dealloc(f, 1);
                }
            }
            theirs.push(t.elapsed().as_nanos() as f64 / (ops as f64));
            let t = Instant::now();
            for _ in 0..ops / batch as u32 {
                held.extend((0..batch).map(|_| other.alloc(1).unwrap()));
                for f in held.drain(..) {
                    other.dealloc(f, 1);
                }
            }
            unlocked.push(t.elapsed().as_nanos() as f64 / (ops as f64));
            ours_pair.push(fast_path(e, ops));
            let t = Instant::now();
            for _ in 0..ops {
                let f = locked.lock().alloc(1).unwrap();
                locked.lock().dealloc(black_box(f), 1);
            }
            theirs_pair.push(t.elapsed().as_nanos() as f64 / ops as f64);
        }
    });
    let (ours, theirs, unlocked) = (median(ours), median(theirs), median(unlocked));
    let (ours_pair, theirs_pair) = (median(ours_pair), median(theirs_pair));
    println!(
        "4. order-0 alloc+free over {frames} frames, batches of {batch}: meminit {ours:.1} ns, buddy_system_allocator (locked) {theirs:.1} ns: ratio {:.2} (aim: <= 0.5); its unlocked FrameAllocator {unlocked:.1} ns: ratio {:.2}",
        ours / theirs,
        ours / unlocked
    );
    println!(
        "   single alloc+free pairs: meminit {ours_pair:.1} ns, buddy_system_allocator (locked) {theirs_pair:.1} ns: ratio {:.2} \
         (its lowest free frame is a lone order-0 block, so it never splits; meminit splits an order-5 block)",
        ours_pair / theirs_pair
    );

    // 5. Time until ready.
    let budget = default_memory_budget();
    println!("5. time until ready (median of {rounds}):");
    for name in ["container", "server", "large"] {
        let l = layout(name);
        let mut ondemand = Vec::new();
        for _ in 0..rounds {
            ondemand.push(with_allocator(&l, Strategy::OnDemand, |_, ready| ready) as f64);
        }
        let ondemand = median(ondemand);
        let eager_fits = l.memmap_bytes() <= budget;
        let eager =
            eager_fits.then(|| with_allocator(&l, Strategy::Eager, |_, ready| ready) as f64);
        println!(
            "   {name:<9} {:>6}: on-demand {:>8.1} µs, eager {}",
            meminit_host::size::format(l.present_pages() * 4096),
            ondemand / 1e3,
            match eager {
                Some(e) => format!("{:.1} ms: ratio {:.0}x", e / 1e6, e / ondemand),
                None => "skipped (does not fit this host)".to_string(),
            }
        );
    }

    // 6. Growing again after give-back.
    let l = layout("container");
    let mut config = Config::new(Strategy::OnDemand);
    config.give_back_reserve = 0;
    let (mut first, mut again, mut pass_full, mut pass_idle) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        with_config(&l, config, |a, _| {
            let grow_all = |a: &HostAllocator<'_>| {
                let t = Instant::now();
                let mut held = Vec::new();
                while let Ok(p) = a.alloc(AllocRequest::order(10)) {
                    held.push(p);
                }
                let ns = t.elapsed().as_nanos() as f64;
                for p in held {
                    a.free(p).unwrap();
                }
                ns
            };
            first.push(grow_all(a));
            a.give_back();
            let t = Instant::now();
            let given = a.give_back();
            pass_full.push(t.elapsed().as_nanos() as f64 / given.chunks_given_back.max(1) as f64);
            again.push(grow_all(a));
        });
    }
    let large = layout("large");
    for _ in 0..rounds {
        with_config(&large, Config::new(Strategy::OnDemand), |a, _| {
            let t = Instant::now();
            black_box(a.give_back());
            pass_idle.push(t.elapsed().as_nanos() as f64);
        });
    }
    let (first, again) = (median(first), median(again));
    println!(
        "6. growing all of container's memory in order-10 blocks: into chunks given back {:.1} ms, the first time {:.1} ms: ratio {:.2} \
         (the first time faults the memmap in; after give-back only what the host backing released)",
        again / 1e6,
        first / 1e6,
        again / first
    );
    println!(
        "   a give-back pass: {:.1} µs per chunk given back (container, all free); {:.1} ms over large (1 TiB, 262144 chunks, none initialised)",
        median(pass_full) / 1e3,
        median(pass_idle) / 1e6
    );

    // 7. A give-back pass over pinned chunks.
    let mut config = Config::new(Strategy::Eager);
    config.give_back = true;
    config.give_back_reserve = 0;
    let mut pinned = vec![];
    with_config(&server, config, |a, _| {
        let mut held = Vec::new();
        while let Ok(p) = a.alloc(AllocRequest::order(9)) {
            held.push(p);
        }
        let chunks = held.len() as u64 / 2;
        // Free the first half of every chunk: each keeps one block allocated.
        for &p in &held {
            if p.0 % 1024 == 0 {
                a.free(p).unwrap();
            }
        }
        assert!(chunks > 8000, "{chunks} chunks pinned");
        for _ in 0..rounds {
            let t = Instant::now();
            let s = black_box(a.give_back());
            // Only chunks whose second half is missing (the end of a zone) are
            // wholly free.
            assert!(s.chunks_given_back + s.chunks_marked < 16);
            pinned.push(t.elapsed().as_nanos() as f64 / chunks as f64);
        }
    });
    println!(
        "7. a give-back pass over server (64 GiB), every chunk pinned by its second half: {:.1} ns per chunk (aim: <= 50)",
        median(pinned)
    );

    // 8. Descriptor writes against the fastest fill of the same bytes.
    for (name, threads) in [
        ("container", 0),
        ("server", 0),
        ("container", 2),
        ("server", 2),
    ] {
        descriptors::pair(name, &layout(name), threads, rounds);
    }
}

/// Item 8: descriptor writes through the real path (`init_chunk`, run by an eager start
/// or by deferred workers) against the best fill of the same bytes, both into
/// memory already mapped and touched, so that neither pays for page faults: the
/// memmap is a `SliceBacking` over a buffer written once beforehand and reused by
/// every round, and the fills write the same bytes of the same buffer. Before each
/// measurement the buffer is written with non-temporal stores, which leaves none
/// of it in the caches: a machine's memmap, 1/64 of its memory, is not in cache
/// when it is initialised. Self-contained (the crate's public API and std only).
mod descriptors {
    use std::mem::MaybeUninit;
    use std::time::Instant;

    use meminit::{Allocator, Config, CpuCache, Layout, Page, SectionSlot, SliceBacking, Strategy};

    type Lock = spin::mutex::SpinMutex<()>;

    /// A fill of `len` bytes (a multiple of 64) at `p`, which must be 64-byte
    /// aligned, valid for writes, and no one else's meanwhile.
    type Fill = unsafe fn(*mut u8, usize);

    /// The fills tried; the fastest of each round is the limit.
    const FILLS: [(&str, Fill); 5] = [
        // SAFETY: the caller's promise (on `Fill`).
        ("write_bytes", |p, len| unsafe {
            std::ptr::write_bytes(p, 0, len)
        }),
        // SAFETY: each piece is inside the caller's range.
        ("write_bytes per 64 KiB", |p, len| unsafe {
            for at in (0..len).step_by(64 << 10) {
                std::ptr::write_bytes(p.add(at), 0, (64 << 10).min(len - at));
            }
        }),
        // SAFETY: each 64-byte write is inside the caller's range, aligned.
        ("template copy", |p, len| unsafe {
            let t = std::hint::black_box([u64::MAX; 8]);
            let p = p.cast::<[u64; 8]>();
            for i in 0..len / 64 {
                p.add(i).write(t);
            }
        }),
        // SAFETY: the caller's promise is `wide`'s.
        ("wide stores", |p, len| unsafe { wide(p, len, false) }),
        // SAFETY: as above.
        ("non-temporal stores", |p, len| unsafe {
            wide(p, len, true)
        }),
    ];

    /// The widest stores this processor has (AVX-512, whose intrinsics need Rust
    /// 1.89, as the dev-dependencies already need 1.88; else AVX), ordinary or
    /// non-temporal.
    ///
    /// # Safety
    ///
    /// `len` bytes at `p` are valid for writes, 64-byte aligned, and no one else's
    /// meanwhile.
    unsafe fn wide(p: *mut u8, len: usize, nt: bool) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(p: *mut u8, len: usize, nt: bool) {
                let v = _mm512_set1_epi64(-1);
                for i in 0..len / 64 {
                    // SAFETY: inside the caller's range, 64-byte aligned.
                    unsafe {
                        let at = p.add(64 * i).cast::<__m512i>();
                        if nt {
                            _mm512_stream_si512(at.cast(), v)
                        } else {
                            _mm512_store_si512(at.cast(), v)
                        }
                    }
                }
                _mm_sfence();
            }
            #[target_feature(enable = "avx")]
            unsafe fn avx(p: *mut u8, len: usize, nt: bool) {
                let v = _mm256_set1_epi64x(-1);
                for i in 0..len / 32 {
                    // SAFETY: inside the caller's range, 32-byte aligned.
                    unsafe {
                        let at = p.add(32 * i).cast::<__m256i>();
                        if nt {
                            _mm256_stream_si256(at, v)
                        } else {
                            _mm256_store_si256(at, v)
                        }
                    }
                }
                _mm_sfence();
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature is there; the range is the caller's promise.
                return unsafe { avx512(p, len, nt) };
            }
            if is_x86_feature_detected!("avx") {
                // SAFETY: as above.
                return unsafe { avx(p, len, nt) };
            }
        }
        let _ = nt;
        // SAFETY: the caller's promise.
        unsafe { std::ptr::write_bytes(p, 0xff, len) }
    }

    /// The memmap of `layout`, mapped and touched.
    fn touched(layout: &Layout) -> Vec<MaybeUninit<Page>> {
        let n = layout.memmap_descriptors() as usize;
        let mut v: Vec<MaybeUninit<Page>> = Vec::with_capacity(n);
        // SAFETY: `n` descriptors fit in the capacity; every byte is written first.
        unsafe {
            std::ptr::write_bytes(v.as_mut_ptr(), 0, n);
            v.set_len(n);
        }
        v
    }

    /// Writes the whole buffer with non-temporal stores, so that none of it is
    /// left in the caches.
    fn evict(memmap: &mut [MaybeUninit<Page>]) {
        // SAFETY: the buffer, borrowed mutably; a `Page` is 64 bytes, 64-aligned.
        unsafe { wide(memmap.as_mut_ptr().cast(), memmap.len() * 64, true) }
    }

    /// ns for an eager start (`threads` 0) or for `threads` deferred workers to
    /// write the descriptors, and the bytes of descriptors they wrote.
    fn init(layout: &Layout, memmap: &mut [MaybeUninit<Page>], threads: usize) -> (f64, u64) {
        let slots: Vec<SectionSlot> = (0..layout.section_count())
            .map(|_| SectionSlot::new())
            .collect();
        let cpus: Vec<CpuCache<Lock>> = (0..2).map(|_| CpuCache::new()).collect();
        let strategy = if threads == 0 {
            Strategy::Eager
        } else {
            Strategy::Deferred
        };
        let backing = SliceBacking::new(memmap);
        let t = Instant::now();
        let a: Allocator<'_, SliceBacking<'_>, Lock> = Allocator::new(
            layout.clone(),
            backing,
            &slots,
            &cpus,
            Config::new(strategy),
        )
        .expect("start");
        let mut ns = t.elapsed().as_nanos();
        let boot = a.stats().chunks_done;
        if threads > 0 {
            let nodes: Vec<_> = a.layout().nodes().map(|(n, _)| n).collect();
            let t = Instant::now();
            std::thread::scope(|s| {
                for i in 0..threads.max(nodes.len()) {
                    let (a, node) = (&a, nodes[i % nodes.len()]);
                    s.spawn(move || a.run_deferred_worker(node));
                }
            });
            ns = t.elapsed().as_nanos();
        }
        let s = a.stats();
        assert!(s.fully_initialised);
        let chunks = s.chunks_done - if threads == 0 { 0 } else { boot };
        (ns as f64, chunks * s.chunk_bytes / 4096 * 64)
    }

    /// ns for `threads` threads to fill the first `bytes` of the buffer with
    /// `fill`, each its own contiguous share.
    fn fill(f: Fill, memmap: &mut [MaybeUninit<Page>], bytes: u64, threads: usize) -> f64 {
        let n = bytes as usize / 64;
        let share = n.div_ceil(threads.max(1));
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in memmap[..n].chunks_mut(share) {
                // SAFETY: this thread's own part of the buffer, whole descriptors.
                s.spawn(move || unsafe { f(part.as_mut_ptr().cast(), part.len() * 64) });
            }
        });
        t.elapsed().as_nanos() as f64
    }

    fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[0], v[v.len() / 2], v[v.len() - 1])
    }

    /// `rounds` rounds of: the descriptor writes, then every fill, each from a cold
    /// buffer. Prints each one's median and spread, and the ratio of the round's
    /// best fill to its writes (min / median / max over the rounds).
    pub fn pair(name: &str, layout: &Layout, threads: usize, rounds: usize) {
        let mut memmap = touched(layout);
        let mut fills = vec![Vec::new(); FILLS.len()];
        let (mut writes, mut ratios, mut fastest) = (vec![], vec![], vec![0; FILLS.len()]);
        for _ in 0..rounds {
            evict(&mut memmap);
            let (ns, bytes) = init(layout, &mut memmap, threads);
            writes.push(ns);
            let mut best = (f64::MAX, 0);
            for (i, &(_, f)) in FILLS.iter().enumerate() {
                evict(&mut memmap);
                let t = fill(f, &mut memmap, bytes, threads);
                fills[i].push(t);
                if t < best.0 {
                    best = (t, i);
                }
            }
            fastest[best.1] += 1;
            ratios.push(best.0 / ns);
        }
        let ms = |(lo, med, hi): (f64, f64, f64)| {
            format!("{:.2} ms [{:.2}..{:.2}]", med / 1e6, lo / 1e6, hi / 1e6)
        };
        let how = match threads {
            0 => "eager start against one core filling".to_string(),
            n => format!("deferred, {n} workers against {n} threads filling"),
        };
        println!(
            "8. descriptor writes, {name} ({how}), {} MiB: writes {}",
            layout.memmap_bytes() >> 20,
            ms(spread(writes))
        );
        for (i, (fill, _)) in FILLS.iter().enumerate() {
            println!(
                "   fill: {fill:<22} {}, fastest in {} of {rounds} rounds",
                ms(spread(fills[i].clone())),
                fastest[i]
            );
        }
        let (lo, med, hi) = spread(ratios);
        println!(
            "   throughput ratio, fastest fill / writes per round: median {med:.2} [{lo:.2}..{hi:.2}] (aim: >= 0.9)"
        );
    }
}
