//! meminit beside its peers, on the same number of frames, in one run:
//! allocation throughput at 1, 2, ... threads.
//!
//! Four workloads, each at every thread count, several rounds, the allocators
//! interleaved within a round so that noise from the (shared) machine hits them alike:
//!
//! - **batch**: every thread allocates 32 order-0 frames, then frees them, and
//!   repeats, on its own CPU (meminit's `CpuId`, LLFree's core index).
//! - **producer/consumer**: threads in pairs; thread 2k allocates batches of 32 and
//!   passes them over a bounded queue (64 batches by default) to thread 2k+1, which frees them on
//!   its own CPU. Frees on another CPU than the allocation's are what per-CPU caches
//!   find hardest.
//! - **huge**: every thread allocates 16 order-9 (2 MiB) frames, then frees them, on
//!   its own CPU (LLFree's huge-frame class).
//! - **mix**: every thread allocates 32 blocks of random orders 0 to 3, then frees
//!   each on a random thread's CPU (meminit's `CpuId`, LLFree's local reservation),
//!   while that thread runs: two threads name one CPU at once, which a kernel,
//!   whose CPU id is the one it runs on, never does.
//! - **scatter**: every thread allocates 32 blocks of random orders 0 to 3 and
//!   hands each to a random thread (itself included, over a bounded queue per
//!   pair of threads, in batches of 32), which frees it on its own CPU: frees on
//!   another CPU than the allocation's, as a kernel makes them.
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

mod frames;
mod harness;
mod options;
mod table;
mod workloads;

use std::fmt::Write as _;
use std::time::Instant;

use frames::{Buddy, Llfree, Meminit, Nothing};
use harness::{affinity, Run};
use options::{options, Options};
use table::{verdicts, Table};
use workloads::Workloads;

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

    let tables = measure(&o, &subjects, &run, &mut out);
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
    let aims = batch.map(|b| aims(b, &mut out)).unwrap_or_default();
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
        write_json(path, &doc);
    }
}

/// Every workload at every thread count, each allocator once per round, in an
/// order rotated each round; a workload that cannot run says so in `out`.
fn measure(
    o: &Options,
    subjects: &[(&'static str, &dyn Workloads)],
    run: &Run,
    out: &mut String,
) -> Vec<Table> {
    let mut tables = Vec::new();
    for w in &o.workloads {
        let all: Vec<usize> = (1..=o.threads).collect();
        let pairs: Vec<usize> = (2..=o.threads).step_by(2).collect();
        let (workload, title, threads): (&'static str, &'static str, Vec<usize>) =
            match w.as_str() {
                "batch" => (
                    "batch",
                    "batch: each thread allocates 32 order-0 frames, then frees them, on its own CPU",
                    all,
                ),
                "huge" => (
                    "huge",
                    "huge: each thread allocates 16 order-9 (2 MiB) frames, then frees them, on its own CPU",
                    all,
                ),
                "mix" => (
                    "mix",
                    "mix: each thread allocates 32 blocks of random orders 0-3, then frees each on a random thread's CPU (naming a CPU another thread runs on)",
                    all,
                ),
                "scatter" => (
                    "scatter",
                    "scatter: each thread allocates 32 blocks of random orders 0-3 and hands each to a random thread, which frees it on its own CPU",
                    all,
                ),
                _ => (
                    "pairs",
                    "producer/consumer: thread 2k allocates batches of 32, thread 2k+1 frees them on its own CPU",
                    pairs,
                ),
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
                    let m = match workload {
                        "batch" => s.batch(run, n),
                        "huge" => s.huge(run, n),
                        "mix" => s.mix(run, n),
                        "scatter" => s.scatter(run, n),
                        _ => s.pairs(run, n),
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
    tables
}

/// The aims, checked on the batch table, written to `out` and returned
/// for the JSON.
fn aims(batch: &Table, out: &mut String) -> Vec<serde_json::Value> {
    let mut aims = Vec::new();
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
    aims
}

/// Writes the JSON document to `path` (`-`: standard output); exits with status 1
/// if it cannot.
fn write_json(path: &str, doc: &serde_json::Value) {
    let text = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
    if path == "-" {
        print!("{text}");
    } else if let Err(e) = std::fs::write(path, text) {
        eprintln!("meminit-peers: {path}: {e}");
        std::process::exit(1);
    }
}
