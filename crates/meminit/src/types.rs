//! The vocabulary every layer shares: page frame numbers, node ids, zone types,
//! the calling CPU, and the architecture's constants.
//!
//! Plain values only: this module owns no state, touches no descriptor and depends
//! on no other module of the crate, so that every other module may use it.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The page size in bytes (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Physical addresses must fit in this many bits (x86-64's architectural limit).
pub const PHYS_ADDR_BITS: u32 = 52;
/// The highest NUMA node id plus one that a layout accepts.
pub const MAX_NODES: usize = 16;
/// The largest buddy order: blocks of 2^10 pages (4 MiB), as in Linux.
pub const MAX_ORDER: u32 = 10;
/// log2 of the pages in a pageblock (2 MiB).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Bytes per page descriptor (Linux's `struct page`).
pub const DESCRIPTOR_SIZE: u64 = 64;
/// One past the highest pfn the physical address space holds.
pub const MAX_PFN: u64 = 1 << (PHYS_ADDR_BITS - PAGE_SHIFT);

/// A physical frame number: a physical address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame holding physical address `addr` (rounded down).
    pub const fn containing(addr: u64) -> Pfn {
        Pfn(addr >> PAGE_SHIFT)
    }

    /// The frame that starts at physical address `addr`, or `None` if `addr` is not
    /// page-aligned.
    pub const fn from_addr(addr: u64) -> Option<Pfn> {
        if addr % PAGE_SIZE == 0 {
            Some(Pfn(addr >> PAGE_SHIFT))
        } else {
            None
        }
    }

    /// The frame `pages` frames further on, or `None` if that overflows.
    pub const fn checked_add(self, pages: u64) -> Option<Pfn> {
        match self.0.checked_add(pages) {
            Some(pfn) => Some(Pfn(pfn)),
            None => None,
        }
    }

    /// The frame `pages` frames further on, or [`Pfn`]`(u64::MAX)` if that
    /// overflows.
    pub const fn saturating_add(self, pages: u64) -> Pfn {
        Pfn(self.0.saturating_add(pages))
    }

    /// Frames from `self` up to `end` (zero if `end` is not above it).
    pub const fn pages_to(self, end: Pfn) -> u64 {
        end.0.saturating_sub(self.0)
    }

    /// The physical address of the frame's first byte; `u64::MAX`, which no frame
    /// has, for a pfn whose address does not fit in 64 bits.
    pub const fn addr(self) -> u64 {
        match self.checked_addr() {
            Some(addr) => addr,
            None => u64::MAX,
        }
    }

    /// The physical address of the frame's first byte, or `None` if it does not fit
    /// in 64 bits.
    pub const fn checked_addr(self) -> Option<u64> {
        if self.0 > u64::MAX >> PAGE_SHIFT {
            None
        } else {
            Some(self.0 << PAGE_SHIFT)
        }
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// A NUMA node id. A layout accepts ids below [`MAX_NODES`]; the type is wider
/// (32 bits, as ACPI's proximity domains) so that a memory map naming a larger id
/// can be carried to [`LayoutBuilder::build`](crate::LayoutBuilder::build) and refused there by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The id as an index (into per-node arrays of [`MAX_NODES`] entries, once
    /// checked against it).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// What an allocation says about its memory's lifetime (Linux's migrate types,
/// the two that matter for giving memory back). Chosen with
/// [`AllocFlags::MOVABLE`](crate::AllocFlags::MOVABLE); unmovable is the default.
///
/// A chunk serves one class while any of its pages is off the free lists, so
/// that the short-lived (movable) pages of a workload and its long-lived
/// (unmovable) ones fill different chunks, and a chunk whose movable pages were
/// all freed is wholly free again, to be given back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MobilityClass {
    /// Kernel objects, page tables: nothing can move them. The default.
    #[default]
    Unmovable = 0,
    /// Memory whose contents the embedder can move (through its compaction
    /// hook), or short-lived user data.
    Movable = 1,
}

/// The number of [`MobilityClass`]es.
pub const CLASSES: usize = 2;

impl MobilityClass {
    /// Every class, in index order.
    pub const ALL: [MobilityClass; CLASSES] = [MobilityClass::Unmovable, MobilityClass::Movable];

    /// The other class: where an allocation steals from when its own class, the
    /// wholly free chunks and growth are exhausted.
    #[inline]
    pub const fn other(self) -> MobilityClass {
        match self {
            MobilityClass::Unmovable => MobilityClass::Movable,
            MobilityClass::Movable => MobilityClass::Unmovable,
        }
    }
}

/// The zones of a node, as on x86-64 Linux.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ZoneType {
    /// Below 16 MiB (ISA DMA).
    Dma = 0,
    /// Below 4 GiB (32-bit DMA).
    Dma32 = 1,
    /// Everything else.
    Normal = 2,
}

/// The number of zone types per node.
pub const ZONE_TYPES: usize = 3;

impl ZoneType {
    /// All zone types, lowest first.
    pub const ALL: [ZoneType; ZONE_TYPES] = [ZoneType::Dma, ZoneType::Dma32, ZoneType::Normal];

    /// Linux's name for the zone.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
        }
    }

    /// First pfn the zone may hold.
    pub const fn lowest_pfn(self) -> Pfn {
        Pfn(match self {
            ZoneType::Dma => 0,
            ZoneType::Dma32 => DMA_END_PFN,
            ZoneType::Normal => DMA32_END_PFN,
        })
    }

    /// One past the last pfn the zone may hold.
    pub const fn highest_pfn(self) -> Pfn {
        Pfn(match self {
            ZoneType::Dma => DMA_END_PFN,
            ZoneType::Dma32 => DMA32_END_PFN,
            ZoneType::Normal => MAX_PFN,
        })
    }

    /// The zone that holds `pfn`.
    pub const fn of_pfn(pfn: Pfn) -> ZoneType {
        let pfn = pfn.0;
        if pfn < DMA_END_PFN {
            ZoneType::Dma
        } else if pfn < DMA32_END_PFN {
            ZoneType::Dma32
        } else {
            ZoneType::Normal
        }
    }

    pub(crate) const fn from_index(i: usize) -> ZoneType {
        match i {
            0 => ZoneType::Dma,
            1 => ZoneType::Dma32,
            _ => ZoneType::Normal,
        }
    }
}

const DMA_END_PFN: u64 = (16 << 20) >> PAGE_SHIFT;
const DMA32_END_PFN: u64 = (4 << 30) >> PAGE_SHIFT;

/// Which zones an allocation may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Constraint {
    /// Any zone: Normal first, then DMA32, then DMA.
    Any = 0,
    /// Below 4 GiB: DMA32, then DMA.
    Dma32 = 1,
    /// Below 16 MiB: DMA only.
    Dma = 2,
}

impl Constraint {
    /// The highest zone the constraint allows.
    pub const fn highest_zone(self) -> ZoneType {
        match self {
            Constraint::Any => ZoneType::Normal,
            Constraint::Dma32 => ZoneType::Dma32,
            Constraint::Dma => ZoneType::Dma,
        }
    }
}

/// Which CPU is calling: an index into the caches lent to
/// [`crate::Allocator::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuId(pub u32);

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}", self.0)
    }
}
