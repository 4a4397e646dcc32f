//! The allocator behind virtio-mem: plugged memory is added to it, and memory the
//! host asks back is given only once the allocator removed all of it.
//!
//! virtio-mem plugs blocks (2 MiB by default) and the allocator adds whole chunks
//! (4 MiB): this keeps which blocks are plugged, adds a chunk once all of its
//! blocks are, and on an unplug request removes every chunk the range touches
//! (a chunk whose other blocks stay plugged is then plugged but unused until it
//! is whole again). A removal that does not free the whole range says no, and
//! puts back what it did remove, so nothing plugged is lost to the allocator.
//! It drives neither the device (`mem_hotplug`'s) nor the memory; at start-up it
//! finds the device, says which of its region to declare hot-pluggable, and
//! starts `mem_hotplug` over these hooks once the allocator is up.

use core::ops::Range;

use meminit::{LookupError, Pfn};

use crate::mem_hotplug::{Hotplug, MemHotplug};
use crate::println;
use crate::GuestAllocator;
use crate::{cmdline, paging, virtio_mem};

/// Blocks this keeps account of: as `mem_hotplug`'s driver (64 GiB of 2 MiB).
const MAX_BLOCKS: u64 = 32 * 1024;

/// [`Hotplug`] over the allocator, for the region `[base, base + blocks)`.
pub struct AllocatorHooks {
    allocator: &'static GuestAllocator,
    /// First pfn of the device's region, and pages per block.
    base: u64,
    block_pages: u64,
    plugged: [u64; (MAX_BLOCKS / 64) as usize],
    pub plugged_calls: u64,
    pub plugged_bytes: u64,
    pub unplug_calls: u64,
    /// Bytes it let go of (said yes to).
    pub released_bytes: u64,
    /// Unplug requests refused: some memory of the range is in use.
    pub refused: u64,
    /// Adds or removes the allocator refused with an error.
    pub bad_ranges: u64,
    /// TSC ticks of the last `on_plugged`'s adds.
    pub last_add_ticks: u64,
    /// TSC ticks of every `on_plugged`'s adds.
    pub add_ticks: u64,
}

impl AllocatorHooks {
    /// Hooks for a device whose region starts at byte `base` with blocks of
    /// `block_bytes`.
    pub fn new(allocator: &'static GuestAllocator, base: u64, block_bytes: u64) -> Self {
        AllocatorHooks {
            allocator,
            base: base / 4096,
            block_pages: (block_bytes / 4096).max(1),
            plugged: [0; (MAX_BLOCKS / 64) as usize],
            plugged_calls: 0,
            plugged_bytes: 0,
            unplug_calls: 0,
            released_bytes: 0,
            refused: 0,
            bad_ranges: 0,
            last_add_ticks: 0,
            add_ticks: 0,
        }
    }

    fn chunk_pages(&self) -> u64 {
        self.allocator.config().chunk_size / 4096
    }

    fn mark(&mut self, range: &Range<Pfn>, plugged: bool) {
        let first = (range.start.0 - self.base) / self.block_pages;
        let end = (range.end.0 - self.base).div_ceil(self.block_pages);
        for b in first..end.min(MAX_BLOCKS) {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if plugged {
                self.plugged[w] |= bit;
            } else {
                self.plugged[w] &= !bit;
            }
        }
    }

    /// Whether every block of `[start, end)` (pfns) is plugged.
    fn all_plugged(&self, start: u64, end: u64) -> bool {
        let first = (start.saturating_sub(self.base)) / self.block_pages;
        let last = (end.saturating_sub(self.base)).div_ceil(self.block_pages);
        start >= self.base
            && last <= MAX_BLOCKS
            && (first..last).all(|b| self.plugged[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }

    /// The chunks `range` touches, as a pfn range.
    fn chunks_of(&self, range: &Range<Pfn>) -> Range<u64> {
        let c = self.chunk_pages();
        (range.start.0 / c * c)..range.end.0.div_ceil(c) * c
    }

    /// Adds every chunk of `span` that is wholly plugged and absent, each run
    /// of such chunks in one `add_memory` call (its cost is per section, not
    /// per chunk: 8 GiB plugged in one request is one call, not 2048).
    fn add_whole_chunks(&mut self, span: Range<u64>) {
        let c = self.chunk_pages();
        let mut run: Option<Range<u64>> = None;
        for chunk in span.step_by(c as usize) {
            let absent = matches!(
                self.allocator.page(Pfn(chunk)),
                Err(LookupError::NotPresent { .. })
            );
            if absent && self.all_plugged(chunk, chunk + c) {
                run = Some(run.map_or(chunk..chunk + c, |r| r.start..chunk + c));
            } else if let Some(r) = run.take() {
                self.add_run(r);
            }
        }
        if let Some(r) = run {
            self.add_run(r);
        }
    }

    /// Hands a run of whole, plugged, absent chunks to the allocator.
    fn add_run(&mut self, run: Range<u64>) {
        if let Err(e) = self.allocator.add_memory(Pfn(run.start)..Pfn(run.end)) {
            println!("virtio-mem: add_memory: {e}");
            self.bad_ranges += 1;
        }
    }
}

impl Hotplug for AllocatorHooks {
    fn on_plugged(&mut self, range: Range<Pfn>) {
        let t = crate::tsc::now();
        self.plugged_calls += 1;
        self.plugged_bytes += (range.end.0 - range.start.0) * 4096;
        self.mark(&range, true);
        let span = self.chunks_of(&range);
        self.add_whole_chunks(span);
        self.last_add_ticks = crate::tsc::now() - t;
        self.add_ticks += self.last_add_ticks;
    }

    fn may_unplug(&mut self, range: Range<Pfn>) -> bool {
        self.unplug_calls += 1;
        let span = self.chunks_of(&range);
        match self.allocator.remove_memory(Pfn(span.start)..Pfn(span.end)) {
            Ok(removed) if removed.is_complete() => {
                self.mark(&range, false);
                self.released_bytes += (range.end.0 - range.start.0) * 4096;
                true
            }
            Ok(removed) => {
                self.refused += 1;
                println!(
                    "virtio-mem: may_unplug {:#x}-{:#x}: no, {} KiB in use from {:#x}",
                    range.start.addr(),
                    range.end.addr(),
                    removed.kept * 4,
                    removed.first_kept.map_or(0, |p| p.addr())
                );
                // What went is still plugged: give it back to the allocator.
                self.add_whole_chunks(span);
                false
            }
            Err(e) => {
                println!("virtio-mem: remove_memory: {e}");
                self.bad_ranges += 1;
                false
            }
        }
    }
}

/// Finds and starts the virtio-mem device as `mode` says. `None`: not asked
/// for, or (under `auto`) not there.
pub fn find_virtio_mem(
    mode: cmdline::VirtioMemMode,
    tsc_hz: u64,
) -> Option<Result<virtio_mem::VirtioMem, virtio_mem::Error>> {
    use cmdline::VirtioMemMode;
    if mode == VirtioMemMode::Off {
        return None;
    }
    match virtio_mem::VirtioMem::find() {
        None if mode == VirtioMemMode::Auto => None,
        None => Some(Err(virtio_mem::Error::NoDevice)),
        Some(at) => Some(virtio_mem::VirtioMem::start(at, tsc_hz)),
    }
}

/// The whole sections of a virtio-mem device's region, as a byte range, to
/// declare hot-pluggable; `None` if it holds none.
pub fn hotplug_region(c: virtio_mem::Config) -> Option<(u64, u64)> {
    let section = meminit::DEFAULT_SECTION_SIZE;
    let start = c.addr.next_multiple_of(section);
    let end = (c.addr + c.region_size) / section * section;
    (start < end && end <= paging::MAX_MEMORY).then_some((start, end))
}

/// Plugs the started virtio-mem device up to the requested size, handing what is
/// plugged to `hooks`. `None`: not asked for, or not there; an error is printed.
pub fn start_hotplug(
    device: Option<Result<virtio_mem::VirtioMem, virtio_mem::Error>>,
    tsc_hz: u64,
    layout: &meminit::Layout,
    hooks: &mut AllocatorHooks,
) -> Option<Result<MemHotplug, virtio_mem::Error>> {
    let result = device?.and_then(|device| {
        let c = device.config();
        let at = device.function();
        let bad = |why, value| Err(virtio_mem::Error::BadConfig { at, why, value });
        // The hooks reach the region through the identity map.
        if c.addr + c.region_size > paging::MAX_MEMORY {
            return bad(
                "the region ends above the memory this guest maps",
                c.addr + c.region_size,
            );
        }
        // Memory present at boot is the allocator's already.
        let region = Pfn(c.addr / 4096)..Pfn((c.addr + c.region_size) / 4096);
        if let Some(run) = layout.present_runs(region).next() {
            return bad(
                "the region overlaps memory of the boot memory map",
                run.start.addr(),
            );
        }
        let unit_bytes = layout.section_pages() * 4096;
        MemHotplug::start(device, unit_bytes, tsc_hz, hooks)
    });
    if let Err(e) = &result {
        println!("virtio-mem: error: {e}");
    }
    Some(result)
}
