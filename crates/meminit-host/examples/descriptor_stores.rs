//! Which stores suit a chunk's descriptors, measured: eager start-up over a
//! memmap that `populate` has just committed (the allocator writes it with
//! ordinary stores, the memory being in cache) and over one committed long
//! before (premapped: non-temporal stores), beside one core populating and
//! filling the same bytes a section's memmap (2 MiB) at a time.
//!
//! Also deferred initialisation with one worker thread per node (on a
//! one-node machine, the same work on another thread), beside the same fill
//! on a new thread (a new thread runs on another core, whose caches hold none
//! of the pages just freed).
//!
//! `cargo run --release -p meminit-host --example descriptor_stores [MACHINE] [ROUNDS]`
//! (a built-in machine, `container` by default; 15 rounds, interleaved). Prints
//! min / median / max of each, in microseconds.

use std::time::Instant;

use meminit::{Allocator, Config, CpuCache, SectionSlot, Strategy};
use meminit_host::{limit::chunked_fill_time, HostBacking, Machine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let machine = Machine::built_in(&args.next().unwrap_or_else(|| "container".into()))?;
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(15);
    let layout = machine.layout()?;
    let bytes = layout.memmap_bytes() as usize;
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: Vec<CpuCache<parking_lot::RawMutex>> = vec![CpuCache::new()];
    let mut fill = Vec::new();
    let mut cached = Vec::new();
    let mut streaming = Vec::new();
    let mut deferred = Vec::new();
    let mut thread_fill = Vec::new();
    // Each step that populates starts right after memory written with ordinary
    // stores, and the premapped start-up (non-temporal stores) is followed by
    // an uncounted fill: the host zeroes recycled pages faster while they are
    // in cache, and pages written with non-temporal stores are not (see
    // `limit::Fills::before_run`). The fill and eager start-up side by side.
    for _ in 0..rounds.max(1) {
        streaming.push(eager(
            &layout,
            HostBacking::premapped(&layout)?,
            &slots,
            &cpus,
        )?);
        fill_once(bytes)?;
        fill.push(fill_once(bytes)?);
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
        deferred.push(t.elapsed().as_micros());
        drop(allocator);
        let t = Instant::now();
        std::thread::scope(|s| s.spawn(|| fill_once(bytes)).join())
            .map_err(|_| "the fill thread panicked")??;
        thread_fill.push(t.elapsed().as_micros());
    }
    println!(
        "{}: {} MiB of memmap, {} rounds; min / median / max, µs",
        machine.name,
        bytes >> 20,
        rounds
    );
    for (what, times) in [
        ("populate and fill, 2 MiB at a time", &mut fill),
        ("eager, just populated (ordinary stores)", &mut cached),
        ("eager, premapped (non-temporal stores)", &mut streaming),
        ("deferred, one worker thread per node", &mut deferred),
        ("populate and fill on a new thread", &mut thread_fill),
    ] {
        times.sort_unstable();
        println!(
            "  {what:42} {} / {} / {}",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}

/// One core populating and filling `bytes` of fresh memory, a section's memmap
/// (2 MiB) at a time: the report's chunked fill (µs).
fn fill_once(bytes: usize) -> std::io::Result<u128> {
    Ok(u128::from(chunked_fill_time(bytes as u64, false)?) / 1000)
}

/// Eager start-up over `backing` (µs).
fn eager(
    layout: &meminit::Layout,
    backing: HostBacking,
    slots: &[SectionSlot],
    cpus: &[CpuCache<parking_lot::RawMutex>],
) -> Result<u128, meminit::InitError> {
    let t = Instant::now();
    let allocator: Allocator<'_, HostBacking, parking_lot::RawMutex> = Allocator::new(
        layout.clone(),
        backing,
        slots,
        cpus,
        Config::new(Strategy::Eager),
    )?;
    let time = t.elapsed().as_micros();
    drop(allocator);
    Ok(time)
}
