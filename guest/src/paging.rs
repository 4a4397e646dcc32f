//! The memmap's virtual range and the backing that maps it, section by section.
//!
//! The memmap lives at [`VMEMMAP_BASE`], indexed by pfn. When meminit first
//! initialises a section, [`GuestBacking::populate`] maps that section's 2 MiB of
//! descriptors with one 2 MiB page taken from the section's own memory (Linux's
//! "memmap on memory"), so a section never used costs no memory at all, and one in
//! use costs exactly one huge page. This module owns the page-table writes.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use meminit::memmap::{BackingError, MemmapBacking, MemmapPiece, Populated};
use meminit::{Layout, Page};

use crate::boot::{PageTable, BOOT_PML4};

/// The memmap's virtual base: PML4 slot 16 (8 TiB), above the identity map.
pub const VMEMMAP_BASE: u64 = 16 << 39;
const PML4_SLOT: usize = 16;
/// Page directories for the memmap: each maps 1 GiB of descriptors (64 GiB of RAM).
const PD_POOL: usize = 64;
const HUGE: u64 = 2 << 20;
const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;

static mut VMEMMAP_PDPT: PageTable = PageTable([0; 512]);
static mut PD_POOL_TABLES: [PageTable; PD_POOL] = [const { PageTable([0; 512]) }; PD_POOL];
static PD_USED: AtomicUsize = AtomicUsize::new(0);
static TABLE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Homes for the memmap of sections that cannot hold their own (see
/// `memory::layout`): physical addresses of 2 MiB blocks reserved in the layout.
const MAX_HOMES: usize = 16;
static HOMES: [AtomicU64; MAX_HOMES] = [const { AtomicU64::new(0) }; MAX_HOMES];
static HOMES_SET: AtomicUsize = AtomicUsize::new(0);
static HOMES_USED: AtomicUsize = AtomicUsize::new(0);

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

/// The first 2 MiB-aligned block of usable memory in section `[start, end)`, as a
/// pfn: where the section's memmap lives if it can hold it itself.
pub fn own_memmap_block(layout: &Layout, start: u64, end: u64) -> Option<u64> {
    let pages = HUGE / 4096;
    layout
        .present_runs(start, end)
        .filter(|r| !r.reserved)
        .find_map(|r| {
            let block = r.start.next_multiple_of(pages);
            (block + pages <= r.end).then_some(block)
        })
}

/// The largest memory the memmap range can describe.
pub const MAX_MEMORY: u64 = PD_POOL as u64 * (64 << 30);

/// Links the memmap's PDPT into the boot PML4. Call once, before any populate.
pub fn init() {
    // SAFETY: single-threaded boot; the PML4 slot is unused by the identity map
    // (slots 0..8), and the PDPT is a static that lives forever.
    unsafe {
        let pdpt = core::ptr::addr_of!(VMEMMAP_PDPT) as u64;
        (*core::ptr::addr_of_mut!(BOOT_PML4)).0[PML4_SLOT] = pdpt | PRESENT_WRITABLE;
    }
}

/// Maps the 2 MiB at virtual `virt` to physical `phys` (both 2 MiB-aligned).
fn map_huge(virt: u64, phys: u64) -> Result<(), &'static str> {
    let offset = virt - VMEMMAP_BASE;
    let pdpt_index = (offset >> 30) as usize;
    let pd_index = ((offset >> 21) & 511) as usize;
    let _guard = TABLE_LOCK.lock();
    // SAFETY: page-table updates are serialised by TABLE_LOCK; the tables are
    // statics; entries only go from not-present to present, so no TLB entry can
    // be stale and no flush is needed.
    unsafe {
        let pdpt = &mut (*core::ptr::addr_of_mut!(VMEMMAP_PDPT)).0;
        if pdpt[pdpt_index] == 0 {
            // Relaxed: TABLE_LOCK orders every use of the pool.
            let n = PD_USED.fetch_add(1, Ordering::Relaxed);
            if n >= PD_POOL {
                return Err("the memmap's page-directory pool is exhausted");
            }
            let pd = core::ptr::addr_of!(PD_POOL_TABLES[n]) as u64;
            pdpt[pdpt_index] = pd | PRESENT_WRITABLE;
        }
        let pd = (pdpt[pdpt_index] & !0xfff) as *mut PageTable;
        (*pd).0[pd_index] = phys | PRESENT_WRITABLE | HUGE_PAGE;
    }
    Ok(())
}

/// Memmap memory in the guest: each section's descriptors on a 2 MiB page of the
/// section itself.
pub struct GuestBacking;

// SAFETY: `descriptors` is the base of a range reserved for the memmap alone (PML4
// slot 16, mapped by nothing else) large enough for MAX_MEMORY; `populate` maps the
// section's descriptors to a 2 MiB page that the layout says is usable memory of
// that very section, which the allocator then marks reserved (`taken`), or to a
// home block the layout already marks reserved and that no other section gets;
// either way no one else ever uses it.
unsafe impl MemmapBacking for GuestBacking {
    fn descriptors(&self) -> NonNull<Page> {
        NonNull::new(VMEMMAP_BASE as *mut Page).expect("non-null base")
    }

    fn populate(&self, section: MemmapPiece, layout: &Layout) -> Result<Populated, BackingError> {
        let fail = |reason| BackingError {
            section: section.section,
            reason,
        };
        if section.memmap_bytes() != HUGE {
            return Err(fail(
                "the guest maps 128 MiB sections (2 MiB of memmap) only",
            ));
        }
        let pages = HUGE / 4096;
        if let Some(block) = own_memmap_block(layout, section.start.0, section.end.0) {
            map_huge(VMEMMAP_BASE + section.start.0 * 64, block * 4096).map_err(fail)?;
            return Ok(Populated {
                taken: block..block + pages,
            });
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
        map_huge(
            VMEMMAP_BASE + section.start.0 * 64,
            HOMES[i].load(Ordering::Relaxed),
        )
        .map_err(fail)?;
        Ok(Populated::ELSEWHERE)
    }
}
