//! Memory map → layout: nodes, zones and sections, validated.
//!
//! This module owns the translation of a firmware-style memory map (byte ranges of
//! usable, reserved and other memory, each on a NUMA node) into the page-granular
//! facts the allocator runs on: which pages are *present*, which node and zone each
//! belongs to, and how the physical address space is cut into sections. It counts
//! spanned and present pages per node and zone exactly as Linux does for the same
//! ranges, so the two can be compared line by line.
//!
//! It holds no state that changes after [`LayoutBuilder::build`], touches no
//! descriptor, and allocates nothing: a [`Layout`] is a plain value of fixed size.

use core::fmt;
use core::ops::Range;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The page size in bytes (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Physical addresses must fit in this many bits (x86-64's architectural limit).
pub const PHYS_ADDR_BITS: u32 = 52;
/// The highest NUMA node id plus one that a layout accepts.
pub const MAX_NODES: usize = 16;
/// The most ranges a memory map may have (Linux's e820 table holds 128, plus room
/// for ranges split by NUMA affinity).
pub const MAX_RANGES: usize = 256;
/// The largest buddy order: blocks of 2^10 pages (4 MiB), as in Linux.
pub const MAX_ORDER: u32 = 10;
/// log2 of the pages in a pageblock (2 MiB).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// The default section size in bytes: 128 MiB, 2^15 pages, as on x86-64 Linux.
pub const DEFAULT_SECTION_SIZE: u64 = 128 << 20;
/// The smallest section: one max-order block, so that a block and its buddy always
/// share a section.
pub const MIN_SECTION_SIZE: u64 = PAGE_SIZE << MAX_ORDER;
/// One past the highest pfn the physical address space holds.
pub const MAX_PFN: u64 = 1 << (PHYS_ADDR_BITS - PAGE_SHIFT);
/// The most runs of present pages a layout holds: a reserved range inside a usable
/// one splits it in three, so `MAX_RANGES` input ranges give fewer than twice as many.
const MAX_PRESENT: usize = 2 * MAX_RANGES;

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
/// can be carried to [`LayoutBuilder::build`] and refused there by name.
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

/// What a range of the memory map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// RAM the allocator manages. Shrinks inward to whole pages.
    Usable,
    /// RAM that is present but already in use before the allocator starts (the kernel
    /// image, an initrd, firmware tables kept in RAM). Counted as present, given
    /// reserved descriptors, never handed out. Grows outward to whole pages. It may
    /// stand on its own or lie inside usable ranges (and other reserved ranges) of
    /// its node, as Linux's memblock reservations lie inside memory: the pages it
    /// covers are reserved, the rest stay usable.
    Reserved,
    /// Not RAM at all (e820 `reserved`, ACPI, MMIO, holes). Not present; pages of it
    /// that share a section with RAM get reserved descriptors.
    Other,
}

impl RangeKind {
    /// The word used in messages and in the JSON memory-map format.
    pub const fn name(self) -> &'static str {
        match self {
            RangeKind::Usable => "usable",
            RangeKind::Reserved => "reserved",
            RangeKind::Other => "other",
        }
    }
}

/// One entry of a memory map: the half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the range holds.
    pub kind: RangeKind,
    /// The NUMA node it belongs to.
    pub node: NodeId,
}

impl MemoryRange {
    /// A range of `kind` on `node` covering bytes `[start, end)`.
    pub const fn new(start: u64, end: u64, kind: RangeKind, node: NodeId) -> Self {
        MemoryRange {
            start,
            end,
            kind,
            node,
        }
    }
}

impl fmt::Display for MemoryRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, {:#x}) {} on {}",
            self.start,
            self.end,
            self.kind.name(),
            self.node
        )
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

/// Why a memory map was refused. Each variant names the offending range by its
/// position in the input (counting from 0) and its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// More than [`MAX_RANGES`] ranges were given.
    TooManyRanges {
        /// The limit.
        max: usize,
    },
    /// `start == end`.
    Empty {
        /// Position in the input.
        index: usize,
        /// The range.
        range: MemoryRange,
    },
    /// `start > end`.
    Inverted {
        /// Position in the input.
        index: usize,
        /// The range.
        range: MemoryRange,
    },
    /// The range ends above 2^[`PHYS_ADDR_BITS`].
    BeyondArchLimit {
        /// Position in the input.
        index: usize,
        /// The range.
        range: MemoryRange,
    },
    /// The node id is [`MAX_NODES`] or more.
    TooManyNodes {
        /// Position in the input.
        index: usize,
        /// The range.
        range: MemoryRange,
    },
    /// Two ranges share bytes, and they may not: two usable ranges, or an `other`
    /// range and any other. (A reserved range may overlap usable and reserved
    /// ranges of its own node.)
    Overlap {
        /// Position of the range that starts first.
        first_index: usize,
        /// The range that starts first.
        first: MemoryRange,
        /// Position of the range that starts inside it.
        second_index: usize,
        /// The range that starts inside it.
        second: MemoryRange,
    },
    /// A reserved range overlaps a usable or reserved range of another node.
    NodeConflict {
        /// Position of the range that starts first.
        first_index: usize,
        /// The range that starts first.
        first: MemoryRange,
        /// Position of the range that starts inside it.
        second_index: usize,
        /// The range that starts inside it.
        second: MemoryRange,
    },
    /// No whole usable page remains once usable ranges are shrunk to page boundaries.
    NoUsableMemory,
    /// The section size is not a power of two, or is smaller than one max-order block
    /// ([`MIN_SECTION_SIZE`]), or larger than the physical address space.
    BadSectionSize {
        /// The size asked for, in bytes.
        bytes: u64,
    },
}

impl core::error::Error for LayoutError {}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooManyRanges { max } => {
                write!(f, "the memory map has more than {max} ranges")
            }
            LayoutError::Empty { index, range } => {
                write!(f, "range #{index} {range} is empty")
            }
            LayoutError::Inverted { index, range } => {
                write!(f, "range #{index} {range} ends before it starts")
            }
            LayoutError::BeyondArchLimit { index, range } => write!(
                f,
                "range #{index} {range} ends above the {PHYS_ADDR_BITS}-bit physical address limit"
            ),
            LayoutError::TooManyNodes { index, range } => write!(
                f,
                "range #{index} {range} names {}, but at most {MAX_NODES} nodes (0..{}) are supported",
                range.node,
                MAX_NODES - 1
            ),
            LayoutError::Overlap {
                first_index,
                first,
                second_index,
                second,
            } => write!(
                f,
                "range #{second_index} {second} overlaps range #{first_index} {first}"
            ),
            LayoutError::NodeConflict {
                first_index,
                first,
                second_index,
                second,
            } => write!(
                f,
                "range #{second_index} {second} overlaps range #{first_index} {first}, which is on another node"
            ),
            LayoutError::NoUsableMemory => {
                write!(f, "the memory map has no whole page of usable memory")
            }
            LayoutError::BadSectionSize { bytes } => write!(
                f,
                "section size {bytes:#x} must be a power of two between {MIN_SECTION_SIZE:#x} (one max-order block) and 2^{PHYS_ADDR_BITS}"
            ),
        }
    }
}

/// Collects a memory map, then validates it into a [`Layout`].
///
/// ```
/// use meminit::layout::{LayoutBuilder, NodeId, RangeKind};
/// let mut map = LayoutBuilder::new();
/// map.add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
///    .add(0x100000, 0x8000_0000, RangeKind::Usable, NodeId(0));
/// let layout = map.build().unwrap();
/// assert_eq!(layout.present_pages(), 0x9e + 0x7ff00);
/// ```
#[derive(Clone)]
pub struct LayoutBuilder {
    ranges: [MemoryRange; MAX_RANGES],
    len: usize,
    overflowed: bool,
    section_size: u64,
}

impl Default for LayoutBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayoutBuilder {
    /// An empty map with the default section size.
    pub const fn new() -> Self {
        LayoutBuilder {
            ranges: [MemoryRange::new(0, 0, RangeKind::Other, NodeId(0)); MAX_RANGES],
            len: 0,
            overflowed: false,
            section_size: DEFAULT_SECTION_SIZE,
        }
    }

    /// Sets the section size in bytes (checked by [`build`](Self::build)).
    pub fn section_size(&mut self, bytes: u64) -> &mut Self {
        self.section_size = bytes;
        self
    }

    /// Adds the byte range `[start, end)`. Ranges may come in any order; all checks
    /// happen in [`build`](Self::build).
    pub fn add(&mut self, start: u64, end: u64, kind: RangeKind, node: NodeId) -> &mut Self {
        self.push(MemoryRange::new(start, end, kind, node))
    }

    /// Adds one range.
    pub fn push(&mut self, range: MemoryRange) -> &mut Self {
        if self.len == MAX_RANGES {
            self.overflowed = true;
        } else {
            self.ranges[self.len] = range;
            self.len += 1;
        }
        self
    }

    /// The ranges added so far, in input order.
    pub fn ranges(&self) -> &[MemoryRange] {
        &self.ranges[..self.len]
    }

    /// Validates the map and computes the layout.
    ///
    /// Ranges may not overlap, except that a reserved range may overlap usable and
    /// reserved ranges of its own node (a reservation inside memory); its pages are
    /// then reserved and the rest of the usable range stays usable. Every refusal is
    /// a [`LayoutError`] naming the ranges by position.
    pub fn build(&self) -> Result<Layout, LayoutError> {
        let mut layout = Layout::empty(0);
        self.build_into(&mut layout)?;
        Ok(layout)
    }

    /// [`build`](Self::build), into `layout`, whatever it held: no layout-sized
    /// value is made on the stack, for start-up on a small stack (see
    /// [`crate::Allocator::build_in_place`]). On error, `layout` holds either what
    /// it held before or no memory at all.
    pub fn build_into(&self, layout: &mut Layout) -> Result<(), LayoutError> {
        if self.overflowed {
            return Err(LayoutError::TooManyRanges { max: MAX_RANGES });
        }
        let section_size = self.section_size;
        if !section_size.is_power_of_two()
            || !(MIN_SECTION_SIZE..=1 << PHYS_ADDR_BITS).contains(&section_size)
        {
            return Err(LayoutError::BadSectionSize {
                bytes: section_size,
            });
        }
        let input = self.ranges();
        for (index, &range) in input.iter().enumerate() {
            if range.start == range.end {
                return Err(LayoutError::Empty { index, range });
            }
            if range.start > range.end {
                return Err(LayoutError::Inverted { index, range });
            }
            if range.end > 1 << PHYS_ADDR_BITS {
                return Err(LayoutError::BeyondArchLimit { index, range });
            }
            if range.node.index() >= MAX_NODES {
                return Err(LayoutError::TooManyNodes { index, range });
            }
        }

        // Sort positions by start address. Each range is checked against every
        // earlier one that reaches past its start: usable and reserved RAM may
        // overlap (a reservation inside memory), if on one node; nothing else may.
        let mut order = [0u16; MAX_RANGES];
        for (i, slot) in order[..input.len()].iter_mut().enumerate() {
            // `input.len() <= MAX_RANGES`, which fits in u16.
            *slot = i as u16;
        }
        let order = &mut order[..input.len()];
        order.sort_unstable_by_key(|&i| (input[i as usize].start, i));
        for (at, &i) in order.iter().enumerate() {
            let second_index = i as usize;
            let second = input[second_index];
            for &j in &order[..at] {
                let first_index = j as usize;
                let first = input[first_index];
                if first.end <= second.start {
                    continue;
                }
                let ram_in_ram = matches!(
                    (first.kind, second.kind),
                    (RangeKind::Usable, RangeKind::Reserved)
                        | (RangeKind::Reserved, RangeKind::Usable)
                        | (RangeKind::Reserved, RangeKind::Reserved)
                );
                if !ram_in_ram {
                    return Err(LayoutError::Overlap {
                        first_index,
                        first,
                        second_index,
                        second,
                    });
                }
                if first.node != second.node {
                    return Err(LayoutError::NodeConflict {
                        first_index,
                        first,
                        second_index,
                        second,
                    });
                }
            }
        }

        // The present pages: usable ranges shrunk inward to whole pages, reserved
        // ranges grown outward. A page any reserved range touches is reserved; where
        // two ranges of different nodes share a page (only possible at their
        // rounded ends), the one that starts first has it. Walk the page
        // boundaries of all ranges in address order and classify each piece.
        let pages = |range: &MemoryRange| match range.kind {
            RangeKind::Usable => Some((range.start.div_ceil(PAGE_SIZE), range.end / PAGE_SIZE)),
            RangeKind::Reserved => Some((range.start / PAGE_SIZE, range.end.div_ceil(PAGE_SIZE))),
            RangeKind::Other => None,
        };
        layout.reset(section_size.trailing_zeros() - PAGE_SHIFT);
        let mut cursor = input
            .iter()
            .filter_map(pages)
            .filter(|(s, e)| s < e)
            .map(|(s, _)| s)
            .min();
        while let Some(at) = cursor {
            let next = input
                .iter()
                .filter_map(pages)
                .filter(|(s, e)| s < e)
                .flat_map(|(s, e)| [s, e])
                .filter(|&b| b > at)
                .min();
            let Some(next) = next else { break };
            let covering = |kind| {
                order
                    .iter()
                    .map(|&i| &input[i as usize])
                    .filter(|r| r.kind == kind)
                    .find(|r| pages(r).is_some_and(|(s, e)| s <= at && at < e))
            };
            if let Some(r) = covering(RangeKind::Reserved) {
                // `r.node` was checked below MAX_NODES (16) above: it fits in u8.
                layout.push_present(at, next, r.node.0 as u8, true);
            } else if let Some(r) = covering(RangeKind::Usable) {
                layout.push_present(at, next, r.node.0 as u8, false);
            }
            cursor = Some(next);
        }
        if layout.usable_pages() == 0 {
            layout.reset(layout.section_shift);
            return Err(LayoutError::NoUsableMemory);
        }
        layout.compute_spans();
        Ok(())
    }
}

/// A run of present pages on one node, reserved or not: pfns `[start, end)`, both
/// at most [`MAX_PFN`] (2^40), so the node and the reserved flag ride in the top
/// bits of `tagged_end` and a run takes 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PresentRange {
    start: u64,
    tagged_end: u64,
}

impl PresentRange {
    const NODE_SHIFT: u32 = 48;
    const RESERVED: u64 = 1 << 63;
    const END_MASK: u64 = (1 << Self::NODE_SHIFT) - 1;

    const fn new(start: u64, end: u64, node: u8, reserved: bool) -> Self {
        PresentRange {
            start,
            tagged_end: end
                | (node as u64) << Self::NODE_SHIFT
                | if reserved { Self::RESERVED } else { 0 },
        }
    }

    const fn end(&self) -> u64 {
        self.tagged_end & Self::END_MASK
    }

    const fn node(&self) -> u8 {
        (self.tagged_end >> Self::NODE_SHIFT) as u8
    }

    const fn reserved(&self) -> bool {
        self.tagged_end & Self::RESERVED != 0
    }

    const fn pages(&self) -> u64 {
        self.end() - self.start
    }
}

impl fmt::Debug for PresentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentRange")
            .field("start", &self.start)
            .field("end", &self.end())
            .field("node", &self.node())
            .field("reserved", &self.reserved())
            .finish()
    }
}

/// Spanned and present pages of one zone of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneSpan {
    /// First pfn of the zone's span (Linux's `zone_start_pfn`).
    pub start_pfn: Pfn,
    /// One past the last pfn of the span.
    pub end_pfn: Pfn,
    /// Present pages: usable and reserved RAM in the span.
    pub present: u64,
    /// Present pages that the memory map marks reserved.
    pub reserved: u64,
}

impl ZoneSpan {
    /// Pages spanned, holes included (Linux's `spanned_pages`).
    pub const fn spanned(&self) -> u64 {
        self.start_pfn.pages_to(self.end_pfn)
    }
}

/// The span of one node and its zones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSpan {
    /// First present pfn of the node.
    pub start_pfn: Pfn,
    /// One past its last present pfn.
    pub end_pfn: Pfn,
    /// Present pages on the node.
    pub present: u64,
    /// Its zones, indexed by [`ZoneType`].
    pub zones: [ZoneSpan; ZONE_TYPES],
}

/// A run of present pages inside one node and one zone, as returned by
/// [`Layout::present_runs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresentRun {
    /// First pfn.
    pub start: Pfn,
    /// One past the last pfn.
    pub end: Pfn,
    /// Node of the run.
    pub node: NodeId,
    /// Zone of the run.
    pub zone: ZoneType,
    /// Whether the memory map marks these pages reserved.
    pub reserved: bool,
}

/// A validated memory map: present pages, nodes, zones and sections.
#[derive(Clone)]
pub struct Layout {
    present: [PresentRange; MAX_PRESENT],
    len: usize,
    nodes: [NodeSpan; MAX_NODES],
    node_count: usize,
    section_shift: u32,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("present", &&self.present[..self.len])
            .field("nodes", &&self.nodes[..self.node_count])
            .field("section_shift", &self.section_shift)
            .finish()
    }
}

/// The empty layout, to copy into place before [`LayoutBuilder::build_into`].
pub(crate) static EMPTY_LAYOUT: Layout = Layout::empty(0);

impl Layout {
    const fn empty(section_shift: u32) -> Self {
        Layout {
            present: [PresentRange::new(0, 0, 0, false); MAX_PRESENT],
            len: 0,
            nodes: [NodeSpan {
                start_pfn: Pfn(0),
                end_pfn: Pfn(0),
                present: 0,
                zones: [ZoneSpan {
                    start_pfn: Pfn(0),
                    end_pfn: Pfn(0),
                    present: 0,
                    reserved: 0,
                }; ZONE_TYPES],
            }; MAX_NODES],
            node_count: 0,
            section_shift,
        }
    }

    /// Makes this the empty layout of sections of `2^section_shift` pages, in
    /// place.
    fn reset(&mut self, section_shift: u32) {
        self.len = 0;
        self.node_count = 0;
        for node in &mut self.nodes {
            *node = NodeSpan::default();
        }
        self.section_shift = section_shift;
    }

    /// Appends pages `[start, end)`, which begin at or above the end of the last
    /// run, merging with it where they continue it.
    fn push_present(&mut self, start: u64, end: u64, node: u8, reserved: bool) {
        if let Some(last) = self.len.checked_sub(1).map(|n| &mut self.present[n]) {
            if last.end() == start && last.node() == node && last.reserved() == reserved {
                *last = PresentRange::new(last.start, end, node, reserved);
                return;
            }
        }
        // `build` pushes one run per piece between two of the (at most
        // 2 * MAX_RANGES) page boundaries of its ranges, fewer than MAX_PRESENT.
        self.present[self.len] = PresentRange::new(start, end, node, reserved);
        self.len += 1;
    }

    fn compute_spans(&mut self) {
        for r in &self.present[..self.len] {
            let n = &mut self.nodes[r.node() as usize];
            if n.present == 0 {
                n.start_pfn = Pfn(r.start);
            }
            n.start_pfn = n.start_pfn.min(Pfn(r.start));
            n.end_pfn = n.end_pfn.max(Pfn(r.end()));
            n.present += r.pages();
            self.node_count = self.node_count.max(r.node() as usize + 1);
        }
        for node in &mut self.nodes[..self.node_count] {
            if node.present == 0 {
                continue;
            }
            for zt in ZoneType::ALL {
                let z = &mut node.zones[zt as usize];
                z.start_pfn = node.start_pfn.clamp(zt.lowest_pfn(), zt.highest_pfn());
                z.end_pfn = node.end_pfn.clamp(zt.lowest_pfn(), zt.highest_pfn());
            }
        }
        let mut counts = [[(0u64, 0u64); ZONE_TYPES]; MAX_NODES];
        for run in self.present_runs(Pfn(0)..Pfn(u64::MAX)) {
            let (present, reserved) = &mut counts[run.node.index()][run.zone as usize];
            *present += run.pages();
            if run.reserved {
                *reserved += run.pages();
            }
        }
        for (node, counts) in self.nodes.iter_mut().zip(counts) {
            for (zone, (present, reserved)) in node.zones.iter_mut().zip(counts) {
                zone.present = present;
                zone.reserved = reserved;
            }
        }
    }

    /// log2 of the pages in a section.
    pub const fn section_shift(&self) -> u32 {
        self.section_shift
    }

    /// Pages in a section.
    pub const fn section_pages(&self) -> u64 {
        1 << self.section_shift
    }

    /// The sections the memmap covers, as absolute section numbers (section `i`
    /// holds pfns `i * section_pages()..`): from the first section with present
    /// memory to the last. Section numbers in the crate's API ([`Layout::section_pfns`],
    /// [`crate::MemmapPiece::section`], [`crate::BackingError::section`]) are
    /// absolute; the section slots lent to the allocator are indexed from the
    /// first of these (slot `i` holds section `memmap_sections().start + i`).
    pub fn memmap_sections(&self) -> Range<usize> {
        let Some(first) = self.present[..self.len].first() else {
            return 0..0;
        };
        let end = self.end_pfn().0.div_ceil(self.section_pages());
        // Below MAX_PFN (2^40) >> section_shift: fits in usize on 64-bit targets, and
        // saturates (never wraps) elsewhere.
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        to_usize(first.start >> self.section_shift)..to_usize(end)
    }

    /// The first pfn the memmap describes: the first pfn of the first section with
    /// present memory. [`crate::MemmapBacking::descriptors`] points at its
    /// descriptor.
    pub fn memmap_start(&self) -> Pfn {
        Pfn((self.memmap_sections().start as u64) << self.section_shift)
    }

    /// The number of sections the memmap covers ([`Layout::memmap_sections`]): the
    /// length of the section-slot table, and of the memmap, in sections.
    pub fn section_count(&self) -> usize {
        self.memmap_sections().len()
    }

    /// Descriptors in the memmap: one per pfn of the sections it covers, from
    /// [`Layout::memmap_start`].
    pub fn memmap_descriptors(&self) -> u64 {
        self.section_count() as u64 * self.section_pages()
    }

    /// Bytes of address space the memmap spans (most of it never populated under
    /// the lazy strategies).
    pub fn memmap_bytes(&self) -> u64 {
        self.memmap_descriptors() * crate::page::DESCRIPTOR_SIZE
    }

    /// The pfns of section `index`; for a section beyond the physical address
    /// space (`index` at or above `MAX_PFN / section_pages()`), the empty range
    /// `MAX_PFN..MAX_PFN`.
    pub const fn section_pfns(&self, index: usize) -> Range<Pfn> {
        if index as u64 >= MAX_PFN >> self.section_shift {
            return Pfn(MAX_PFN)..Pfn(MAX_PFN);
        }
        let start = (index as u64) << self.section_shift;
        Pfn(start)..Pfn(start + self.section_pages())
    }

    /// The section that holds `pfn` (`usize::MAX` if that index does not fit in a
    /// `usize`, which happens only on targets narrower than 64 bits).
    pub const fn section_of(&self, pfn: Pfn) -> usize {
        let index = pfn.0 >> self.section_shift;
        if index > usize::MAX as u64 {
            usize::MAX
        } else {
            index as usize
        }
    }

    /// One past the highest present pfn.
    pub fn end_pfn(&self) -> Pfn {
        Pfn(self.present[..self.len].last().map_or(0, PresentRange::end))
    }

    /// Present pages on all nodes.
    pub fn present_pages(&self) -> u64 {
        self.present[..self.len]
            .iter()
            .map(PresentRange::pages)
            .sum()
    }

    /// Present pages that are not reserved.
    pub fn usable_pages(&self) -> u64 {
        self.present[..self.len]
            .iter()
            .filter(|r| !r.reserved())
            .map(PresentRange::pages)
            .sum()
    }

    /// The highest node id plus one.
    pub const fn node_count(&self) -> usize {
        self.node_count
    }

    /// Node `node`'s span, or `None` if it has no present pages.
    pub fn node(&self, node: NodeId) -> Option<&NodeSpan> {
        self.nodes[..self.node_count]
            .get(node.index())
            .filter(|n| n.present > 0)
    }

    /// The nodes that have present pages, lowest id first.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeSpan)> + '_ {
        self.nodes[..self.node_count]
            .iter()
            .enumerate()
            .filter(|(_, n)| n.present > 0)
            // Below MAX_NODES (16): fits in u32.
            .map(|(i, n)| (NodeId(i as u32), n))
    }

    /// The runs of present pages inside `pfns`, in address order, each within one
    /// node and one zone. Empty for an empty or inverted range.
    pub fn present_runs(&self, pfns: Range<Pfn>) -> PresentRuns<'_> {
        let (start, end) = (pfns.start.0, pfns.end.0);
        let first = self.present[..self.len].partition_point(|r| r.end() <= start);
        PresentRuns {
            ranges: &self.present[first..self.len],
            cursor: start,
            end,
        }
    }

    /// The present ranges with their nodes, adjacent ranges of one node merged
    /// whether reserved or not: what Linux prints as its early memory node ranges.
    pub fn node_ranges(&self) -> impl Iterator<Item = (Range<Pfn>, NodeId)> + '_ {
        let mut i = 0;
        core::iter::from_fn(move || {
            let first = self.present[..self.len].get(i)?;
            let (start, mut end, node) = (first.start, first.end(), first.node());
            i += 1;
            while let Some(next) = self.present[..self.len].get(i) {
                if next.start != end || next.node() != node {
                    break;
                }
                end = next.end();
                i += 1;
            }
            Some((Pfn(start)..Pfn(end), NodeId(node as u32)))
        })
    }

    /// For each run of present pages, the sections it spans, as a range of
    /// section indices (adjacent runs may share a section).
    pub fn present_sections(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.present[..self.len].iter().map(|r| {
            self.section_of(Pfn(r.start))..self.section_of(Pfn(r.end() - 1)).saturating_add(1)
        })
    }

    /// The node `pfn` is present on, if it is present.
    pub fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        let i = self.present[..self.len].partition_point(|r| r.end() <= pfn.0);
        self.present[..self.len]
            .get(i)
            .filter(|r| r.start <= pfn.0)
            .map(|r| NodeId(r.node() as u32))
    }

    /// Whether section `index` holds any present page.
    pub fn section_has_present(&self, index: usize) -> bool {
        self.present_runs(self.section_pfns(index)).next().is_some()
    }

    /// Present pages, and of those how many are reserved, of `node`'s zone `zone`
    /// inside section `index`.
    pub fn section_zone_pages(&self, index: usize, node: NodeId, zone: ZoneType) -> (u64, u64) {
        let pfns = self.section_pfns(index);
        let s = pfns.start.max(zone.lowest_pfn());
        let e = pfns.end.min(zone.highest_pfn());
        let mut present = 0;
        let mut reserved = 0;
        for run in self.present_runs(s..e).filter(|r| r.node == node) {
            present += run.pages();
            if run.reserved {
                reserved += run.pages();
            }
        }
        (present, reserved)
    }
}

impl PresentRun {
    /// The run's pfns.
    pub const fn pfns(&self) -> Range<Pfn> {
        self.start..self.end
    }

    /// Pages in the run.
    pub const fn pages(&self) -> u64 {
        self.start.pages_to(self.end)
    }
}

/// Iterator over [`PresentRun`]s; see [`Layout::present_runs`].
pub struct PresentRuns<'a> {
    ranges: &'a [PresentRange],
    cursor: u64,
    end: u64,
}

impl Iterator for PresentRuns<'_> {
    type Item = PresentRun;

    fn next(&mut self) -> Option<PresentRun> {
        loop {
            let (r, rest) = self.ranges.split_first()?;
            let start = self.cursor.max(r.start);
            if start >= self.end {
                self.ranges = &[];
                return None;
            }
            if start >= r.end() {
                self.ranges = rest;
                continue;
            }
            let zone = ZoneType::of_pfn(Pfn(start));
            let end = r.end().min(self.end).min(zone.highest_pfn().0);
            self.cursor = end;
            return Some(PresentRun {
                start: Pfn(start),
                end: Pfn(end),
                node: NodeId(r.node() as u32),
                zone,
                reserved: r.reserved(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_2g() -> LayoutBuilder {
        // Early memory node ranges of Linux 6.1 under QEMU pc with 2 GiB.
        let mut b = LayoutBuilder::new();
        b.add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0)).add(
            0x100000,
            0x7ffe0000,
            RangeKind::Usable,
            NodeId(0),
        );
        b
    }

    #[test]
    fn counts_like_linux_for_qemu_2g() {
        let l = qemu_2g().build().unwrap();
        let n = l.node(NodeId(0)).unwrap();
        assert_eq!(n.present, 524158);
        assert_eq!(n.zones[0].present, 3998);
        assert_eq!(n.zones[0].spanned(), 4095);
        assert_eq!(n.zones[1].present, 520160);
        assert_eq!(n.zones[1].spanned(), 520160);
        assert_eq!(n.zones[2].spanned(), 0);
        assert_eq!(l.section_count(), 16);
    }

    #[test]
    fn usable_shrinks_inward_and_reserved_grows_outward() {
        let mut b = LayoutBuilder::new();
        b.add(0x800, 0x5800, RangeKind::Usable, NodeId(0))
            .add(0x5800, 0x6001, RangeKind::Reserved, NodeId(0))
            .add(0x6001, 0x9000, RangeKind::Usable, NodeId(0));
        let l = b.build().unwrap();
        let runs: Vec<_> = l.present_runs(Pfn(0)..Pfn(u64::MAX)).collect();
        assert_eq!(runs.len(), 3);
        let raw = |r: &PresentRun| (r.start.0, r.end.0, r.reserved);
        assert_eq!(raw(&runs[0]), (1, 5, false));
        assert_eq!(raw(&runs[1]), (5, 7, true));
        assert_eq!(raw(&runs[2]), (7, 9, false));
    }

    #[test]
    fn rejects_bad_ranges_naming_them() {
        let mut b = LayoutBuilder::new();
        b.add(0, 0x100000, RangeKind::Usable, NodeId(0)).add(
            0x80000,
            0x200000,
            RangeKind::Usable,
            NodeId(0),
        );
        match b.build() {
            Err(LayoutError::Overlap {
                first_index: 0,
                second_index: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut b = LayoutBuilder::new();
        b.add(0x2000, 0x1000, RangeKind::Usable, NodeId(0));
        assert!(matches!(
            b.build(),
            Err(LayoutError::Inverted { index: 0, .. })
        ));
        let mut b = LayoutBuilder::new();
        b.add(0, 1 << 53, RangeKind::Usable, NodeId(0));
        assert!(matches!(
            b.build(),
            Err(LayoutError::BeyondArchLimit { .. })
        ));
        let mut b = LayoutBuilder::new();
        b.add(0, 1 << 20, RangeKind::Usable, NodeId(16));
        assert!(matches!(b.build(), Err(LayoutError::TooManyNodes { .. })));
        let mut b = LayoutBuilder::new();
        b.add(0x10, 0xff0, RangeKind::Usable, NodeId(0));
        assert_eq!(b.build().unwrap_err(), LayoutError::NoUsableMemory);
        let mut b = qemu_2g();
        b.section_size(3 << 20);
        assert!(matches!(b.build(), Err(LayoutError::BadSectionSize { .. })));
        let msg = format!(
            "{}",
            LayoutError::Empty {
                index: 4,
                range: MemoryRange::new(0x1000, 0x1000, RangeKind::Usable, NodeId(0))
            }
        );
        assert_eq!(msg, "range #4 [0x1000, 0x1000) usable on node 0 is empty");
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let mut b = LayoutBuilder::new();
        for i in 0..=MAX_RANGES as u64 {
            b.add(i << 20, (i << 20) + 4096, RangeKind::Usable, NodeId(0));
        }
        assert!(matches!(b.build(), Err(LayoutError::TooManyRanges { .. })));
    }

    #[test]
    fn runs_split_at_zone_boundaries_and_nodes() {
        let mut b = LayoutBuilder::new();
        b.add(0, 6 << 30, RangeKind::Usable, NodeId(0)).add(
            6 << 30,
            8 << 30,
            RangeKind::Usable,
            NodeId(1),
        );
        let l = b.build().unwrap();
        let zones: Vec<_> = l
            .present_runs(Pfn(0)..Pfn(u64::MAX))
            .map(|r| (r.node.0, r.zone))
            .collect();
        assert_eq!(
            zones,
            [
                (0, ZoneType::Dma),
                (0, ZoneType::Dma32),
                (0, ZoneType::Normal),
                (1, ZoneType::Normal)
            ]
        );
        assert_eq!(
            l.node(NodeId(1)).unwrap().zones[2].present,
            (2 << 30) / PAGE_SIZE
        );
        assert_eq!(l.node(NodeId(1)).unwrap().zones[1].spanned(), 0);
        assert_eq!(l.node_of(Pfn::containing(6 << 30)), Some(NodeId(1)));
        assert_eq!(l.node_of(Pfn::containing(8 << 30)), None);
    }

    /// The README's example: a reservation inside usable memory, as Linux's
    /// memblock allows. Its pages are present and reserved, the rest usable.
    #[test]
    fn reserved_ranges_may_sit_inside_usable_ones() {
        let mut b = LayoutBuilder::new();
        b.add(0x1000, 0x9fc00, RangeKind::Usable, NodeId(0))
            .add(0x100000, 0xbffe0000, RangeKind::Usable, NodeId(0))
            .add(0x1000000, 0x3000000, RangeKind::Reserved, NodeId(0))
            .add(0xfec00000, 0x1_0000_0000, RangeKind::Other, NodeId(0));
        let l = b.build().unwrap();
        let runs: Vec<_> = l
            .present_runs(Pfn(0)..Pfn(u64::MAX))
            .map(|r| (r.start.0, r.end.0, r.zone, r.reserved))
            .collect();
        assert_eq!(
            runs,
            [
                (0x1, 0x9f, ZoneType::Dma, false),
                (0x100, 0x1000, ZoneType::Dma, false),
                (0x1000, 0x3000, ZoneType::Dma32, true),
                (0x3000, 0xbffe0, ZoneType::Dma32, false),
            ]
        );
        let n = l.node(NodeId(0)).unwrap();
        assert_eq!(n.present, 0x9e + 0xbffe0 - 0x100);
        assert_eq!(n.zones[ZoneType::Dma32 as usize].reserved, 0x2000);
        assert_eq!(n.zones[ZoneType::Dma32 as usize].present, 0xbffe0 - 0x1000);
        assert_eq!(l.usable_pages(), n.present - 0x2000);
        // Linux prints the node ranges of memory, reservations included.
        let ranges: Vec<_> = l.node_ranges().collect();
        assert_eq!(
            ranges,
            [
                (Pfn(0x1)..Pfn(0x9f), NodeId(0)),
                (Pfn(0x100)..Pfn(0xbffe0), NodeId(0))
            ]
        );

        // Unaligned, at the edge, overlapping each other, and across two usable
        // ranges: every page a reservation touches is reserved.
        let mut b = LayoutBuilder::new();
        b.add(0x0, 0x10000, RangeKind::Usable, NodeId(1))
            .add(0x10000, 0x20000, RangeKind::Usable, NodeId(1))
            .add(0x0, 0x1800, RangeKind::Reserved, NodeId(1))
            .add(0x1000, 0x2001, RangeKind::Reserved, NodeId(1))
            .add(0xf800, 0x10800, RangeKind::Reserved, NodeId(1))
            .add(0x1f000, 0x20000, RangeKind::Reserved, NodeId(1));
        let l = b.build().unwrap();
        let runs: Vec<_> = l
            .present_runs(Pfn(0)..Pfn(u64::MAX))
            .map(|r| (r.start.0, r.end.0, r.node.0, r.reserved))
            .collect();
        assert_eq!(
            runs,
            [
                (0, 3, 1, true),
                (3, 0xf, 1, false),
                (0xf, 0x11, 1, true),
                (0x11, 0x1f, 1, false),
                (0x1f, 0x20, 1, true),
            ]
        );
    }

    #[test]
    fn overlaps_that_make_no_sense_stay_errors() {
        let overlap = |ranges: &[(u64, u64, RangeKind, u32)]| {
            let mut b = LayoutBuilder::new();
            for &(s, e, k, n) in ranges {
                b.add(s, e, k, NodeId(n));
            }
            b.build().unwrap_err()
        };
        use RangeKind::{Other, Reserved, Usable};
        // Two usable ranges.
        assert!(matches!(
            overlap(&[(0, 0x10000, Usable, 0), (0x2000, 0x3000, Usable, 0)]),
            LayoutError::Overlap {
                first_index: 0,
                second_index: 1,
                ..
            }
        ));
        // `other` with usable or reserved, in either order.
        for kind in [Usable, Reserved] {
            assert!(matches!(
                overlap(&[(0, 0x10000, kind, 0), (0x8000, 0x20000, Other, 0)]),
                LayoutError::Overlap {
                    first_index: 0,
                    second_index: 1,
                    ..
                }
            ));
            assert!(matches!(
                overlap(&[
                    (0x100000, 0x200000, Usable, 0),
                    (0, 0x101000, Other, 0),
                    (0x100000, 0x101000, kind, 0)
                ]),
                LayoutError::Overlap { first_index: 1, .. }
            ));
        }
        // A reservation inside usable memory of another node: named, both ranges.
        let e = overlap(&[(0, 0x10000, Usable, 0), (0x2000, 0x3000, Reserved, 1)]);
        assert!(matches!(
            e,
            LayoutError::NodeConflict {
                first_index: 0,
                second_index: 1,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "range #1 [0x2000, 0x3000) reserved on node 1 overlaps range #0 [0x0, 0x10000) usable on node 0, which is on another node"
        );
        // Reserved alone is reserved RAM: no usable memory.
        assert_eq!(
            overlap(&[(0, 0x10000, Reserved, 0), (0x1000, 0x3000, Reserved, 0)]),
            LayoutError::NoUsableMemory
        );
        // All of a usable range reserved.
        assert_eq!(
            overlap(&[(0x1000, 0x3000, Usable, 0), (0x800, 0x3800, Reserved, 0)]),
            LayoutError::NoUsableMemory
        );
    }

    /// Every public function answers any argument without panicking.
    #[test]
    fn layout_functions_are_total() {
        let l = qemu_2g().build().unwrap();
        let beyond = MAX_PFN >> l.section_shift();
        for index in [
            usize::MAX,
            usize::MAX / 2,
            beyond as usize,
            beyond as usize - 1,
        ] {
            let pfns = l.section_pfns(index);
            assert!(
                pfns.start <= pfns.end && pfns.end <= Pfn(MAX_PFN),
                "{index}: {pfns:?}"
            );
            assert!(!l.section_has_present(index));
            for zone in ZoneType::ALL {
                for node in [NodeId(0), NodeId(1), NodeId(u32::MAX)] {
                    assert_eq!(l.section_zone_pages(index, node, zone), (0, 0));
                }
            }
        }
        assert_eq!(l.section_pfns(beyond as usize), Pfn(MAX_PFN)..Pfn(MAX_PFN));
        assert_eq!(l.section_pfns(1), Pfn(1 << 15)..Pfn(2 << 15));
        assert_eq!(l.section_of(Pfn(u64::MAX)), (u64::MAX >> 15) as usize);
        assert_eq!(l.node_of(Pfn(u64::MAX)), None);
        assert!(l.node(NodeId(u32::MAX)).is_none() && l.node(NodeId(MAX_NODES as u32)).is_none());
        assert_eq!(l.present_runs(Pfn(u64::MAX)..Pfn(0)).count(), 0);
        assert_eq!(l.present_runs(Pfn(u64::MAX)..Pfn(u64::MAX)).count(), 0);
        assert_eq!(l.present_runs(Pfn(5)..Pfn(3)).count(), 0);
        assert_eq!(Pfn(u64::MAX).addr(), u64::MAX);
        assert_eq!(Pfn(u64::MAX).checked_addr(), None);
        assert_eq!(Pfn(u64::MAX >> 12).checked_addr(), Some(!0xfff));
        let inverted = ZoneSpan {
            start_pfn: Pfn(10),
            end_pfn: Pfn(5),
            ..ZoneSpan::default()
        };
        assert_eq!(inverted.spanned(), 0);
        assert_eq!(ZoneType::of_pfn(Pfn(u64::MAX)), ZoneType::Normal);
    }
}
