//! Address space reserved but not committed, and what the OS says is resident in it.
//!
//! A [`Region`] is an anonymous private mapping with no swap reservation
//! (`MAP_NORESERVE`), aligned to 2 MiB and advised for transparent huge pages, so a
//! 1 TiB machine costs only the pages that are touched. This module owns every
//! `unsafe` call to the OS in the crate; it knows nothing of descriptors.

use std::io;
use std::ptr::NonNull;

/// The huge-page size the region is aligned to.
pub const HUGE_PAGE: usize = 2 << 20;
const SMALL_PAGE: usize = 4096;

/// An anonymous mapping, reserved but not committed.
pub struct Region {
    /// Start of the aligned range.
    base: NonNull<u8>,
    len: usize,
    /// The whole mapping, for `munmap`.
    mapping: *mut libc::c_void,
    mapping_len: usize,
}

// SAFETY: the region is plain memory; who reads and writes which part of it is the
// business of its users (the memmap invariant, or the simulator's page ownership).
unsafe impl Send for Region {}
// SAFETY: as above; the region's own methods only make system calls on it.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `len` bytes (rounded up to 2 MiB) of address space, to be backed
    /// by transparent huge pages where the host allows them.
    pub fn reserve(len: u64) -> io::Result<Region> {
        Self::reserve_with(len, true)
    }

    /// Reserves `len` bytes (rounded up to 2 MiB) of address space, backed by huge
    /// pages (`MADV_HUGEPAGE`) or by small pages only (`MADV_NOHUGEPAGE`, so that
    /// committing 64 KiB commits 64 KiB and not the 2 MiB around it).
    pub fn reserve_with(len: u64, huge_pages: bool) -> io::Result<Region> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::other("region larger than the address space"))?
            .next_multiple_of(HUGE_PAGE)
            .max(HUGE_PAGE);
        let mapping_len = len + HUGE_PAGE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing
        // aliases nothing.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let offset = (mapping as usize).next_multiple_of(HUGE_PAGE) - mapping as usize;
        // SAFETY: `offset < HUGE_PAGE`, inside the mapping.
        let base = unsafe { mapping.cast::<u8>().add(offset) };
        let region = Region {
            base: NonNull::new(base).expect("mmap returned a null mapping"),
            len,
            mapping,
            mapping_len,
        };
        // Transparent huge pages where the host allows them, or never; a failure
        // only costs speed (or residency), so it is ignored.
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(base.cast(), len, advice) };
        Ok(region)
    }

    /// The first byte.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: at least one huge page is reserved).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Commits `[offset, offset + len)` with writable, zeroed pages, ahead of use:
    /// `MADV_POPULATE_WRITE`, or a write per page where the host kernel lacks it.
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        // Populating only faults pages in; it does not change their contents.
        let Err(err) = self.advise(offset, len, libc::MADV_POPULATE_WRITE) else {
            return Ok(());
        };
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
        // Kernels before 5.14: fault every page in by hand.
        for page in (offset..offset + len).step_by(SMALL_PAGE) {
            // SAFETY: inside the mapping; a volatile read-modify-write of a byte keeps
            // its value, so no user of the region sees a change.
            unsafe {
                let p = self.base.as_ptr().add(page);
                p.write_volatile(p.read_volatile());
            }
        }
        Ok(())
    }

    /// Gives `[offset, offset + len)` back to the OS; it reads as zeroes afterwards.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.advise(offset, len, libc::MADV_DONTNEED)
    }

    /// `madvise(advice)` on `[offset, offset + len)` of the region.
    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: the range is inside our mapping (checked above); the two pieces
        // of advice used here either fault pages in without changing them, or
        // drop pages whose users have stopped using them (`discard`'s contract).
        let rc = unsafe { libc::madvise(self.base.as_ptr().add(offset).cast(), len, advice) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Bytes of the region resident in memory now, page by page (`mincore`).
    pub fn resident_bytes(&self) -> io::Result<u64> {
        const CHUNK: usize = 1 << 30;
        let mut resident = 0u64;
        let mut vec = vec![0u8; CHUNK / SMALL_PAGE];
        for offset in (0..self.len).step_by(CHUNK) {
            let len = CHUNK.min(self.len - offset);
            // SAFETY: the range is inside our mapping and `vec` has one byte per page.
            let rc = unsafe {
                libc::mincore(self.base.as_ptr().add(offset).cast(), len, vec.as_mut_ptr())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            resident += vec[..len / SMALL_PAGE]
                .iter()
                .filter(|&&b| b & 1 != 0)
                .count() as u64;
        }
        Ok(resident * SMALL_PAGE as u64)
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        if offset.checked_add(len).is_some_and(|end| end <= self.len) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "range {offset:#x}+{len:#x} outside a region of {:#x} bytes",
                self.len
            )))
        }
    }

    /// Writes `byte` to `[offset, offset + len)`.
    ///
    /// # Safety
    ///
    /// No one else may read or write that range meanwhile (in the simulator, the
    /// pages belong to a block the caller allocated).
    pub unsafe fn fill(&self, offset: usize, len: usize, byte: u8) {
        assert!(self.check(offset, len).is_ok());
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(offset), byte, len) };
    }

    /// Copies `[from, from + len)` to `[to, to + len)` (the two must not
    /// overlap): what a compaction hook does with a block it moves.
    ///
    /// # Safety
    ///
    /// No one else may write either range, nor read the destination, meanwhile
    /// (in the simulator, both belong to blocks the caller holds).
    pub unsafe fn copy(&self, from: usize, to: usize, len: usize) {
        assert!(self.check(from, len).is_ok() && self.check(to, len).is_ok());
        assert!(from + len <= to || to + len <= from, "overlapping copy");
        let base = self.base.as_ptr();
        // SAFETY: both ranges in bounds and disjoint (asserted); exclusivity is
        // the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(base.add(from), base.add(to), len) };
    }

    /// Writes `value` at `offset` (8-byte aligned).
    ///
    /// # Safety
    ///
    /// As for [`fill`](Self::fill), over those 8 bytes.
    pub unsafe fn write_u64(&self, offset: usize, value: u64) {
        assert!(self.check(offset, 8).is_ok() && offset.is_multiple_of(8));
        // SAFETY: in bounds and aligned (asserted; the base is page-aligned);
        // exclusivity is the caller's promise.
        unsafe { self.base.as_ptr().add(offset).cast::<u64>().write(value) };
    }

    /// Reads the 8 bytes at `offset` (8-byte aligned).
    ///
    /// # Safety
    ///
    /// As for [`is_zeroed`](Self::is_zeroed), over those 8 bytes.
    pub unsafe fn read_u64(&self, offset: usize) -> u64 {
        assert!(self.check(offset, 8).is_ok() && offset.is_multiple_of(8));
        // SAFETY: in bounds, aligned and mapped readable (asserted; the base is
        // page-aligned); no writer meanwhile is the caller's promise.
        unsafe { self.base.as_ptr().add(offset).cast::<u64>().read() }
    }

    /// Whether every byte of `[offset, offset + len)` reads zero. Reading a page
    /// the OS does not hold maps its shared zero page: no memory is committed,
    /// but `mincore` counts the page as resident from then on.
    ///
    /// # Safety
    ///
    /// No one may write that range meanwhile (in the simulator, the pages belong
    /// to a block the caller allocated).
    pub unsafe fn is_zeroed(&self, offset: usize, len: usize) -> bool {
        assert!(self.check(offset, len).is_ok());
        // SAFETY: in bounds (asserted) and mapped readable for the region's life;
        // no writer meanwhile is the caller's promise; bytes have no invalid values.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), len) };
        bytes.iter().all(|&b| b == 0)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `reserve`; nothing borrows it any more.
        unsafe { libc::munmap(self.mapping, self.mapping_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_a_terabyte_commits_nothing() {
        let r = Region::reserve(1 << 40).unwrap();
        assert_eq!(r.resident_bytes().unwrap(), 0);
        r.populate(0, HUGE_PAGE).unwrap();
        let resident = r.resident_bytes().unwrap();
        assert_eq!(resident, HUGE_PAGE as u64);
        // SAFETY: no one else uses the region.
        unsafe { r.fill(4096, 4096, 0x5a) };
        // SAFETY: as above.
        assert!(!unsafe { r.is_zeroed(0, 2 * 4096) });
        r.discard(0, HUGE_PAGE).unwrap();
        assert_eq!(r.resident_bytes().unwrap(), 0);
        // SAFETY: as above.
        assert!(unsafe { r.is_zeroed(0, HUGE_PAGE) });
        assert!(r.populate(r.len(), 1).is_err());
    }
}
