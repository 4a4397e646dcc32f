//! The memmap's virtual range and the backing that maps it, section by section.
//!
//! The memmap lives at [`VMEMMAP_BASE`], indexed by pfn. When meminit first
//! initialises a section, [`GuestBacking::populate`] maps that section's 2 MiB of
//! descriptors with one 2 MiB page taken from the section's own memory (Linux's
//! "memmap on memory"), so a section never used costs no memory at all, and one in
//! use costs exactly one huge page. This module owns the page-table writes.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use meminit::memmap::{BackingError, MemmapBacking, Populated, SectionPfns};
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
// that very section, which the allocator then marks reserved (`taken`), so no one
// else ever uses it.
unsafe impl MemmapBacking for GuestBacking {
    fn descriptors(&self) -> NonNull<Page> {
        NonNull::new(VMEMMAP_BASE as *mut Page).expect("non-null base")
    }

    fn populate(&self, section: SectionPfns, layout: &Layout) -> Result<Populated, BackingError> {
        let fail = |reason| BackingError {
            section: section.index,
            reason,
        };
        if section.memmap_bytes() != HUGE {
            return Err(fail(
                "the guest maps 128 MiB sections (2 MiB of memmap) only",
            ));
        }
        let pages = HUGE / 4096;
        let block = layout
            .present_runs(section.start.0, section.end.0)
            .filter(|r| !r.reserved)
            .find_map(|r| {
                let start = r.start.next_multiple_of(pages);
                (start + pages <= r.end).then_some(start)
            })
            .ok_or(fail(
                "no 2 MiB of usable memory in the section to hold its memmap",
            ))?;
        map_huge(VMEMMAP_BASE + section.start.0 * 64, block * 4096).map_err(fail)?;
        Ok(Populated {
            taken: block..block + pages,
        })
    }
}
