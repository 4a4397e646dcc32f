//! `workload=files:COUNT`: a file system's shape of work, as Linux's tmpfs does it
//! (the Linux peer's `/init` runs the same). Each file is an unmovable metadata
//! object (inode and dentry, [`META_BYTES`], four to a page of a small slab) and
//! one movable data page (`AllocFlags::MOVABLE`), both written. Then every file
//! is deleted but for one in a hundred kept at random (each kept with
//! probability 1%, by the workloads' xorshift), and the guest rests while its
//! idle loop calls `Allocator::tick` with the balloon as reporter (the
//! allocator's default delay, 1 s), handing the memmap of chunks given back to
//! the host as it goes.
//!
//! Markers: `boot`, `peak` (every file written), `freed` (the deletes done and
//! the CPU caches drained; the guest does not wait there, so the host can watch
//! its memory fall), `released` (after the rest). With `hold=serial` the guest
//! waits at `boot`, `peak` and `released` for a byte.
//!
//! It owns the files (a table of `(data pfn, metadata address)` in unmovable
//! blocks, and the metadata slab) and the figures; it reaches the allocator only
//! through the callers' paths.

use meminit::{AllocFlags, Pfn, ReportError, ReportStats};
use meminit_boot::XorShift;

use crate::balloon::Balloon;
use crate::free_report::BalloonReporter;
use crate::println;
use crate::spike::{mark, SpikeFigures};

/// A file's metadata object: about Linux's shmem inode and dentry together.
pub const META_BYTES: u64 = 1016;
/// Metadata objects per slab page, after the page's 8-byte count of live ones.
const META_PER_PAGE: u64 = 4;
/// Entries of the file table per block (an order-10 block of 16-byte entries).
const TABLE_ORDER: u32 = 10;
const TABLE_ENTRIES: u64 = (4096 << TABLE_ORDER) / 16;
/// Table blocks at most: 4 Mi files.
const MAX_TABLE_BLOCKS: usize = 16;
/// One file in a hundred is kept.
const KEEP_ONE_IN: u64 = 100;
/// How long the guest rests after the free, ticking the allocator.
const REST_NS: u64 = 3_000_000_000;
/// How often the idle loop calls `tick` while it rests.
const TICK_EVERY_NS: u64 = 10_000_000;

/// What the files workload did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FilesFigures {
    /// Files written, and kept after the deletes.
    pub files: u64,
    pub kept: u64,
    /// Metadata slab pages at the peak and after the deletes.
    pub meta_pages_peak: u64,
    pub meta_pages_kept: u64,
    /// Bytes freed by the deletes (data and metadata pages, the file table).
    pub freed_bytes: u64,
    /// From the free (the `freed` marker) to the end of the last tick that
    /// reported or gave back anything, ns; 0 if none did.
    pub last_return_ns: u64,
    /// Ticks that ran a pass.
    pub passes: u32,
    /// Reporting, give-back and the balloon, as the spike counts them
    /// (`bytes`/`pages`: the data pages written).
    pub report: SpikeFigures,
}

/// `Allocator::tick` at a time in ns, with the balloon's reporter if any.
pub type TickFn =
    dyn Fn(u64, Option<&mut BalloonReporter<'_>>) -> Result<Option<ReportStats>, ReportError>;

/// How the workload reaches the allocator.
pub struct Paths<'a> {
    /// Allocates a block of an order with flags (boot CPU, any zone, node 0).
    pub alloc: &'a mut dyn FnMut(u32, AllocFlags) -> Option<Pfn>,
    /// Frees a block allocated by `alloc`, of its order.
    pub free: &'a mut dyn FnMut(Pfn, u32),
    /// Empties every CPU's page cache into its zone.
    pub drain: &'a dyn Fn(),
    /// Shows progress: steps done, of all.
    pub progress: &'a mut dyn FnMut(u64, u64),
    /// `Allocator::tick` at a time in ns, with the balloon's reporter if any.
    pub tick: &'a TickFn,
    /// The time in ns (any origin).
    pub now_ns: &'a dyn Fn() -> u64,
}

/// The metadata slab: the page being filled, and how many pages it has.
struct Slab {
    current: Option<Pfn>,
    handed: u64,
    pages: u64,
}

impl Slab {
    fn alloc(&mut self, alloc: &mut dyn FnMut(u32, AllocFlags) -> Option<Pfn>) -> Option<u64> {
        if self.current.is_none() || self.handed == META_PER_PAGE {
            let page = alloc(0, AllocFlags::NONE)?;
            write_word(page.addr(), 0);
            self.current = Some(page);
            self.handed = 0;
            self.pages += 1;
        }
        let page = self.current?.addr();
        let object = page + 8 + self.handed * META_BYTES;
        self.handed += 1;
        write_word(page, read_word(page) + 1);
        Some(object)
    }

    /// Frees an object; its page goes back once its last object does (but for
    /// the page being filled).
    fn free(&mut self, object: u64, free: &mut dyn FnMut(Pfn, u32)) -> bool {
        let page = object & !4095;
        let live = read_word(page) - 1;
        write_word(page, live);
        if live == 0 && self.current.map(|p| p.addr()) != Some(page) {
            free(Pfn(page / 4096), 0);
            self.pages -= 1;
            return true;
        }
        false
    }
}

/// Runs the workload with `files` files.
pub fn run(files: u64, hold: bool, tsc_hz: u64, paths: Paths<'_>) -> FilesFigures {
    let Paths {
        alloc,
        free,
        drain,
        progress,
        tick,
        now_ns,
    } = paths;
    let mut figures = FilesFigures {
        files,
        ..FilesFigures::default()
    };
    let mut balloon = match Balloon::start(tsc_hz) {
        Ok(b) => {
            figures.report.balloon = Some(b.function());
            Some(b)
        }
        Err(e) => {
            println!("meminit guest: note: free memory will not be reported: {e}");
            figures.report.error = Some(e);
            None
        }
    };
    mark("boot", hold, tsc_hz);

    // The file table: order-10 unmovable blocks of (data pfn, metadata) pairs.
    let mut table = [0u64; MAX_TABLE_BLOCKS];
    let blocks = files.div_ceil(TABLE_ENTRIES) as usize;
    if blocks > MAX_TABLE_BLOCKS {
        println!(
            "meminit guest: files: at most {} files",
            MAX_TABLE_BLOCKS as u64 * TABLE_ENTRIES
        );
        return figures;
    }
    for slot in &mut table[..blocks] {
        match alloc(TABLE_ORDER, AllocFlags::NONE) {
            Some(p) => *slot = p.addr(),
            None => {
                println!("meminit guest: files: no memory for the file table");
                return figures;
            }
        }
    }
    let entry = |i: u64| table[(i / TABLE_ENTRIES) as usize] + (i % TABLE_ENTRIES) * 16;
    let mut slab = Slab {
        current: None,
        handed: 0,
        pages: 0,
    };
    let mut written = 0;
    for i in 0..files {
        progress(i, files);
        let Some(meta) = slab.alloc(alloc) else { break };
        // SAFETY: the object is ours (just handed out by the slab) and RAM is
        // identity-mapped; it is META_BYTES long, inside its page.
        unsafe { core::ptr::write_bytes(meta as *mut u8, i as u8 | 1, META_BYTES as usize) };
        let Some(data) = alloc(0, AllocFlags::MOVABLE) else {
            slab.free(meta, free);
            break;
        };
        write_page(data, i);
        write_word(entry(i), data.0);
        write_word(entry(i) + 8, meta);
        written += 1;
    }
    figures.report.pages = written;
    figures.report.bytes = written * 4096;
    figures.meta_pages_peak = slab.pages;
    mark("peak", hold, tsc_hz);

    // Delete every file but one in a hundred, at random; the kept ones move to
    // the front of the table.
    let mut rng = XorShift::new();
    let mut kept = 0;
    let mut freed_pages = 0;
    for i in 0..written {
        let (data, meta) = (read_word(entry(i)), read_word(entry(i) + 8));
        if rng.next_u64().is_multiple_of(KEEP_ONE_IN) {
            write_word(entry(kept), data);
            write_word(entry(kept) + 8, meta);
            kept += 1;
            continue;
        }
        free(Pfn(data), 0);
        freed_pages += 1 + u64::from(slab.free(meta, free));
    }
    // The table shrinks to its kept blocks.
    let needed = kept.div_ceil(TABLE_ENTRIES).max(1) as usize;
    for &block in &table[needed.min(blocks)..blocks] {
        free(Pfn(block / 4096), TABLE_ORDER);
        freed_pages += 1 << TABLE_ORDER;
    }
    drain();
    figures.kept = kept;
    figures.meta_pages_kept = slab.pages;
    figures.freed_bytes = freed_pages * 4096;
    let freed_at = now_ns();
    println!("MEMINIT-MARK freed");

    // The rest: the idle loop ticks the allocator, which reports and gives back.
    let mut reporter = balloon.as_mut().map(BalloonReporter::new);
    loop {
        let now = now_ns();
        if now.saturating_sub(freed_at) >= REST_NS {
            break;
        }
        match tick(now, reporter.as_mut()) {
            Ok(None) => {}
            Ok(Some(stats)) => {
                figures.passes += 1;
                let r = &mut figures.report;
                r.passes += 1;
                r.chunks_given_back += stats.chunks_given_back;
                r.memmap_bytes_released += stats.memmap_bytes_released;
                let mut returned = stats.pages > 0 || stats.chunks_given_back > 0;
                if let Some(b) = reporter.as_mut() {
                    match crate::paging::report_released_memmap(&mut |ranges| {
                        b.balloon_mut().report(ranges)
                    }) {
                        Ok(bytes) => {
                            r.memmap_reported_bytes += bytes;
                            returned |= bytes > 0;
                        }
                        Err(e) => {
                            println!("meminit guest: reporting the memmap given back failed: {e}");
                            r.error = Some(e);
                            r.report_failed = true;
                            break;
                        }
                    }
                }
                if returned {
                    figures.last_return_ns = now_ns() - freed_at;
                }
            }
            Err(e) => {
                let why = reporter.as_ref().and_then(|r| r.error);
                match why {
                    Some(b) => println!("meminit guest: reporting free memory failed: {b}"),
                    None => println!("meminit guest: reporting free memory failed: {e}"),
                }
                figures.report.error = why;
                figures.report.report_failed = true;
                break;
            }
        }
        let until = now_ns() + TICK_EVERY_NS;
        while now_ns() < until {
            core::hint::spin_loop();
        }
    }
    if let Some(r) = reporter {
        figures.report.reported_bytes = r.bytes;
        figures.report.reported_blocks = r.blocks;
        figures.report.report_calls = r.calls;
    }
    println!(
        "meminit guest: files: {} written, {kept} kept; metadata slab {} pages at the peak, {} kept; {} freed; {}; last returned {} ms after the free",
        written,
        figures.meta_pages_peak,
        figures.meta_pages_kept,
        figures.freed_bytes,
        figures.report,
        figures.last_return_ns / 1_000_000
    );
    mark("released", hold, tsc_hz);
    figures
}

/// Writes one byte in every cache line of the page and the file's number in its
/// first word, as writing a 4 KiB file does.
fn write_page(pfn: Pfn, file: u64) {
    let page = pfn.addr() as *mut u8;
    for offset in (0..4096).step_by(64) {
        // SAFETY: the page was just allocated to us and RAM is identity-mapped.
        unsafe { page.add(offset).write_volatile(0xa5) };
    }
    write_word(pfn.addr(), file);
}

fn write_word(addr: u64, value: u64) {
    // SAFETY: every address passed is 8-aligned inside memory this workload
    // holds (a table block, a slab page, a data page), identity-mapped.
    unsafe { (addr as *mut u64).write_volatile(value) };
}

fn read_word(addr: u64) -> u64 {
    // SAFETY: as in `write_word`: memory this workload holds, written before.
    unsafe { (addr as *const u64).read_volatile() }
}
