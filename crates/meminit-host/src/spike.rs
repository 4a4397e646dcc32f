//! The `spike` workload on the simulator: a load spike, and what the host gets
//! back once it is over.
//!
//! After boot, `SIZE` is allocated page by page (spread over the nodes, through
//! CPU 0's cache, as the container workload allocates) and every page of it is
//! written in the simulated physical memory. Then all of it is freed, the CPU
//! caches are drained, and the machine idles: [`SPIKE_PASSES`] passes of
//! [`Allocator::report_free`] with a reporter that discards the reported memory
//! with `MADV_DONTNEED`, as a hypervisor does with what a virtio-balloon guest
//! reports. Memmap and guest memory residency are read from the OS after boot,
//! at the peak and after the release. Last, a few MiB are allocated again to
//! check that memory the host discarded reads zeroes and can be written.
//!
//! Around each step the counts are checked against what the workload holds
//! (free + allocated + uninitialised + reserved = present, per zone). This module
//! owns the reporter and those checks; it drives the allocator only through its
//! public API, and leaves timing allocations and reporting to [`crate::sim`].

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::time::Instant;

use meminit::{
    Allocator, Constraint, CpuId, FreeReporter, FreeRequest, NodeId, Pfn, ReportError, ReportStats,
    ZoneType, PAGE_SIZE,
};
use serde::Serialize;

use crate::backing::HostBacking;
use crate::region::Region;

/// Idle-time passes after the release: give-back needs a chunk free across
/// two, and a third catches what the second freed up.
pub const SPIKE_PASSES: u32 = 3;

/// Memory allocated again after the release, to check it (at most the spike).
pub const REUSE_BYTES: u64 = 32 << 20;

/// What the host simulator's allocator runs on.
pub(crate) type HostAllocator<'a> = Allocator<'a, HostBacking, parking_lot::RawMutex>;

/// The spike, measured. Residency is read from the OS with `mincore`; the
/// other figures are the allocator's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpikeReport {
    /// Bytes the spike allocated and wrote, page by page.
    pub bytes: u64,
    /// Idle-time passes of free page reporting (and give-back) after the release.
    pub passes: u32,
    /// Memmap resident on the host after boot, before the spike.
    pub memmap_resident_boot_bytes: u64,
    /// Memmap resident at the peak: every page of the spike allocated and written.
    pub memmap_resident_peak_bytes: u64,
    /// Memmap resident after the release: all freed, then the idle passes.
    pub memmap_resident_release_bytes: u64,
    /// Simulated guest memory resident on the host after boot.
    pub guest_resident_boot_bytes: u64,
    /// Simulated guest memory resident at the peak.
    pub guest_resident_peak_bytes: u64,
    /// Simulated guest memory resident after the release: what the reporter
    /// discarded is gone.
    pub guest_resident_release_bytes: u64,
    /// Memory reported to the host over the passes (and discarded by it): free
    /// blocks of 2 MiB or more, and the memory of chunks given back that had not
    /// been reported as blocks.
    pub reported_bytes: u64,
    /// Free memory whose host copy is gone after the release (the zones'
    /// `reported` pages).
    pub free_reported_release_bytes: u64,
    /// Usable memory of the chunks given back to uninitialised.
    pub given_back_bytes: u64,
    /// Chunks given back to uninitialised.
    pub chunks_given_back: u64,
    /// Memmap the backing released for chunks given back.
    pub memmap_released_bytes: u64,
    /// Wall time of the idle passes (ns).
    pub release_ns: u64,
    /// Pages allocated again after the release, to check them.
    pub reuse_pages: u64,
    /// Of those, pages whose memory had been reported: each must read zeroes.
    pub reuse_reported_pages: u64,
    /// Of those, pages that did not read zeroes: must be none.
    pub reuse_not_zeroed_pages: u64,
}

/// A reporter that does what a hypervisor does with a guest's reports: drops the
/// memory (`MADV_DONTNEED`), which reads as zeroes when next touched.
pub(crate) struct Discarding<'r> {
    pub(crate) physical: &'r Region,
    /// Every range reported, in pfns.
    pub(crate) reported: Vec<Range<u64>>,
}

impl FreeReporter for Discarding<'_> {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        for r in ranges {
            let (start, end) = (r.start.0, r.end.0);
            let offset = usize::try_from(start * PAGE_SIZE).ok();
            let len = usize::try_from((end - start) * PAGE_SIZE).ok();
            let (Some(offset), Some(len)) = (offset, len) else {
                return Err(ReportError {
                    reason: "a reported range lies past the host's address space",
                });
            };
            self.physical
                .discard(offset, len)
                .map_err(|_| ReportError {
                    reason: "the host could not discard reported memory (MADV_DONTNEED)",
                })?;
            self.reported.push(start..end);
        }
        Ok(())
    }
}

impl Discarding<'_> {
    /// The reported ranges, sorted and merged, to look pfns up in.
    fn merged(mut self) -> Vec<Range<u64>> {
        self.reported.sort_unstable_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(self.reported.len());
        for r in self.reported {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }
}

/// Whether `pfn` lies in one of the sorted, disjoint `ranges`.
fn in_ranges(ranges: &[Range<u64>], pfn: u64) -> bool {
    let i = ranges.partition_point(|r| r.start <= pfn);
    i > 0 && pfn < ranges[i - 1].end
}

/// Pages the workload holds, per (node, zone).
type Held = HashMap<(NodeId, ZoneType), u64>;

/// One run of the workload: the machine, and the pages it holds per zone.
struct Run<'x, 'a> {
    allocator: &'x HostAllocator<'a>,
    /// The simulated physical memory: pfn `p` at offset `p * 4096`.
    physical: &'x Region,
    nodes: &'x [NodeId],
    held: Held,
}

impl Run<'_, '_> {
    /// Checks free + allocated + uninitialised + reserved = present in every
    /// zone, with allocated the pages the workload holds there.
    fn check_counts(&self, when: &str) -> io::Result<()> {
        for z in self.allocator.zones() {
            let allocated = self.held.get(&(z.node, z.zone)).copied().unwrap_or(0);
            if z.free + allocated + z.uninitialised + z.reserved != z.present {
                return Err(io::Error::other(format!(
                    "{when}: node {} zone {}: free {} + allocated {allocated} + uninitialised {} + reserved {} != present {}",
                    z.node,
                    z.zone.name(),
                    z.free,
                    z.uninitialised,
                    z.reserved,
                    z.present
                )));
            }
        }
        Ok(())
    }

    /// Allocates `pages` pages one by one through `alloc`, spread over the
    /// nodes, counting each by its zone, and writes `byte` to each after `check`
    /// has looked at it. Returns the pages it got; failures are `alloc`'s to
    /// count.
    fn allocate(
        &mut self,
        pages: u64,
        alloc: &mut dyn FnMut(u32, Constraint, NodeId) -> Option<Pfn>,
        byte: u8,
        mut check: impl FnMut(Pfn),
    ) -> io::Result<Vec<Pfn>> {
        let mut got = Vec::with_capacity(pages as usize);
        for i in 0..pages {
            let node = self.nodes[i as usize % self.nodes.len()];
            let Some(pfn) = alloc(0, Constraint::Any, node) else {
                continue;
            };
            let Some(zone) = self.allocator.page(pfn).ok().and_then(|p| p.zone()) else {
                return Err(io::Error::other(format!(
                    "page {pfn} was handed out but its descriptor names no zone"
                )));
            };
            *self.held.entry(zone).or_default() += 1;
            check(pfn);
            // SAFETY: the page was just allocated to this workload and is written
            // only here until it is freed.
            unsafe {
                self.physical
                    .fill(pfn.addr() as usize, PAGE_SIZE as usize, byte)
            };
            got.push(pfn);
        }
        Ok(got)
    }

    /// Frees `pages` through CPU 0's cache and drains every CPU's cache; the
    /// free blocks must all merge.
    fn release(&mut self, pages: Vec<Pfn>) -> io::Result<()> {
        for pfn in pages {
            if let Some(zone) = self.allocator.page(pfn).ok().and_then(|p| p.zone()) {
                *self.held.entry(zone).or_default() -= 1;
            }
            self.allocator
                .free(FreeRequest::pfn(pfn).on(CpuId(0)).order(0))
                .map_err(|e| io::Error::other(format!("freeing spike page {pfn}: {e}")))?;
        }
        self.allocator.drain(None).unwrap_or(0);
        let unmerged = self.allocator.unmerged_free_blocks();
        if unmerged != 0 {
            return Err(io::Error::other(format!(
                "after the spike's release, {unmerged} free blocks did not merge with their buddies"
            )));
        }
        Ok(())
    }
}

/// Runs the spike of `bytes` on `allocator`, whose simulated physical memory is
/// `physical` (pfn `p` at offset `p * 4096`), allocating through `alloc` (which
/// times and counts failures). Pages the allocator holds when it starts (boot
/// allocations) stay held; the counts are checked against them.
pub(crate) fn spike_workload(
    allocator: &HostAllocator<'_>,
    physical: &Region,
    nodes: &[NodeId],
    bytes: u64,
    alloc: &mut dyn FnMut(u32, Constraint, NodeId) -> Option<Pfn>,
) -> io::Result<SpikeReport> {
    let mut run = Run {
        allocator,
        physical,
        nodes,
        held: allocator
            .zones()
            .map(|z| ((z.node, z.zone), z.allocated()))
            .collect(),
    };
    let mut report = SpikeReport {
        bytes,
        passes: SPIKE_PASSES,
        memmap_resident_boot_bytes: allocator.backing().resident_bytes()?,
        guest_resident_boot_bytes: physical.resident_bytes()?,
        ..SpikeReport::default()
    };

    let spike = run.allocate(bytes.div_ceil(PAGE_SIZE), alloc, 0xa5, |_| {})?;
    run.check_counts("at the spike's peak")?;
    report.memmap_resident_peak_bytes = allocator.backing().resident_bytes()?;
    report.guest_resident_peak_bytes = physical.resident_bytes()?;
    run.release(spike)?;

    let mut reporter = Discarding {
        physical,
        reported: Vec::new(),
    };
    let mut total = ReportStats::default();
    let t = Instant::now();
    for pass in 0..SPIKE_PASSES {
        let s = allocator
            .report_free(&mut reporter)
            .map_err(|e| io::Error::other(format!("idle pass {pass} after the spike: {e}")))?;
        total.pages += s.pages;
        total.pages_given_back += s.pages_given_back;
        total.pages_given_back_reported += s.pages_given_back_reported;
        total.chunks_given_back += s.chunks_given_back;
        total.memmap_bytes_released += s.memmap_bytes_released;
    }
    report.release_ns = t.elapsed().as_nanos() as u64;
    run.check_counts("after the spike's release")?;
    report.memmap_resident_release_bytes = allocator.backing().resident_bytes()?;
    report.guest_resident_release_bytes = physical.resident_bytes()?;
    report.reported_bytes = (total.pages + total.pages_given_back_reported) * PAGE_SIZE;
    report.given_back_bytes = total.pages_given_back * PAGE_SIZE;
    report.chunks_given_back = total.chunks_given_back;
    report.memmap_released_bytes = total.memmap_bytes_released;
    report.free_reported_release_bytes =
        allocator.zones().map(|z| z.reported).sum::<u64>() * PAGE_SIZE;

    // Memory the host discarded, allocated again: it reads zeroes and is usable.
    let reported = reporter.merged();
    let (mut reused_reported, mut not_zeroed) = (0, 0);
    let again = run.allocate(
        bytes.min(REUSE_BYTES).div_ceil(PAGE_SIZE),
        alloc,
        0x5a,
        |pfn| {
            if in_ranges(&reported, pfn.0) {
                reused_reported += 1;
                // SAFETY: the page was just allocated to this workload; nothing
                // writes it until `allocate` does, after this look.
                if !unsafe { physical.is_zeroed(pfn.addr() as usize, PAGE_SIZE as usize) } {
                    not_zeroed += 1;
                }
            }
        },
    )?;
    report.reuse_pages = again.len() as u64;
    report.reuse_reported_pages = reused_reported;
    report.reuse_not_zeroed_pages = not_zeroed;
    run.check_counts("with memory allocated again after the release")?;
    run.release(again)?;
    run.check_counts("after the spike")?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meminit::{AllocRequest, Config, CpuCache, SectionSlot, Strategy};
    use meminit_boot::XorShift;

    use crate::machine::Machine;

    #[test]
    fn ranges_are_merged_and_looked_up() {
        let region = Region::reserve(1 << 20).unwrap();
        let reporter = Discarding {
            physical: &region,
            reported: vec![10..20, 0..4, 15..30, 40..41],
        };
        let merged = reporter.merged();
        assert_eq!(merged, [0..4, 10..30, 40..41]);
        for (pfn, inside) in [(0, true), (4, false), (9, false), (10, true), (29, true)] {
            assert_eq!(in_ranges(&merged, pfn), inside, "pfn {pfn}");
        }
        assert!(in_ranges(&merged, 40) && !in_ranges(&merged, 41));
    }

    /// Several spikes of random sizes in a row, on a 2-node, 1 GiB machine with
    /// give-back on: none fails, the counts hold after each step (checked by the
    /// workload itself), and memory reported and taken again reads zeroes.
    #[test]
    fn spikes_of_random_sizes_in_a_row_keep_the_counts() {
        let machine = Machine::qemu_like(1 << 30, 2, 2).unwrap();
        let layout = machine.layout().unwrap();
        let nodes: Vec<NodeId> = layout.nodes().map(|(n, _)| n).collect();
        for strategy in [Strategy::OnDemand, Strategy::Eager] {
            let physical = Region::reserve(layout.end_pfn().0 * PAGE_SIZE).unwrap();
            let slots: Vec<SectionSlot> = (0..layout.section_count())
                .map(|_| SectionSlot::new())
                .collect();
            let cpus: Vec<CpuCache<parking_lot::RawMutex>> =
                (0..2).map(|_| CpuCache::new()).collect();
            let allocator: HostAllocator<'_> = Allocator::new(
                layout.clone(),
                HostBacking::new(&layout).unwrap(),
                &slots,
                &cpus,
                Config {
                    give_back: true,
                    ..Config::new(strategy)
                },
            )
            .unwrap();
            let mut failures = 0;
            let mut alloc = |order, constraint, node| {
                let r = allocator.alloc(
                    AllocRequest::order(order)
                        .on(CpuId(0))
                        .within(constraint)
                        .node(node),
                );
                failures += u64::from(r.is_err());
                r.ok()
            };
            let mut rng = XorShift::new();
            let boot = allocator.backing().resident_bytes().unwrap();
            for round in 0..4 {
                // 1 MiB to 512 MiB, not a multiple of anything in particular.
                let bytes = (rng.next_u64() % (512 << 20)).max(1 << 20) | 0x1000;
                let r = spike_workload(&allocator, &physical, &nodes, bytes, &mut alloc)
                    .unwrap_or_else(|e| panic!("{strategy:?}, round {round}: {e}"));
                assert_eq!(r.reuse_not_zeroed_pages, 0, "{strategy:?}, round {round}");
                assert!(r.reuse_reported_pages > 0, "{strategy:?}, round {round}");
                assert!(r.reported_bytes > 0, "{strategy:?}, round {round}");
                assert!(r.memmap_resident_peak_bytes >= bytes / 64);
                // Give-back is on for both: memmap comes back down (the two
                // zones keep their reserve, each in a section of its own at most).
                assert!(
                    r.memmap_resident_release_bytes <= boot + (4 << 20),
                    "{strategy:?}, round {round}: {r:?}"
                );
            }
            assert_eq!(failures, 0, "{strategy:?}");
        }
    }
}
