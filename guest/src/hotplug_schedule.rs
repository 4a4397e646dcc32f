//! `hotplug=SIZE`: the guest's side of `meminit vm --hotplug`'s schedule.
//!
//! The host grows the virtio-mem device by SIZE, the guest uses the new memory,
//! frees it, and the host asks for it back. At each marker
//! (`MEMINIT-MARK hp-ready|hp-plugged|hp-peak|hp-freed|hp-unplugged`) the guest
//! waits for a byte on the serial line so that the host measures QEMU at rest;
//! the host resizes the device (QMP `qom-set requested-size`) just before it
//! sends the byte at `hp-ready` (to SIZE) and at `hp-freed` (to 0). The guest
//! times from that byte until the plugged memory is in the allocator
//! (`add_memory` done: usable), and until the device's plugged size is back to
//! 0; between the two it allocates SIZE (or the part `hotplug_use=` says) of
//! movable pages (which hot-plugged memory takes first), writes each, frees them
//! all and gives the free memory back through the balloon, as the spike does. It ends with one line,
//! `MEMINIT-HOTPLUG {json}`, that the host reads.
//!
//! It owns the schedule and its figures; the device is driven through the
//! caller's `poll` (`mem_hotplug` with the allocator's hooks), and memory moves
//! only through the caller's paths.

use meminit::{AllocFlags, Pfn, ReportError, ReportStats};

use crate::balloon::Balloon;
use crate::free_report::BalloonReporter;
use crate::println;
use crate::spike::mark;
use crate::virtio_mem::Config;

/// The longest the guest waits for a plug or an unplug to reach its size.
const WAIT_S: u64 = 120;

/// How the schedule reaches the device, the allocator and the console.
pub struct Paths<'a> {
    /// Polls the virtio-mem device (plugs or unplugs towards the requested size,
    /// adding or removing memory) and returns its configuration; `None` when
    /// there is no working device.
    pub poll: &'a mut dyn FnMut() -> Option<Config>,
    /// TSC ticks spent in `add_memory` so far.
    pub add_ticks: &'a dyn Fn() -> u64,
    /// Allocates one page with these flags (the boot CPU's path).
    pub alloc: &'a mut dyn FnMut(AllocFlags) -> Option<Pfn>,
    /// Frees one page allocated by `alloc`.
    pub free: &'a mut dyn FnMut(Pfn),
    /// Empties every CPU's page cache into its zone.
    pub drain: &'a dyn Fn(),
    /// One idle-time pass: reports free memory to the balloon and gives chunks back.
    pub report: &'a dyn Fn(Option<&mut BalloonReporter<'_>>) -> Result<ReportStats, ReportError>,
    /// Bytes of memmap populated now (`Allocator::stats().memmap_bytes`).
    pub memmap_bytes: &'a dyn Fn() -> u64,
}

/// What the schedule measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct HotplugFigures {
    pub bytes: u64,
    /// Of it, what the workload writes.
    pub used: u64,
    /// From the byte after the grow request until the plugged size reached SIZE
    /// and its chunks were added, ns; `None` if it never did.
    pub usable_ns: Option<u64>,
    /// Of that, time inside `add_memory`, ns.
    pub add_ns: u64,
    /// From the byte after the shrink request until the plugged size was 0, ns.
    pub removed_ns: Option<u64>,
    /// The device's plugged size at the end of the grow and of the shrink.
    pub plugged_bytes: u64,
    pub plugged_after_bytes: u64,
    /// Pages the workload allocated and wrote, and how many of them were in the
    /// device's region.
    pub pages: u64,
    pub region_pages: u64,
    /// Memmap populated at each marker.
    pub memmap: [u64; 5],
    /// Bytes the balloon was told were free.
    pub reported_bytes: u64,
    pub ok: bool,
}

/// Runs the schedule for a plug of `bytes`, of which the workload writes `used`
/// (all of it if `None`).
pub fn run(bytes: u64, used: Option<u64>, tsc_hz: u64, paths: Paths<'_>) -> HotplugFigures {
    let used = used.unwrap_or(bytes).min(bytes);
    let ns = |ticks: u64| (u128::from(ticks) * 1_000_000_000 / u128::from(tsc_hz.max(1))) as u64;
    let mut f = HotplugFigures {
        bytes,
        used,
        ..HotplugFigures::default()
    };
    let Some(start) = (paths.poll)() else {
        println!("meminit guest: hotplug: no working virtio-mem device; nothing to plug");
        return f;
    };
    let mut balloon = match Balloon::start(tsc_hz) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("meminit guest: note: free memory will not be reported: {e}");
            None
        }
    };
    f.memmap[0] = (paths.memmap_bytes)();
    mark("hp-ready", true, tsc_hz);
    let add_before = (paths.add_ticks)();
    let t = crate::tsc::now();
    let reached = wait_until(tsc_hz, &mut *paths.poll, |c| {
        c.plugged_size >= start.plugged_size + bytes
    });
    let took = crate::tsc::now() - t;
    f.plugged_bytes = reached.map_or(0, |c| c.plugged_size);
    if reached.is_some_and(|c| c.plugged_size >= start.plugged_size + bytes) {
        f.usable_ns = Some(ns(took));
    }
    f.add_ns = ns((paths.add_ticks)() - add_before);
    f.memmap[1] = (paths.memmap_bytes)();
    mark("hp-plugged", true, tsc_hz);

    let (lo, hi) = (start.addr / 4096, (start.addr + start.region_size) / 4096);
    let mut head: Option<Pfn> = None;
    for i in 0..used / 4096 {
        // Once the bounded pool for the region's memmap is used up, every
        // allocation would first try (and fail) to populate a chunk of the
        // region: stop, and say so, rather than crawl through boot memory.
        let (pool_used, pool) = crate::paging::hot_pool_pages();
        if i % 64 == 0 && pool > 0 && pool_used == pool {
            println!(
                "meminit guest: hotplug: the memmap pool for hot-plugged memory is used up after {} MiB written: the workload stops (memmap=chunk in a guest too small for the region's whole memmap)",
                f.pages >> 8
            );
            break;
        }
        let Some(pfn) = (paths.alloc)(AllocFlags::MOVABLE) else {
            break;
        };
        write_page(pfn, head);
        head = Some(pfn);
        f.pages += 1;
        if (lo..hi).contains(&pfn.0) {
            f.region_pages += 1;
        }
    }
    f.memmap[2] = (paths.memmap_bytes)();
    mark("hp-peak", true, tsc_hz);

    while let Some(pfn) = head {
        // SAFETY: the page is still the workload's (read before it is freed).
        let next = unsafe { (pfn.addr() as *const u64).read_volatile() };
        head = (next != u64::MAX).then_some(Pfn(next));
        (paths.free)(pfn);
    }
    (paths.drain)();
    let mut reporter = balloon.as_mut().map(BalloonReporter::new);
    let mut report_ok = true;
    for _ in 0..2 {
        if let Err(e) = (paths.report)(reporter.as_mut()) {
            println!("meminit guest: hotplug: reporting free memory failed: {e}");
            report_ok = false;
            break;
        }
    }
    f.reported_bytes = reporter.map_or(0, |r| r.bytes);
    if let (Some(b), true) = (balloon.as_mut(), report_ok) {
        if let Err(e) = crate::paging::report_released_memmap(&mut |r| b.report(r)) {
            println!("meminit guest: hotplug: reporting the memmap given back failed: {e}");
            report_ok = false;
        }
    }
    f.memmap[3] = (paths.memmap_bytes)();
    mark("hp-freed", true, tsc_hz);

    let t = crate::tsc::now();
    let after = wait_until(tsc_hz, &mut *paths.poll, |c| {
        c.plugged_size <= start.plugged_size
    });
    let took = crate::tsc::now() - t;
    f.plugged_after_bytes = after.map_or(u64::MAX, |c| c.plugged_size);
    if after.is_some_and(|c| c.plugged_size <= start.plugged_size) {
        f.removed_ns = Some(ns(took));
    }
    // The memmap `remove_memory` released goes to the host too.
    if let (Some(b), true) = (balloon.as_mut(), report_ok) {
        if let Err(e) = crate::paging::report_released_memmap(&mut |r| b.report(r)) {
            println!("meminit guest: hotplug: reporting the memmap removed failed: {e}");
            report_ok = false;
        }
    }
    f.memmap[4] = (paths.memmap_bytes)();
    f.ok = report_ok && f.usable_ns.is_some() && f.pages == used / 4096;
    println!(
        "MEMINIT-HOTPLUG {{\"bytes\":{},\"used_bytes\":{},\"hot_pool_pages\":{},\"hot_pool_used_pages\":{},\"usable_ns\":{},\"add_ns\":{},\"removed_ns\":{},\"plugged_bytes\":{},\"plugged_after_bytes\":{},\"pages\":{},\"region_pages\":{},\"memmap_ready_bytes\":{},\"memmap_plugged_bytes\":{},\"memmap_peak_bytes\":{},\"memmap_freed_bytes\":{},\"memmap_unplugged_bytes\":{},\"reported_bytes\":{},\"ok\":{}}}",
        f.bytes,
        f.used,
        crate::paging::hot_pool_pages().1,
        crate::paging::hot_pool_pages().0,
        Json(f.usable_ns),
        f.add_ns,
        Json(f.removed_ns),
        f.plugged_bytes,
        f.plugged_after_bytes,
        f.pages,
        f.region_pages,
        f.memmap[0],
        f.memmap[1],
        f.memmap[2],
        f.memmap[3],
        f.memmap[4],
        f.reported_bytes,
        f.ok
    );
    mark("hp-unplugged", true, tsc_hz);
    f
}

/// Polls the device about every 100 us until `done` holds for its
/// configuration or [`WAIT_S`] pass; the last configuration seen.
fn wait_until(
    tsc_hz: u64,
    poll: &mut dyn FnMut() -> Option<Config>,
    done: impl Fn(&Config) -> bool,
) -> Option<Config> {
    let t = crate::tsc::now();
    loop {
        let c = poll()?;
        if done(&c) || crate::tsc::now() - t > tsc_hz.saturating_mul(WAIT_S) {
            return Some(c);
        }
        let wait = crate::tsc::now();
        while crate::tsc::now() - wait < tsc_hz / 10_000 {
            core::hint::spin_loop();
        }
    }
}

/// Writes a byte in every cache line of the page and chains it to `next`
/// through its first word.
fn write_page(pfn: Pfn, next: Option<Pfn>) {
    let page = pfn.addr() as *mut u8;
    for offset in (64..4096).step_by(64) {
        // SAFETY: the page was just allocated to the workload; RAM is identity-mapped.
        unsafe { page.add(offset).write_volatile(0xa5) };
    }
    // SAFETY: as above; the first word is the workload's link.
    unsafe { (pfn.addr() as *mut u64).write_volatile(next.map_or(u64::MAX, |p| p.0)) };
}

/// An optional number as JSON (`null` when absent).
struct Json(Option<u64>);

impl core::fmt::Display for Json {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => write!(f, "null"),
        }
    }
}
