//! The host's memmap backing: the descriptor array in reserved address space,
//! committed a section at a time.
//!
//! One section's descriptors (2 MiB for 128 MiB sections) are committed with
//! `MADV_POPULATE_WRITE` over transparent huge pages the first time the allocator
//! initialises that section, so residency grows exactly with initialised sections,
//! and is read back from the OS with `mincore`, not computed.

use std::io;
use std::ptr::NonNull;

use meminit::memmap::{BackingError, MemmapBacking, Populated, SectionPfns};
use meminit::{Layout, Page};

use crate::region::Region;

/// Memmap memory on a host.
pub struct HostBacking {
    region: Region,
}

impl HostBacking {
    /// Reserves address space for the whole memmap of `layout`; commits nothing.
    pub fn new(layout: &Layout) -> io::Result<Self> {
        Ok(HostBacking {
            region: Region::reserve(layout.memmap_bytes())?,
        })
    }

    /// Bytes of memmap resident on the host now.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        self.region.resident_bytes()
    }

    /// Address space reserved for the memmap.
    pub fn reserved_bytes(&self) -> u64 {
        self.region.len() as u64
    }
}

// SAFETY: `descriptors` is the 2 MiB-aligned base of one mapping of at least
// `layout.memmap_bytes()` bytes that lives as long as the backing; `populate` commits
// exactly the section's descriptors and never hands the memory to anyone else; no
// pages of a section are taken.
unsafe impl MemmapBacking for HostBacking {
    fn descriptors(&self) -> NonNull<Page> {
        self.region.base().cast()
    }

    fn populate(&self, section: SectionPfns, _: &Layout) -> Result<Populated, BackingError> {
        let offset = section.start.0 as usize * size_of::<Page>();
        self.region
            .populate(offset, section.memmap_bytes() as usize)
            .map_err(|e| BackingError {
                section: section.index,
                reason: if e.raw_os_error() == Some(libc::ENOMEM) {
                    "the host is out of memory"
                } else {
                    "the host refused to commit memory for the memmap"
                },
            })?;
        Ok(Populated::ELSEWHERE)
    }
}
