//! Which stores suit a chunk's descriptors, measured: eager start-up over a
//! memmap that `populate` has just committed (the allocator writes it with
//! ordinary stores, the memory being in cache) and over one committed long
//! before (premapped: non-temporal stores), beside one core populating and
//! filling the same bytes a section's memmap (2 MiB) at a time.
//!
//! Also deferred initialisation with one worker thread per node (on a
//! one-node machine, the same work on another thread), beside the same fill
//! by as many new threads (a new thread runs on another core, whose caches
//! hold none of the pages just freed).
//!
//! `cargo run --release -p meminit-host --example descriptor_stores [MACHINE] [ROUNDS]`
//! (a built-in machine, `container` by default; 15 rounds, interleaved). Prints
//! min / median / max of each in microseconds, whole and less the time the
//! host spent committing the memory (`populate`, whose zeroing neither side
//! controls and whose speed varies with the pages the host hands out), and
//! the medians of each round's ratios.

use std::time::Instant;

use meminit::{Allocator, Config, CpuCache, SectionSlot, Strategy};
use meminit_host::{
    limit::{chunked_fill_split, parallel_fill_split, FillSplit},
    HostBacking, Machine,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let machine = Machine::built_in(&args.next().unwrap_or_else(|| "container".into()))?;
    let rounds: usize = args
        .next()
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(15)
        .max(1);
    let layout = machine.layout()?;
    let bytes = layout.memmap_bytes();
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: Vec<CpuCache<parking_lot::RawMutex>> = vec![CpuCache::new()];
    let workers = layout.node_count() as u64;
    let mut fill = Vec::new();
    let mut cached = Vec::new();
    let mut streaming = Vec::new();
    let mut deferred = Vec::new();
    let mut thread_fill = Vec::new();
    // Each step that populates starts right after memory written with ordinary
    // stores, and the premapped start-up (non-temporal stores) is followed by
    // an uncounted fill: the host zeroes recycled pages faster while they are
    // in cache, and pages written with non-temporal stores are not (see
    // `limit::AROUND_RUN`). The fill and eager start-up side by side.
    for _ in 0..rounds {
        streaming.push(eager(
            &layout,
            HostBacking::premapped(&layout)?,
            &slots,
            &cpus,
        )?);
        chunked_fill_split(bytes, false)?;
        fill.push(chunked_fill_split(bytes, false)?);
        cached.push(eager(&layout, HostBacking::new(&layout)?, &slots, &cpus)?);
        let t = Instant::now();
        let allocator: Allocator<'_, HostBacking, parking_lot::RawMutex> = Allocator::new(
            layout.clone(),
            HostBacking::new(&layout)?,
            &slots,
            &cpus,
            Config::new(Strategy::Deferred),
        )?;
        std::thread::scope(|s| {
            for (node, _) in layout.nodes() {
                let allocator = &allocator;
                s.spawn(move || allocator.run_deferred_worker(node));
            }
        });
        deferred.push(FillSplit {
            total_ns: t.elapsed().as_nanos() as u64,
            // Each worker waits for its own commits: their mean. Start-up's
            // commits on this thread are in the sum too, so on more than one
            // node this counts too little of them against deferred's writes:
            // it errs against the allocator.
            populate_ns: allocator.backing().populate_time_ns() / workers,
        });
        drop(allocator);
        thread_fill.push(parallel_fill_split(bytes, workers as usize)?);
    }
    println!(
        "{}: {} MiB of memmap, {} rounds; min / median / max, µs: the whole, and less the host's populate",
        machine.name,
        bytes >> 20,
        rounds
    );
    for (what, times) in [
        ("populate and fill, 2 MiB at a time", &fill),
        ("eager, just populated (ordinary stores)", &cached),
        ("eager, premapped (non-temporal stores)", &streaming),
        ("deferred, one worker thread per node", &deferred),
        ("populate and fill, a new thread per node", &thread_fill),
    ] {
        let whole = spread(times.iter().map(|t| t.total_ns));
        let writes = spread(times.iter().map(FillSplit::writes_ns));
        println!("  {what:42} {whole:>22}   {writes:>22}");
    }
    println!("ratios, median of rounds (the fill's time over the allocator's: 1.00 is as fast)");
    for (what, ours, fills) in [
        ("eager over the fill", &cached, &fill),
        (
            "deferred over the fill on as many threads",
            &deferred,
            &thread_fill,
        ),
    ] {
        let ratio = |f: fn(&FillSplit) -> u64| {
            median(
                ours.iter()
                    .zip(fills)
                    .map(|(o, l)| f(l) as f64 / f(o).max(1) as f64),
            )
        };
        println!(
            "  {what:42} whole {:.2}, writes alone {:.2}",
            ratio(|t| t.total_ns),
            ratio(FillSplit::writes_ns)
        );
    }
    Ok(())
}

/// min / median / max of `ns`, in µs.
fn spread(ns: impl Iterator<Item = u64>) -> String {
    let mut us: Vec<u64> = ns.map(|t| t / 1000).collect();
    us.sort_unstable();
    format!("{} / {} / {}", us[0], us[us.len() / 2], us[us.len() - 1])
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Eager start-up over `backing`: its time and the time the backing spent
/// in `populate`.
fn eager(
    layout: &meminit::Layout,
    backing: HostBacking,
    slots: &[SectionSlot],
    cpus: &[CpuCache<parking_lot::RawMutex>],
) -> Result<FillSplit, meminit::InitError> {
    let t = Instant::now();
    let allocator: Allocator<'_, HostBacking, parking_lot::RawMutex> = Allocator::new(
        layout.clone(),
        backing,
        slots,
        cpus,
        Config::new(Strategy::Eager),
    )?;
    let total_ns = t.elapsed().as_nanos() as u64;
    let populate_ns = allocator.backing().populate_time_ns();
    drop(allocator);
    Ok(FillSplit {
        total_ns,
        populate_ns,
    })
}
