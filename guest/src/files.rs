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
//! The kept files' data pages are scattered over every chunk of movable
//! memory, so the idle loop also compacts: it implements `Migrate` for them
//! ([`Mover`]: copy the page, rewrite the file's table entry, and the allocator
//! frees the old page) and calls `Allocator::compact_up_to` at most
//! [`COMPACT_PAGES_PER_ROUND`] pages a round while that moves anything, and
//! again after each pass of `tick`. A pass waits for the compaction under way
//! (at most [`COMPACT_HOLD_NS`]), so that the chunks it empties are marked by
//! the first pass and go back on the second.
//!
//! Markers: `boot`, `peak` (every file written), `freed` (the deletes done and
//! the CPU caches drained; the guest does not wait there, so the host can watch
//! its memory fall), `released` (after the rest). With `hold=serial` the guest
//! waits at `boot`, `peak` and `released` for a byte.
//!
//! It owns the files (a table of `(data pfn, metadata address)` in unmovable
//! blocks, and the metadata slab) and the figures; it reaches the allocator only
//! through the callers' paths.

use meminit::{AllocFlags, CompactStats, Migrate, MigrateError, Pfn, ReportError, ReportStats};
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
/// The most pages one round of the idle loop asks compaction to move (4 MiB:
/// a few milliseconds of copying).
pub const COMPACT_PAGES_PER_ROUND: u64 = 1024;
/// How long a pass of `tick` waits for a compaction under way.
pub const COMPACT_HOLD_NS: u64 = 200_000_000;

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
    /// What compaction did in the rest, all rounds together.
    pub compact: CompactStats,
    /// Rounds of the idle loop that ran compaction.
    pub compact_rounds: u32,
    /// From the free to the end of the last round that moved a page, ns.
    pub compact_done_ns: u64,
    /// Kept files whose data page, read through the table after the rest, is
    /// not what was written (moved wrong, or not at all where the table says).
    pub files_bad: u64,
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
    /// `Allocator::compact_up_to` with the files' hook and a budget of pages.
    pub compact: &'a dyn Fn(&mut Mover, u64) -> CompactStats,
}

/// Compaction's hook over the kept files: their data pages are the only
/// movable memory the guest allocates, and the file table (the first `kept`
/// entries, in the order the files were written) is the only reference to
/// them.
pub struct Mover {
    table: [u64; MAX_TABLE_BLOCKS],
    kept: u64,
}

impl Mover {
    fn entry(&self, i: u64) -> u64 {
        self.table[(i / TABLE_ENTRIES) as usize] + (i % TABLE_ENTRIES) * 16
    }

    /// The table entry of the file whose data page is `pfn`. The page's first
    /// word is its file's number, and the kept entries are in the order of
    /// those numbers: a binary search, checked against the entry. (`pfn` is
    /// allocated movable, and the files' data pages are the guest's only
    /// movable memory; a page of anyone else would not match an entry.)
    fn find(&self, pfn: Pfn) -> Option<u64> {
        let number = read_word(pfn.addr());
        let (mut low, mut high) = (0, self.kept);
        while low < high {
            let mid = low + (high - low) / 2;
            let data = read_word(self.entry(mid));
            match read_word(Pfn(data).addr()).cmp(&number) {
                core::cmp::Ordering::Less => low = mid + 1,
                core::cmp::Ordering::Greater => high = mid,
                core::cmp::Ordering::Equal => return (data == pfn.0).then_some(mid),
            }
        }
        None
    }

    /// Reads every kept file through the table: its data page holds what
    /// `write_page` wrote (its number, in increasing order, and a byte in each
    /// other cache line). Returns how many do not.
    fn check(&self) -> u64 {
        let mut bad = 0;
        let mut last = None;
        for i in 0..self.kept {
            let page = Pfn(read_word(self.entry(i))).addr();
            let number = read_word(page);
            let lines = (64..4096).step_by(64).all(|offset| {
                // SAFETY: a kept file's data page, ours, identity-mapped.
                unsafe { ((page + offset) as *const u8).read_volatile() == 0xa5 }
            });
            if !lines || last.is_some_and(|l| l >= number) {
                bad += 1;
            }
            last = Some(number);
        }
        bad
    }
}

// SAFETY: on `Ok` the page's 4 KiB are at `to` and the file's table entry, the
// only reference to the page (the workload reads its files through the table,
// on this CPU, which is here in the hook), names `to`: nothing uses `from`
// afterwards. On `Err` nothing was written.
unsafe impl Migrate for Mover {
    fn migrate(&mut self, from: Pfn, to: Pfn, order: u32) -> Result<(), MigrateError> {
        if order != 0 {
            return Err(MigrateError {
                reason: "files' data pages are single pages",
            });
        }
        let Some(index) = self.find(from) else {
            return Err(MigrateError {
                reason: "not a kept file's data page",
            });
        };
        // SAFETY: `from` is a kept file's data page (its table entry says so)
        // and `to` a page the allocator just allocated for the move; both are
        // identity-mapped RAM, 4 KiB each, and distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(from.addr() as *const u8, to.addr() as *mut u8, 4096)
        };
        write_word(self.entry(index), to.0);
        Ok(())
    }
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
        compact,
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

    // The rest: the idle loop compacts the kept files' pages and ticks the
    // allocator, which reports and gives back.
    let mut mover = Mover { table, kept };
    let mut reporter = balloon.as_mut().map(BalloonReporter::new);
    let (mut compacting, mut armed_at) = (true, freed_at);
    loop {
        let now = now_ns();
        if now.saturating_sub(freed_at) >= REST_NS {
            break;
        }
        if compacting {
            let stats = compact(&mut mover, COMPACT_PAGES_PER_ROUND);
            let c = &mut figures.compact;
            c.chunks_tried += stats.chunks_tried;
            c.chunks_emptied += stats.chunks_emptied;
            c.blocks_moved += stats.blocks_moved;
            c.pages_moved += stats.pages_moved;
            c.blocks_refused += stats.blocks_refused;
            figures.compact_rounds += 1;
            compacting = stats.pages_moved > 0;
            if compacting {
                figures.compact_done_ns = now_ns() - freed_at;
            }
        }
        let hold = compacting && now.saturating_sub(armed_at) < COMPACT_HOLD_NS;
        let ticked = if hold {
            Ok(None)
        } else {
            tick(now, reporter.as_mut())
        };
        match ticked {
            Ok(None) => {}
            Ok(Some(stats)) => {
                (compacting, armed_at) = (true, now);
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
    figures.files_bad = mover.check();
    if figures.files_bad > 0 {
        println!(
            "meminit guest: files: {} kept files are not as written",
            figures.files_bad
        );
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
    let c = &figures.compact;
    println!(
        "meminit guest: files: compaction moved {} pages in {} rounds (done {} ms after the free), emptied {} chunks, {} refused",
        c.pages_moved,
        figures.compact_rounds,
        figures.compact_done_ns / 1_000_000,
        c.chunks_emptied,
        c.blocks_refused
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
