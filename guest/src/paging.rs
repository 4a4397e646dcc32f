//! The memmap's virtual range and the backing that maps it, section by section or
//! chunk by chunk, and the acceptance of each chunk's memory.
//!
//! The memmap lives at [`VMEMMAP_BASE`], indexed by pfn. Its granularity is chosen
//! on the command line (`memmap=chunk|section`):
//!
//! - **section**: when meminit first initialises a chunk of a
//!   section, [`GuestBacking::populate`] maps that section's 2 MiB of descriptors
//!   with one 2 MiB page taken from the section's own memory (Linux's "memmap on
//!   memory"), so a section never used costs no memory at all, and one in use
//!   costs exactly one huge page. The page and, when a gigabyte of memmap is
//!   mapped for the first time, the page directory for it come from meminit's
//!   [`PageSource`]: pages of the section itself, which meminit then reserves.
//!   No static pool of tables, and no call back into the allocator.
//! - **chunk** (the default): each chunk's descriptors (64 KiB for a 4 MiB chunk) are mapped
//!   with 4 KiB pages when that chunk is initialised, from a pool reserved at the
//!   top of memory (`memory::layout`) that spans the whole memmap: descriptor page
//!   `i` is pool page `i` (a linear mapping), and the page tables and page
//!   directories for them are pool pages too, after the descriptor pages (the
//!   page source has no pages for a chunk: its chunk must stay whole). Reserved guest RAM that is never
//!   touched costs QEMU's host nothing, so what the host keeps resident follows
//!   the chunks initialised, at 4 KiB rather than 2 MiB steps.
//!
//! Under `memmap=chunk`, a chunk the allocator gives back has its descriptors'
//! pool pages released ([`GuestBacking::depopulate`]): they stay mapped, and are
//! queued for the host, to which [`report_released_memmap`] hands them (through
//! the balloon, which discards them) unless the chunk is populated again first.
//! A section's memmap lives on the section's own memory (or a home), which the
//! allocator never asks to release.
//!
//! With `accept=zero`, [`GuestBacking::accept`] zeroes each chunk's usable pages
//! before the first is handed out, as a confidential guest accepts its memory, and
//! counts the bytes. This module owns the page-table writes.

use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use meminit::{BackingError, Granularity, MemmapBacking, MemmapPiece, Populated};
use meminit::{Layout, Page, PageSource, Pfn};

use crate::boot::{PageTable, BOOT_PML4};

/// The memmap's virtual base: PML4 slot 16 (8 TiB), above the identity map.
pub const VMEMMAP_BASE: u64 = 16 << 39;
const PML4_SLOT: usize = 16;
/// PDPT entries for the memmap: each page directory maps 1 GiB of descriptors
/// (64 GiB of RAM).
const PDPT_ENTRIES: usize = 64;
const GIB: u64 = 1 << 30;
const HUGE: u64 = 2 << 20;
const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;
const SMALL: u64 = 4096;

static mut VMEMMAP_PDPT: PageTable = PageTable([0; 512]);
static TABLE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Homes for the memmap of sections that cannot hold their own (see
/// `memory::layout`): physical addresses of 2 MiB blocks reserved in the layout.
const MAX_HOMES: usize = 16;
static HOMES: [AtomicU64; MAX_HOMES] = [const { AtomicU64::new(0) }; MAX_HOMES];
static HOMES_SET: AtomicUsize = AtomicUsize::new(0);
static HOMES_USED: AtomicUsize = AtomicUsize::new(0);

/// The chunk-granular memmap's pool (`memmap=chunk`): physical base, the bytes
/// of memmap it maps, and of those the first that it maps linearly (all of them
/// unless memory is hot-pluggable and the guest is too small for the whole
/// memmap); then its page tables, and then [`HOT_PAGES`] pages handed out one by
/// one for the memmap above the linear part. Zero when not set.
static POOL_BASE: AtomicU64 = AtomicU64::new(0);
static POOL_MEMMAP_BYTES: AtomicU64 = AtomicU64::new(0);
static POOL_LINEAR_BYTES: AtomicU64 = AtomicU64::new(0);
/// Pages of the pool for the memmap above the linear part (hot-pluggable
/// memory's), and how many are handed out (written under `TABLE_LOCK`).
static HOT_PAGES: AtomicU64 = AtomicU64::new(0);
static HOT_PAGES_USED: AtomicU64 = AtomicU64::new(0);

/// Memmap given back under `memmap=chunk` and not yet handed to the host: byte
/// ranges of the memmap (offsets from [`VMEMMAP_BASE`], so pool offsets too).
const MAX_RELEASED: usize = 512;
struct Released {
    ranges: [(u64, u64); MAX_RELEASED],
    len: usize,
}
static RELEASED: spin::Mutex<Released> = spin::Mutex::new(Released {
    ranges: [(0, 0); MAX_RELEASED],
    len: 0,
});

/// Sorts the queue of memmap given back and merges ranges that touch, so that a
/// large give-back (a hot-plugged range, chunk by chunk in any order) fits the
/// queue; the queue's new length.
fn coalesce(released: &mut Released) -> usize {
    let ranges = &mut released.ranges[..released.len];
    // Insertion sort: no allocation, and the queue is mostly in order already.
    for i in 1..ranges.len() {
        let mut j = i;
        while j > 0 && ranges[j - 1].0 > ranges[j].0 {
            ranges.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut kept = 0;
    for i in 0..ranges.len() {
        let r = ranges[i];
        if kept > 0 && ranges[kept - 1].1 >= r.0 {
            ranges[kept - 1].1 = ranges[kept - 1].1.max(r.1);
        } else {
            ranges[kept] = r;
            kept += 1;
        }
    }
    released.len = kept;
    kept
}

/// Hands the memory under the memmap given back since the last call to
/// `report` (guest-physical `(address, bytes)` ranges of the pool), and forgets
/// it; returns the bytes handed over. The queue's lock is held throughout, so a
/// chunk cannot be populated again (which takes it off the queue) while its
/// memmap is being discarded. On an error the queue is kept for the next call.
pub fn report_released_memmap<E>(
    report: &mut impl FnMut(&[(u64, u64)]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut released = RELEASED.lock();
    let mut physical = [(0u64, 0u64); 32];
    let mut len = 0;
    let mut bytes = 0;
    for &(start, end) in &released.ranges[..released.len] {
        let mut offset = start;
        while offset < end {
            let (phys, run) = pool_physical(offset, end);
            bytes += run;
            offset += run;
            if len > 0 && physical[len - 1].0 + physical[len - 1].1 == phys {
                physical[len - 1].1 += run;
                continue;
            }
            if len == physical.len() {
                report(&physical)?;
                len = 0;
            }
            physical[len] = (phys, run);
            len += 1;
        }
    }
    if len > 0 {
        report(&physical[..len])?;
    }
    released.len = 0;
    Ok(bytes)
}

/// Where the memmap at `offset` (4 KiB-aligned, mapped) lies in the pool, and
/// how much of `[offset, end)` lies there contiguously: all of it in the linear
/// part, a page at a time above it (read from the page table).
fn pool_physical(offset: u64, end: u64) -> (u64, u64) {
    // Relaxed: set before the allocator started (see `set_memmap_pool`).
    let base = POOL_BASE.load(Ordering::Relaxed);
    let linear = POOL_LINEAR_BYTES.load(Ordering::Relaxed);
    if offset < linear {
        return (base + offset, end.min(linear) - offset);
    }
    let _guard = TABLE_LOCK.lock();
    // SAFETY: TABLE_LOCK is held, so no table changes under the walk; every
    // offset queued was mapped by `map_small` (directory, table and page
    // present), and tables are identity-mapped pool pages.
    unsafe {
        let pdpt = &(*core::ptr::addr_of!(VMEMMAP_PDPT)).0;
        let pd = &(*((pdpt[(offset >> 30) as usize] & !0xfff) as *const PageTable)).0;
        let pt = &(*((pd[((offset >> 21) & 511) as usize] & !0xfff) as *const PageTable)).0;
        (pt[((offset >> 12) & 511) as usize] & !0xfff, SMALL)
    }
}

/// Bytes of pool that map `memmap_bytes` of memmap with 4 KiB pages, the first
/// `linear_bytes` of it linearly: those pages, then one page table for every
/// 2 MiB of memmap, one page directory for every 1 GiB, then `hot_pages` pages
/// for the memmap above the linear part.
pub const fn memmap_pool_bytes(memmap_bytes: u64, linear_bytes: u64, hot_pages: u64) -> u64 {
    let memmap = memmap_bytes.next_multiple_of(SMALL);
    linear_bytes.next_multiple_of(SMALL)
        + memmap.div_ceil(HUGE) * SMALL
        + memmap.div_ceil(GIB) * SMALL
        + hot_pages * SMALL
}

/// Pages of the pool for hot-pluggable memory's memmap: handed out so far, and in all.
pub fn hot_pool_pages() -> (u64, u64) {
    // Relaxed: statistics.
    (
        HOT_PAGES_USED.load(Ordering::Relaxed),
        HOT_PAGES.load(Ordering::Relaxed),
    )
}

/// Records the pool that `memmap=chunk` maps the memmap from: `memmap_bytes` of
/// memmap (the layout's whole span), the first `linear_bytes` of it linearly, the
/// rest on the `hot_pages` pages after the tables, from physical `base`, reserved
/// in the layout for [`memmap_pool_bytes`]. Call before the allocator starts.
pub fn set_memmap_pool(base: u64, memmap_bytes: u64, linear_bytes: u64, hot_pages: u64) {
    // Relaxed: published to the allocator's threads by whatever starts them (the
    // boot CPU creates the allocator after this).
    POOL_BASE.store(base, Ordering::Relaxed);
    POOL_MEMMAP_BYTES.store(memmap_bytes, Ordering::Relaxed);
    POOL_LINEAR_BYTES.store(linear_bytes.min(memmap_bytes), Ordering::Relaxed);
    HOT_PAGES.store(hot_pages, Ordering::Relaxed);
}

/// Records the reserved blocks that sections without a 2 MiB block of their own
/// take their memmap from. Call before the allocator starts.
pub fn set_memmap_homes(blocks: &[u64]) {
    for (slot, &b) in HOMES.iter().zip(blocks) {
        // Relaxed: published to the allocator's threads by whatever starts them
        // (the boot CPU creates the allocator after this).
        slot.store(b, Ordering::Relaxed);
    }
    HOMES_SET.store(blocks.len().min(MAX_HOMES), Ordering::Relaxed);
}

/// The first 2 MiB-aligned block of usable memory in the section of pfns `section`,
/// as a pfn: where the section's memmap lives if it can hold it itself. A
/// hot-pluggable section holds its own (Linux's `memmap_on_memory`): its first
/// chunk is present whenever any is, as virtio-mem plugs lowest first.
pub fn own_memmap_block(layout: &Layout, section: Range<Pfn>) -> Option<u64> {
    let pages = HUGE / 4096;
    layout
        .memory_runs(section)
        .filter(|r| !r.reserved)
        .find_map(|r| {
            let block = r.start.0.next_multiple_of(pages);
            (block + pages <= r.end.0).then_some(block)
        })
}

/// The largest memory the memmap range can describe.
pub const MAX_MEMORY: u64 = PDPT_ENTRIES as u64 * (64 << 30);

/// Links the memmap's PDPT into the boot PML4. Call once, before any populate.
pub fn init() {
    // SAFETY: single-threaded boot; the PML4 slot is unused by the identity map
    // (slots 0..8), and the PDPT is a static that lives forever.
    unsafe {
        let pdpt = core::ptr::addr_of!(VMEMMAP_PDPT) as u64;
        (*core::ptr::addr_of_mut!(BOOT_PML4)).0[PML4_SLOT] = pdpt | PRESENT_WRITABLE;
    }
}

/// Maps the 2 MiB at virtual `virt` to physical `phys` (both 2 MiB-aligned), with
/// a page directory from `pages` if this gigabyte of memmap has none yet.
fn map_huge(virt: u64, phys: u64, pages: &mut PageSource<'_>) -> Result<(), &'static str> {
    let offset = virt - VMEMMAP_BASE;
    let pdpt_index = (offset >> 30) as usize;
    let pd_index = ((offset >> 21) & 511) as usize;
    let _guard = TABLE_LOCK.lock();
    // SAFETY: TABLE_LOCK is held; a new directory comes from the page source:
    // usable pages of the section being populated, which meminit records as taken
    // and never hands out once this populate succeeds (nothing below fails after
    // the directory is linked). Entries only go from not-present to present, so
    // no TLB entry can be stale and no flush is needed.
    unsafe {
        let pd = page_directory(pdpt_index, || {
            pages.take(0).map(|pfn| pfn.addr()).map_err(|e| e.reason())
        })?;
        (*pd).0[pd_index] = phys | PRESENT_WRITABLE | HUGE_PAGE;
    }
    Ok(())
}

/// The page directory of the memmap's PDPT entry `pdpt_index`; the first time,
/// the page `new_table` gives (physical, identity-mapped), cleared and linked.
///
/// # Safety
///
/// The caller holds TABLE_LOCK, which serialises every page-table update of the
/// memmap; the returned table may be written only while it is held. A page
/// `new_table` returns is RAM below 4 TiB that no one else uses, now or later.
unsafe fn page_directory(
    pdpt_index: usize,
    new_table: impl FnOnce() -> Result<u64, &'static str>,
) -> Result<*mut PageTable, &'static str> {
    if pdpt_index >= PDPT_ENTRIES {
        return Err("the memmap reaches past the range this guest maps");
    }
    // SAFETY: the PDPT is a static written only under TABLE_LOCK, which the
    // caller holds; the new table is the caller's promise: identity-mapped RAM no
    // one else uses, cleared before it is linked.
    unsafe {
        let pdpt = &mut (*core::ptr::addr_of_mut!(VMEMMAP_PDPT)).0;
        if pdpt[pdpt_index] == 0 {
            let pd = new_table()?;
            core::ptr::write_bytes(pd as *mut u8, 0, SMALL as usize);
            pdpt[pdpt_index] = pd | PRESENT_WRITABLE;
        }
        Ok((pdpt[pdpt_index] & !0xfff) as *mut PageTable)
    }
}

/// Maps the memmap bytes `[start, end)` (offsets from [`VMEMMAP_BASE`], 4 KiB
/// aligned) with 4 KiB pages of the pool: in the linear part, memmap offset `o`
/// on pool byte `o`; above it, on the next of the hot pages not handed out yet
/// (or the page already mapped there, which stays with its offset for good). The
/// page table of the 2 MiB of memmap at offset `j << 21` is the pool page after
/// the linear part's, number `j`, and the page directory of the gigabyte at
/// `k << 30` the pool page after the tables, number `k`.
fn map_small(start: u64, end: u64) -> Result<(), &'static str> {
    // Relaxed: set before the allocator started (see `set_memmap_pool`).
    let base = POOL_BASE.load(Ordering::Relaxed);
    let bytes = POOL_MEMMAP_BYTES.load(Ordering::Relaxed);
    let linear = POOL_LINEAR_BYTES.load(Ordering::Relaxed);
    if base == 0 {
        return Err("memmap=chunk, but no memmap pool was reserved");
    }
    if end > bytes || !start.is_multiple_of(SMALL) || !end.is_multiple_of(SMALL) {
        return Err("the chunk's memmap lies outside the memmap pool");
    }
    let tables = base + linear.next_multiple_of(SMALL);
    let directories = tables + bytes.next_multiple_of(SMALL).div_ceil(HUGE) * SMALL;
    let hot = directories + bytes.next_multiple_of(SMALL).div_ceil(GIB) * SMALL;
    let _guard = TABLE_LOCK.lock();
    let mut offset = start;
    while offset < end {
        let pdpt_index = (offset >> 30) as usize;
        let pd_index = ((offset >> 21) & 511) as usize;
        let pt_index = ((offset >> 12) & 511) as usize;
        // SAFETY: page-table updates are serialised by TABLE_LOCK; the PDPT is a
        // static; the directories, the page tables and the pages they map are pool
        // pages, which the layout reserves (the allocator never hands them out) and
        // which only this function touches, under the lock: directory `k` for the
        // gigabyte of memmap number `k` alone, page table `j` for the 2 MiB of
        // memmap number `j` alone, descriptor pages for their own offset alone
        // (a hot page is handed out once, by the counter kept under the lock).
        // Pool memory is identity-mapped (below the 4 TiB `boot` maps). Entries only
        // go from not-present to present, so no TLB entry can be stale and no flush
        // is needed.
        unsafe {
            let pd =
                &mut (*page_directory(pdpt_index, || Ok(directories + pdpt_index as u64 * SMALL))?)
                    .0;
            if pd[pd_index] & HUGE_PAGE != 0 {
                return Err("the memmap is mapped by sections here");
            }
            if pd[pd_index] == 0 {
                let pt = tables + (offset >> 21) * SMALL;
                // The pool's content is whatever the memory held: clear the table
                // before it is linked.
                core::ptr::write_bytes(pt as *mut u8, 0, SMALL as usize);
                pd[pd_index] = pt | PRESENT_WRITABLE;
            }
            let pt = &mut (*((pd[pd_index] & !0xfff) as *mut PageTable)).0;
            if offset < linear {
                pt[pt_index] = (base + offset) | PRESENT_WRITABLE;
            } else if pt[pt_index] == 0 {
                // Relaxed: written only under TABLE_LOCK, which orders it.
                let used = HOT_PAGES_USED.load(Ordering::Relaxed);
                if used == HOT_PAGES.load(Ordering::Relaxed) {
                    return Err("the memmap pool for hot-plugged memory is used up");
                }
                HOT_PAGES_USED.store(used + 1, Ordering::Relaxed);
                pt[pt_index] = (hot + used * SMALL) | PRESENT_WRITABLE;
            }
        }
        offset += SMALL;
    }
    Ok(())
}

/// Memmap memory in the guest: each section's descriptors on a 2 MiB page of the
/// section itself, or each chunk's on 4 KiB pages of the memmap pool; and, if
/// asked, each chunk's memory zeroed before its first use.
pub struct GuestBacking {
    granularity: Granularity,
    zero_on_accept: bool,
    accepted: AtomicU64,
    /// The layout's first memmap pfn: `descriptors` is its descriptor's address.
    memmap_start: Pfn,
}

impl GuestBacking {
    /// A backing of `granularity` (a chunk-granular one needs the pool set by
    /// [`set_memmap_pool`]) that zeroes each chunk on acceptance if `zero_on_accept`,
    /// for a layout whose memmap starts at `memmap_start`.
    pub const fn new(granularity: Granularity, zero_on_accept: bool, memmap_start: Pfn) -> Self {
        GuestBacking {
            memmap_start,
            granularity,
            zero_on_accept,
            accepted: AtomicU64::new(0),
        }
    }

    /// Bytes of memory accepted (zeroed) so far.
    pub fn accepted_bytes(&self) -> u64 {
        // Relaxed: a statistic.
        self.accepted.load(Ordering::Relaxed)
    }

    /// Whether chunks are zeroed on acceptance.
    pub fn zero_on_accept(&self) -> bool {
        self.zero_on_accept
    }

    /// Zeroes pfns `[start, end)` through the identity map and counts them.
    ///
    /// # Safety
    ///
    /// The pages are RAM below 4 TiB (identity-mapped) that no one holds or will
    /// touch until this returns: usable pages of a chunk being accepted, which the
    /// allocator hands out only after `accept` returns, outside every reserved
    /// range (kernel image, homes, pool) and the section's own memmap block.
    unsafe fn zero(&self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let len = (end - start) * SMALL;
        // SAFETY: the caller's promise: the range is identity-mapped RAM in no
        // one's hands.
        unsafe { core::ptr::write_bytes((start * SMALL) as *mut u8, 0, len as usize) };
        // Relaxed: a statistic.
        self.accepted.fetch_add(len, Ordering::Relaxed);
    }

    fn populate_section(
        &self,
        section: MemmapPiece,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        let fail = |reason| BackingError {
            section: section.section,
            reason,
        };
        if section.memmap_bytes() != HUGE {
            return Err(fail(
                "the guest maps 128 MiB sections (2 MiB of memmap) only",
            ));
        }
        let virt = VMEMMAP_BASE + section.start.0 * 64;
        // The section's first 2 MiB-aligned block of usable memory (the one
        // `own_memmap_block` finds, so `memory::layout` knows which sections need
        // a home), then its page directory if one is needed, right after it.
        if let Ok(block) = pages.take(9) {
            map_huge(virt, block.addr(), pages).map_err(fail)?;
            // The source's pages are recorded as taken: nothing more to say.
            return Ok(Populated::ELSEWHERE);
        }
        // A section whose memory has no whole 2 MiB block: one of the homes set
        // aside for it. The claim protocol calls this once per section, so each
        // home goes to one section. Relaxed: the counter only hands out indices.
        let i = HOMES_USED.fetch_add(1, Ordering::Relaxed);
        if i >= HOMES_SET.load(Ordering::Relaxed) {
            return Err(fail(
                "no 2 MiB of usable memory in the section, and no memmap home left",
            ));
        }
        map_huge(virt, HOMES[i].load(Ordering::Relaxed), pages).map_err(fail)?;
        Ok(Populated::ELSEWHERE)
    }
}

// SAFETY: `descriptors` is the descriptor of the layout's memmap start in a range
// reserved for the memmap alone (PML4 slot 16, mapped by nothing else) that holds
// the descriptors of every pfn below MAX_MEMORY at `VMEMMAP_BASE + pfn * 64` (main
// refuses memory above it); the granularity is
// fixed at creation. Under `Section`, `populate` maps the section's descriptors to
// a 2 MiB page from the page source (usable memory of that very section, which
// the allocator then marks reserved), or to a home block the layout already
// marks reserved and that no other section gets; a new page directory comes from
// the page source too. Under `Chunk`, it maps the chunk's descriptors to the pool
// pages at the same offset, which the layout reserves and no other chunk's
// descriptors use, and takes nothing. Either way no one else ever uses that
// memory. `depopulate` releases nothing itself and keeps every mapping: it
// queues a chunk's pool pages, whose contents the host may then discard (reads
// see zeros, writes work), and `populate` takes a chunk off that queue under the
// queue's lock, which the report holds, so live descriptors are never discarded.
// (A populate drops every queued range it overlaps, merged neighbours included:
// they stay resident, never wrongly discarded.)
unsafe impl MemmapBacking for GuestBacking {
    fn descriptors(&self) -> NonNull<Page> {
        // Descriptors sit at `VMEMMAP_BASE + pfn * 64` from pfn 0; the allocator
        // wants the first memmap pfn's.
        NonNull::new((VMEMMAP_BASE + self.memmap_start.0 * 64) as *mut Page).expect("non-null base")
    }

    fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The memmap lives on guest memory nothing has touched since the host
    /// lent it (or that was reported back to the host since): the first store
    /// to each page has the host zero it, so the rest of the writes find it in
    /// cache.
    fn populate_leaves_memmap_cached(&self) -> bool {
        true
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        _: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        match self.granularity {
            Granularity::Section => self.populate_section(piece, pages),
            Granularity::Chunk => {
                // Its memmap may be queued for the host since it was given back:
                // it is in use again.
                let (start, end) = (piece.start.0 * 64, piece.end.0 * 64);
                let mut released = RELEASED.lock();
                let len = released.len;
                let mut kept = 0;
                for i in 0..len {
                    let r = released.ranges[i];
                    if r.1 <= start || r.0 >= end {
                        released.ranges[kept] = r;
                        kept += 1;
                    }
                }
                released.len = kept;
                drop(released);
                map_small(start, end).map_err(|reason| BackingError {
                    section: piece.section,
                    reason,
                })?;
                Ok(Populated::ELSEWHERE)
            }
        }
    }

    /// Under `memmap=chunk`, queues the chunk's descriptor pages for the host
    /// ([`report_released_memmap`]); they stay mapped. Under sections, keeps the
    /// memmap (the allocator never asks: it lives on the section's own memory, or
    /// a home). Also keeps it when the queue is full even once sorted and merged.
    fn depopulate(&self, piece: MemmapPiece) -> bool {
        if self.granularity != Granularity::Chunk {
            return false;
        }
        let (start, end) = (piece.start.0 * 64, piece.end.0 * 64);
        // Only whole pool pages can be handed to the host.
        if !start.is_multiple_of(SMALL) || !end.is_multiple_of(SMALL) || end <= start {
            return false;
        }
        let mut released = RELEASED.lock();
        let len = released.len;
        if len > 0 && released.ranges[len - 1].1 == start {
            released.ranges[len - 1].1 = end;
            return true;
        }
        if len == MAX_RELEASED && coalesce(&mut released) == MAX_RELEASED {
            return false;
        }
        let len = released.len;
        released.ranges[len] = (start, end);
        released.len += 1;
        true
    }

    fn accept(
        &self,
        chunk: MemmapPiece,
        taken: Range<u64>,
        layout: &Layout,
    ) -> Result<(), BackingError> {
        if !self.zero_on_accept {
            return Ok(());
        }
        // `taken`: the pages of this chunk that hold the section's memmap and the
        // page directory from the page source (descriptors and tables in use):
        // never zero them.
        for run in layout
            .memory_runs(chunk.start..chunk.end)
            .filter(|r| !r.reserved)
        {
            let (start, end) = (run.start.0, run.end.0);
            // SAFETY: the allocator calls `accept` once per chunk, by the holder of
            // its claim, before any of its pages reaches a free list; these runs
            // are the chunk's usable pages (not reserved: no kernel, home or pool
            // page) less `taken` (memmap and page directories), so no one holds
            // them. Guest RAM lies below the
            // 4 TiB the boot tables identity-map (`MAX_MEMORY`).
            unsafe {
                self.zero(start, end.min(taken.start.max(start)));
                self.zero(start.max(taken.end), end);
            }
        }
        Ok(())
    }
}
