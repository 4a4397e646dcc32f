//! `meminit report --hotplug SIZE`: memory that arrives after start-up, on the
//! simulator.
//!
//! The machine's layout declares SIZE more as hot-pluggable (one range on its
//! last node, from 4 GiB or the first GiB boundary above its memory, whichever
//! is higher, where QEMU puts a virtio-mem region); the allocator starts on the
//! memory present at boot; then `add_memory` makes the range present, a workload
//! allocates movable pages (which hot-plugged memory takes first) and writes
//! each, frees them all, idle passes report the free memory to the host (which
//! discards it, as a hypervisor does) and give chunks back, and `remove_memory`
//! takes the range out. At each step the memmap and the simulated memory
//! resident on the host are read with `mincore`; add and remove are timed.
//!
//! It owns the schedule and its figures ([`HotplugReport`]); the reporter is
//! `spike`'s, the regions and backing are the simulator's.

use std::io;
use std::ops::Range;
use std::time::Instant;

use meminit::{
    AllocFlags, AllocRequest, Allocator, Config, CpuCache, CpuId, FreeRequest, Granularity,
    LayoutBuilder, MemoryRange, NodeId, Pfn, RangeKind, SectionSlot, Strategy, PAGE_SIZE,
};
use serde::Serialize;

use crate::backing::HostBacking;
use crate::machine::Machine;
use crate::region::Region;
use crate::spike::{Discarding, SPIKE_PASSES};

const GIB: u64 = 1 << 30;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct HotplugOptions {
    /// Bytes declared hot-pluggable and added.
    pub bytes: u64,
    /// Bytes the workload allocates and writes (at most `bytes`).
    pub workload_bytes: u64,
    /// The boot memory's strategy.
    pub strategy: Strategy,
    /// How the memmap is committed.
    pub granularity: Granularity,
}

/// Residency at one step: memmap and simulated guest memory on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resident {
    pub memmap_bytes: u64,
    pub memory_bytes: u64,
}

/// One run of the schedule.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HotplugReport {
    /// The hot-pluggable range, bytes.
    pub range_start: u64,
    pub range_end: u64,
    pub bytes: u64,
    pub workload_bytes: u64,
    /// Residency before the add, after it, at the workload's peak, after the
    /// free (and the idle passes), after the remove.
    pub before: Resident,
    pub added: Resident,
    pub peak: Resident,
    pub freed: Resident,
    pub removed: Resident,
    /// Wall time of `add_memory` and of `remove_memory`, ns.
    pub add_ns: u64,
    pub remove_ns: u64,
    /// Pages `add_memory` made present.
    pub added_pages: u64,
    /// Pages the workload got, and of them in the hot-plugged range.
    pub pages: u64,
    pub range_pages: u64,
    /// Bytes reported to the host over the idle passes.
    pub reported_bytes: u64,
    /// What `remove_memory` made absent and what it kept.
    pub removed_pages: u64,
    pub kept_pages: u64,
    /// Whether the remove took every page out (nothing kept).
    pub removed_fully: bool,
    /// Allocations that failed.
    pub failures: u64,
}

/// Why the schedule could not run.
#[derive(Debug, thiserror::Error)]
pub enum HotplugSimError {
    #[error("--hotplug {0}: a size of whole sections of the machine ({1} bytes), above 0")]
    BadSize(u64, u64),
    #[error("the layout with the hot-pluggable range: {0}")]
    Layout(#[from] meminit::LayoutError),
    #[error("the allocator refused: {0}")]
    Allocator(String),
    #[error("{0}")]
    Hotplug(#[from] meminit::HotplugError),
    #[error("the host: {0}")]
    Io(#[from] io::Error),
}

/// Where the hot-pluggable range goes for `machine`: bytes and node.
pub fn hot_range(machine: &Machine, bytes: u64) -> (Range<u64>, NodeId) {
    let end = machine.ranges.iter().map(|r| r.end).max().unwrap_or(0);
    let start = end.div_ceil(GIB).max(4) * GIB;
    let node = machine
        .ranges
        .iter()
        .filter(|r| r.kind == RangeKind::Usable)
        .map(|r| r.node)
        .max_by_key(|n| n.0)
        .unwrap_or(NodeId(0));
    (start..start + bytes, node)
}

/// Runs the schedule on `machine`.
pub fn run(machine: &Machine, opts: &HotplugOptions) -> Result<HotplugReport, HotplugSimError> {
    if opts.bytes == 0 || !opts.bytes.is_multiple_of(machine.section_size) {
        return Err(HotplugSimError::BadSize(opts.bytes, machine.section_size));
    }
    let (hot, node) = hot_range(machine, opts.bytes);
    let mut b = LayoutBuilder::new();
    b.section_size(machine.section_size);
    for r in &machine.ranges {
        b.push(*r);
    }
    b.push(MemoryRange::new(
        hot.start,
        hot.end,
        RangeKind::Hotplug,
        node,
    ));
    let layout = b.build()?;
    let physical = Region::reserve((layout.end_pfn().0 * PAGE_SIZE).max(hot.end))?;
    let backing = HostBacking::with_granularity(&layout, opts.granularity)?;
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let cpus: Vec<CpuCache<parking_lot::RawMutex>> =
        (0..machine.cpus.max(1)).map(|_| CpuCache::new()).collect();
    let config = Config {
        context: Some(crate::backing::thread_context),
        wait: Some(std::thread::yield_now),
        give_back: true,
        ..Config::new(opts.strategy)
    };
    let allocator: Allocator<'_, HostBacking, parking_lot::RawMutex> =
        Allocator::new(layout.clone(), backing, &slots, &cpus, config)
            .map_err(|e| HotplugSimError::Allocator(e.to_string()))?;
    if opts.strategy == Strategy::Deferred {
        // The deferred work done before the plug, on this thread.
        for (n, _) in layout.nodes() {
            allocator.run_deferred_worker(n);
        }
    }
    let resident = || -> io::Result<Resident> {
        Ok(Resident {
            memmap_bytes: allocator.backing().resident_bytes()?,
            memory_bytes: physical.resident_bytes()?,
        })
    };
    let pfns = Pfn(hot.start / PAGE_SIZE)..Pfn(hot.end / PAGE_SIZE);
    let mut r = HotplugReport {
        range_start: hot.start,
        range_end: hot.end,
        bytes: opts.bytes,
        workload_bytes: opts.workload_bytes.min(opts.bytes),
        before: resident()?,
        ..HotplugReport::default()
    };

    let t = Instant::now();
    r.added_pages = allocator.add_memory(pfns.clone())?;
    r.add_ns = t.elapsed().as_nanos() as u64;
    r.added = resident()?;

    let mut held = Vec::with_capacity((r.workload_bytes / PAGE_SIZE) as usize);
    for _ in 0..r.workload_bytes / PAGE_SIZE {
        let request = AllocRequest::order(0)
            .on(CpuId(0))
            .node(node)
            .flags(AllocFlags::MOVABLE);
        match allocator.alloc(request) {
            Ok(pfn) => {
                // SAFETY: the page was just allocated to this workload, and is
                // written only here until it is freed.
                unsafe { physical.fill(pfn.addr() as usize, PAGE_SIZE as usize, 0xa5) };
                if pfns.contains(&pfn) {
                    r.range_pages += 1;
                }
                held.push(pfn);
            }
            Err(_) => r.failures += 1,
        }
    }
    r.pages = held.len() as u64;
    r.peak = resident()?;

    for pfn in held {
        allocator
            .free(FreeRequest::pfn(pfn).on(CpuId(0)))
            .map_err(|e| HotplugSimError::Allocator(e.to_string()))?;
    }
    allocator.drain(None).unwrap_or(0);
    let mut reporter = Discarding {
        physical: &physical,
        reported: Vec::new(),
    };
    for _ in 0..SPIKE_PASSES {
        allocator
            .report_free(&mut reporter)
            .map_err(|e| HotplugSimError::Allocator(e.to_string()))?;
    }
    r.reported_bytes = reporter
        .reported
        .iter()
        .map(|x| (x.end - x.start) * PAGE_SIZE)
        .sum();
    r.freed = resident()?;

    let t = Instant::now();
    let removed = allocator.remove_memory(pfns.clone())?;
    r.remove_ns = t.elapsed().as_nanos() as u64;
    // What the remove made absent, the host takes back (as a device's unplug).
    physical.discard(hot.start as usize, opts.bytes as usize)?;
    r.removed_pages = removed.pages;
    r.kept_pages = removed.kept;
    r.removed_fully = removed.is_complete();
    r.removed = resident()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_grows_by_a_gib_and_gives_it_all_back() {
        let machine = Machine::built_in("container").unwrap();
        let (hot, _) = hot_range(&machine, GIB);
        assert_eq!(hot.start, 4 * GIB);
        let r = run(
            &machine,
            &HotplugOptions {
                bytes: GIB,
                workload_bytes: 64 << 20,
                strategy: Strategy::OnDemand,
                granularity: Granularity::Section,
            },
        )
        .unwrap();
        assert_eq!(r.added_pages, GIB / PAGE_SIZE);
        // Nothing written for the new memory until it is used.
        assert_eq!(r.added.memmap_bytes, r.before.memmap_bytes);
        assert_eq!(r.pages, (64 << 20) / PAGE_SIZE);
        assert_eq!(
            r.range_pages, r.pages,
            "movable pages go to the new memory first"
        );
        assert!(r.peak.memmap_bytes > r.added.memmap_bytes);
        assert!(r.removed_fully && r.kept_pages == 0 && r.failures == 0);
        assert!(r.removed.memmap_bytes <= r.before.memmap_bytes);
        assert!(r.removed.memory_bytes <= r.before.memory_bytes + (1 << 20));
    }
}
