//! Uncached mappings of device registers in memory BARs (MMIO).
//!
//! The boot tables identity-map the first 4 TiB with write-back 1 GiB pages,
//! which is right for RAM and wrong for device registers: a register read must
//! reach the device every time, in program order, and a write must not linger in
//! a cache. This module owns a separate window of virtual addresses (PML4 slot 17,
//! above the identity map and the memmap) in which it maps a device's register
//! ranges with 4 KiB pages marked uncached (PCD | PWT: PAT entry 3, UC under the
//! power-on PAT, which this guest never changes), and hands out [`Mmio`]
//! regions whose accessors are volatile and bounds-checked.
//!
//! It owns the window's page tables (static, in the kernel image) and nothing
//! else: it never unmaps, never maps RAM (the identity map is `boot`'s, the
//! memmap `paging`'s), and it does not know what a register means (that is the
//! driver's). The identity map still covers the same physical pages (write-back,
//! or uncached where the firmware's MTRRs make the 32-bit PCI hole so); drivers
//! reach their registers through this window only.

use core::fmt;

use crate::boot::{PageTable, BOOT_PML4};

/// The window's virtual base: PML4 slot 17 (8.5 TiB).
const PML4_SLOT: usize = 17;
const WINDOW_BASE: u64 = (PML4_SLOT as u64) << 39;
/// Page tables for the window: each maps 2 MiB of registers with 4 KiB pages.
const TABLES: usize = 4;
/// The most the window maps, in all.
const WINDOW_BYTES: u64 = TABLES as u64 * (2 << 20);
const PAGE: u64 = 4096;
/// Present, writable, write-through, cache-disable: uncached (PAT entry 3).
const PRESENT_WRITABLE: u64 = 0x3;
const UNCACHED: u64 = 0x18;

static mut WINDOW_PDPT: PageTable = PageTable([0; 512]);
static mut WINDOW_PD: PageTable = PageTable([0; 512]);
static mut WINDOW_PTS: [PageTable; TABLES] = [const { PageTable([0; 512]) }; TABLES];

/// Bytes of the window handed out so far; the lock serialises every update of
/// the window's tables.
static WINDOW_USED: spin::Mutex<u64> = spin::Mutex::new(0);

/// Why a register range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range is empty or wraps around the address space.
    BadRange { phys: u64, len: u64 },
    /// The window has no room left for it.
    Full { phys: u64, len: u64, left: u64 },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::BadRange { phys, len } => {
                write!(f, "cannot map {len} bytes of registers at {phys:#x}")
            }
            MapError::Full { phys, len, left } => write!(
                f,
                "cannot map {len} bytes of registers at {phys:#x}: the MMIO window has {left} of its {WINDOW_BYTES} bytes left"
            ),
        }
    }
}

/// A device's register range, mapped uncached. Accesses are volatile, of the
/// width asked, naturally aligned, and inside the range (a driver bug otherwise:
/// they panic).
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: *mut u8,
    len: usize,
    phys: u64,
}

impl Mmio {
    /// The physical address of the range's first byte.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Bytes in the range.
    pub fn len(&self) -> usize {
        self.len
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        let size = core::mem::size_of::<T>();
        assert!(
            offset.is_multiple_of(size) && offset + size <= self.len,
            "MMIO access of {size} bytes at offset {offset:#x} of a {:#x}-byte range",
            self.len
        );
        self.base.wrapping_add(offset).cast()
    }

    pub fn read8(&self, offset: usize) -> u8 {
        // SAFETY: inside the range (`at` checks), mapped uncached by `map`, whose
        // caller vouched that it is registers this driver alone drives.
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    pub fn read16(&self, offset: usize) -> u16 {
        // SAFETY: as in `read8`; `at` checks the alignment.
        unsafe { self.at::<u16>(offset).read_volatile() }
    }

    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read16`.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    pub fn write8(&self, offset: usize, value: u8) {
        // SAFETY: as in `read8`: a register write, which the driver means.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }

    pub fn write16(&self, offset: usize, value: u16) {
        // SAFETY: as in `write8`.
        unsafe { self.at::<u16>(offset).write_volatile(value) }
    }

    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `write8`.
        unsafe { self.at::<u32>(offset).write_volatile(value) }
    }
}

/// Maps the `len` bytes of registers at physical `phys` uncached, in whole
/// 4 KiB pages, and returns them as an [`Mmio`] range.
///
/// # Safety
///
/// `[phys, phys + len)` is a device's register range (inside one of its memory
/// BARs, with memory decoding enabled), not RAM, and only the caller's driver
/// accesses it: the returned [`Mmio`] reads and writes it without further checks
/// than its bounds.
pub unsafe fn map(phys: u64, len: u64) -> Result<Mmio, MapError> {
    let bad = MapError::BadRange { phys, len };
    let end = phys.checked_add(len).ok_or(bad)?;
    if len == 0 || end > 1 << 52 {
        return Err(bad);
    }
    let first = phys & !(PAGE - 1);
    let bytes = end.next_multiple_of(PAGE) - first;
    let mut used = WINDOW_USED.lock();
    if bytes > WINDOW_BYTES - *used {
        return Err(MapError::Full {
            phys,
            len,
            left: WINDOW_BYTES - *used,
        });
    }
    let offset = *used;
    // SAFETY: the window's tables are statics written only here, under
    // WINDOW_USED's lock, which we hold; PML4 slot 17 belongs to this window
    // alone (the identity map uses slots 0..8, the memmap slot 16). The pages
    // mapped are the caller's registers (`map`'s contract), at virtual addresses
    // no one has been given before (the window only grows). Entries only go from
    // not-present to present, so no TLB entry is stale and no flush is needed,
    // on this CPU or another (all share the boot PML4).
    unsafe {
        let pml4 = &mut (*core::ptr::addr_of_mut!(BOOT_PML4)).0;
        let pdpt = &mut (*core::ptr::addr_of_mut!(WINDOW_PDPT)).0;
        let pd = &mut (*core::ptr::addr_of_mut!(WINDOW_PD)).0;
        let pts = &mut *core::ptr::addr_of_mut!(WINDOW_PTS);
        if pml4[PML4_SLOT] == 0 {
            pdpt[0] = core::ptr::addr_of!(WINDOW_PD) as u64 | PRESENT_WRITABLE;
            for (entry, pt) in pd.iter_mut().zip(pts.iter()) {
                *entry = pt as *const PageTable as u64 | PRESENT_WRITABLE;
            }
            pml4[PML4_SLOT] = core::ptr::addr_of!(WINDOW_PDPT) as u64 | PRESENT_WRITABLE;
        }
        let mut page = 0;
        while page < bytes {
            let index = ((offset + page) / PAGE) as usize;
            pts[index / 512].0[index % 512] = (first + page) | PRESENT_WRITABLE | UNCACHED;
            page += PAGE;
        }
    }
    *used += bytes;
    Ok(Mmio {
        base: (WINDOW_BASE + offset + (phys - first)) as *mut u8,
        len: len as usize,
        phys,
    })
}
