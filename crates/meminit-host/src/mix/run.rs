//! One run of a `mixed` or `churn` workload on a fresh on-demand allocator with
//! give-back on: the allocations and frees, the drain, the compaction pass
//! (when asked), the idle passes, and the figures.
//!
//! The workload keeps a table of the blocks it holds (pfn, order, and a
//! signature word written into the block's first page); after the idle passes
//! each kept block must still carry its signature where the table says it is.

use std::collections::HashMap;
use std::io;

use meminit::{
    AllocFlags, AllocRequest, Allocator, Config, CpuCache, CpuId, FreeRequest, Pfn, SectionSlot,
    Strategy, PAGE_SIZE,
};
use meminit_boot::XorShift;

use super::{Mix, MixKind, MixOptions, MixReport, CHURN_ROUNDS, CHURN_WINDOW, HUGE_PER_MILLE};
use crate::backing::HostBacking;
use crate::machine::Machine;
use crate::region::Region;
use crate::spike::{Discarding, HostAllocator, SPIKE_PASSES};

/// The simulated CPUs that allocate.
const CPUS: u32 = 2;

/// A block the workload holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    pub(super) pfn: Pfn,
    pub(super) order: u32,
    /// Written at the block's start; follows the block when it moves.
    pub(super) signature: u64,
}

/// The blocks the workload keeps (long-lived), and where each is.
#[derive(Default)]
pub(super) struct Owners {
    pub(super) blocks: Vec<Held>,
    /// pfn → index in `blocks`.
    pub(super) at: HashMap<u64, usize>,
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut XorShift) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

struct Workload<'x, 'a> {
    allocator: &'x HostAllocator<'a>,
    physical: &'x Region,
    rng: XorShift,
    opts: MixOptions,
    keep: f64,
    kept: Owners,
    next_cpu: u32,
    failures: u64,
    /// Fewest uninitialised pages seen: the workload's peak.
    uninit_min: u64,
}

impl Workload<'_, '_> {
    fn uninit(&self) -> u64 {
        self.allocator.zones().map(|z| z.uninitialised).sum()
    }

    fn note_peak(&mut self) {
        self.uninit_min = self.uninit_min.min(self.uninit());
    }

    /// Allocates a block of `order`, long-lived or not as drawn; returns it
    /// and whether it is kept (the kept ones go in the table).
    fn allocate(&mut self, order: u32) -> Option<(Pfn, bool)> {
        let long = unit(&mut self.rng) < self.keep;
        let movable = if self.opts.hints { !long } else { true };
        let movable = movable ^ (unit(&mut self.rng) < self.opts.wrong_hints);
        let flags = if movable {
            AllocFlags::MOVABLE
        } else {
            AllocFlags::NONE
        };
        let cpu = CpuId(self.next_cpu);
        self.next_cpu = (self.next_cpu + 1) % CPUS;
        let Ok(pfn) = self
            .allocator
            .alloc(AllocRequest::order(order).on(cpu).flags(flags))
        else {
            self.failures += 1;
            return None;
        };
        if long {
            let signature = self.rng.next_u64();
            // SAFETY: the block was just allocated to this workload; only it
            // (and the compaction hook, which it calls) touches the block.
            unsafe { self.physical.write_u64(pfn.addr() as usize, signature) };
            self.kept.at.insert(pfn.0, self.kept.blocks.len());
            self.kept.blocks.push(Held {
                pfn,
                order,
                signature,
            });
        }
        Some((pfn, long))
    }

    /// Frees a short-lived block on a CPU drawn at random.
    fn free(&mut self, pfn: Pfn, order: u32) -> io::Result<()> {
        let cpu = CpuId((self.rng.next_u64() % u64::from(CPUS)) as u32);
        self.allocator
            .free(FreeRequest::pfn(pfn).on(cpu).order(order))
            .map(drop)
            .map_err(|e| io::Error::other(format!("freeing block {pfn} of order {order}: {e}")))
    }

    fn mixed(&mut self, bytes: u64) -> io::Result<()> {
        let mut short = Vec::new();
        for _ in 0..bytes.div_ceil(PAGE_SIZE) {
            if let Some((pfn, false)) = self.allocate(0) {
                short.push(pfn);
            }
        }
        self.note_peak();
        for pfn in short {
            self.free(pfn, 0)?;
        }
        Ok(())
    }

    fn churn(&mut self, bytes: u64, huge: bool) -> io::Result<()> {
        // Blocks by the round they die in, modulo the window.
        let mut dying: Vec<Vec<(Pfn, u32)>> = vec![Vec::new(); CHURN_WINDOW as usize + 1];
        let per_round = bytes.div_ceil(CHURN_ROUNDS).max(PAGE_SIZE);
        let mut allocated = 0;
        for round in 0..CHURN_ROUNDS {
            let slot = (round % (CHURN_WINDOW + 1)) as usize;
            for (pfn, order) in std::mem::take(&mut dying[slot]) {
                self.free(pfn, order)?;
            }
            let target = (per_round * (round + 1)).min(bytes);
            while allocated < target {
                let x = unit(&mut self.rng);
                let order = if huge && x < HUGE_PER_MILLE / 1000.0 {
                    9
                } else {
                    // Orders 0-3: 60%, 20%, 12%, 8%.
                    match (self.rng.next_u64() % 100) as u32 {
                        0..60 => 0,
                        60..80 => 1,
                        80..92 => 2,
                        _ => 3,
                    }
                };
                allocated += PAGE_SIZE << order;
                if let Some((pfn, false)) = self.allocate(order) {
                    let life = 1 + self.rng.next_u64() % CHURN_WINDOW;
                    let at = ((round + life) % (CHURN_WINDOW + 1)) as usize;
                    dying[at].push((pfn, order));
                }
            }
            self.note_peak();
        }
        for (pfn, order) in dying.into_iter().flatten() {
            self.free(pfn, order)?;
        }
        Ok(())
    }
}

/// Runs `mix` once on `machine` with `opts`: a fresh on-demand allocator with
/// give-back on and two CPU caches.
pub fn run_mix(machine: &Machine, mix: &Mix, opts: &MixOptions) -> io::Result<MixReport> {
    let layout = machine.layout().map_err(io::Error::other)?;
    let physical = Region::reserve(layout.end_pfn().0 * PAGE_SIZE)?;
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: Vec<CpuCache<parking_lot::RawMutex>> = (0..CPUS).map(|_| CpuCache::new()).collect();
    let config = Config {
        context: Some(crate::backing::thread_context),
        wait: Some(std::thread::yield_now),
        give_back: true,
        ..Config::new(Strategy::OnDemand)
    };
    let allocator: HostAllocator<'_> = Allocator::new(
        layout.clone(),
        HostBacking::new(&layout)?,
        &slots,
        &cpus,
        config,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let mut w = Workload {
        allocator: &allocator,
        physical: &physical,
        rng: XorShift::stream(opts.seed),
        opts: *opts,
        keep: mix.keep,
        kept: Owners::default(),
        next_cpu: 0,
        failures: 0,
        uninit_min: u64::MAX,
    };
    let uninit_start = w.uninit();
    match mix.kind {
        MixKind::Mixed => w.mixed(mix.bytes)?,
        MixKind::Churn { huge } => w.churn(mix.bytes, huge)?,
    }
    let mut report = MixReport {
        workload: mix.to_string(),
        seed: opts.seed,
        memmap_peak_bytes: allocator.backing().resident_bytes()?,
        failures: w.failures,
        ..MixReport::default()
    };
    allocator.drain(None).unwrap_or(0);
    let mut owners = std::mem::take(&mut w.kept);
    if opts.compact {
        super::hook::compact(&allocator, &physical, &mut owners, &mut report)?;
    }
    let mut reporter = Discarding {
        physical: &physical,
        reported: Vec::new(),
    };
    for pass in 0..SPIKE_PASSES {
        allocator
            .report_free(&mut reporter)
            .map_err(|e| io::Error::other(format!("idle pass {pass}: {e}")))?;
    }
    check_owners(&allocator, &physical, &owners)?;
    let zones: Vec<_> = allocator.zones().collect();
    let uninit_end: u64 = zones.iter().map(|z| z.uninitialised).sum();
    let reported: u64 = zones.iter().map(|z| z.reported).sum();
    let live: u64 = owners.blocks.iter().map(|b| 1u64 << b.order).sum();
    let used = uninit_start - w.uninit_min.min(uninit_start);
    let freed = used.saturating_sub(live);
    let chunk_pages = meminit::DEFAULT_CHUNK_SIZE / PAGE_SIZE;
    let slack = live.div_ceil(chunk_pages) * chunk_pages - live;
    report.live_bytes = live * PAGE_SIZE;
    report.freed_bytes = freed * PAGE_SIZE;
    report.ideal_bytes = freed.saturating_sub(slack) * PAGE_SIZE;
    report.returned_bytes =
        (uninit_end.saturating_sub(w.uninit_min) + reported).min(freed) * PAGE_SIZE;
    report.memmap_kept_bytes = allocator.backing().resident_bytes()?;
    report.steals = zones.iter().map(|z| z.steals).sum();
    let miscounted = allocator.miscounted_chunks();
    if miscounted != 0 {
        return Err(io::Error::other(format!(
            "after the idle passes, {miscounted} chunks' words of use disagree with their descriptors"
        )));
    }
    Ok(report)
}

/// Every kept block carries its signature where the table says it is, and its
/// head is allocated with its order.
fn check_owners(
    allocator: &HostAllocator<'_>,
    physical: &Region,
    owners: &Owners,
) -> io::Result<()> {
    for b in &owners.blocks {
        let state = allocator.page(b.pfn).map(|p| p.state());
        if state != Ok(meminit::PageState::Allocated { order: b.order }) {
            return Err(io::Error::other(format!(
                "kept block {} of order {}: its head says {state:?}, not allocated",
                b.pfn, b.order
            )));
        }
        // SAFETY: the workload holds the block; nothing else writes it now.
        let found = unsafe { physical.read_u64(b.pfn.addr() as usize) };
        if found != b.signature {
            return Err(io::Error::other(format!(
                "kept block {} of order {}: its signature is {found:#x}, not {:#x}: its contents were lost or moved without the hook",
                b.pfn, b.order, b.signature
            )));
        }
    }
    Ok(())
}
