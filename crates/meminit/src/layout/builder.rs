//! Memory map → layout: the builder of byte ranges and its validation.
//!
//! A [`LayoutBuilder`] collects a firmware-style memory map (byte ranges of usable,
//! reserved and other memory, each on a NUMA node) and validates it into a
//! [`Layout`]; every refusal is a [`LayoutError`] that names the offending ranges by
//! their position in the input. It computes nothing else: the page-granular facts
//! are the parent module's.

use core::fmt;

use super::{Layout, DEFAULT_SECTION_SIZE, MAX_HOTPLUG_RANGES, MAX_RANGES, MIN_SECTION_SIZE};
use crate::types::{NodeId, MAX_NODES, PAGE_SHIFT, PAGE_SIZE, PHYS_ADDR_BITS};

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
    /// RAM that may become present after start-up (a virtio-mem device's region,
    /// ACPI hot-pluggable memory): not present, and no descriptor is written for
    /// it, until [`crate::Allocator::add_memory`] adds chunks of it. It must cover
    /// whole sections (so a section is either all hot-pluggable or not at all) and
    /// may overlap no other range. Declaring it at start-up sizes the section
    /// slots and the memmap's address space, so nothing is sized on guesses later.
    Hotplug,
}

impl RangeKind {
    /// The word used in messages and in the JSON memory-map format.
    pub const fn name(self) -> &'static str {
        match self {
            RangeKind::Usable => "usable",
            RangeKind::Reserved => "reserved",
            RangeKind::Other => "other",
            RangeKind::Hotplug => "hotplug",
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
    /// A hot-pluggable range does not start and end on section boundaries.
    MisalignedHotplug {
        /// Position in the input.
        index: usize,
        /// The range.
        range: MemoryRange,
        /// The section size, in bytes.
        section_size: u64,
    },
    /// More than [`MAX_HOTPLUG_RANGES`] hot-pluggable ranges were given.
    TooManyHotplugRanges {
        /// The limit.
        max: usize,
    },
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
            LayoutError::MisalignedHotplug {
                index,
                range,
                section_size,
            } => write!(
                f,
                "hot-pluggable range #{index} {range} must start and end on a section boundary (a multiple of {section_size:#x})"
            ),
            LayoutError::TooManyHotplugRanges { max } => {
                write!(f, "the memory map has more than {max} hot-pluggable ranges")
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
/// use meminit::{LayoutBuilder, NodeId, RangeKind};
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
        // A constant, so that unoptimised the builder is copied straight into
        // place rather than built in this frame first (about 6 KiB of stack).
        const EMPTY: LayoutBuilder = LayoutBuilder {
            ranges: [MemoryRange::new(0, 0, RangeKind::Other, NodeId(0)); MAX_RANGES],
            len: 0,
            overflowed: false,
            section_size: DEFAULT_SECTION_SIZE,
        };
        EMPTY
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
        check_ranges(input, section_size)?;
        if input
            .iter()
            .filter(|r| r.kind == RangeKind::Hotplug)
            .count()
            > MAX_HOTPLUG_RANGES
        {
            return Err(LayoutError::TooManyHotplugRanges {
                max: MAX_HOTPLUG_RANGES,
            });
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
        check_overlaps(input, order)?;

        layout.reset(section_size.trailing_zeros() - PAGE_SHIFT);
        push_present_pages(layout, input, order);
        if layout.usable_pages() == 0 {
            layout.reset(layout.section_shift);
            return Err(LayoutError::NoUsableMemory);
        }
        // Hot-pluggable ranges, in address order: whole sections, overlapping
        // nothing (checked above), so never merged with present pages.
        for &i in order.iter() {
            let r = &input[i as usize];
            if r.kind == RangeKind::Hotplug {
                // `r.node` was checked below MAX_NODES (16) above: it fits in u8.
                layout.push_hotplug(r.start / PAGE_SIZE, r.end / PAGE_SIZE, r.node.0 as u8);
            }
        }
        layout.compute_spans();
        Ok(())
    }
}

// `build_into`'s steps, in functions of their own so that unoptimised (where
// every temporary and iterator is a slot in its frame) start-up in place, which
// validates the map on the caller's stack, fits a small one.

/// Checks each range on its own: not empty nor inverted, within the
/// architecture and `MAX_NODES`, and hot-pluggable ranges whole sections.
fn check_ranges(input: &[MemoryRange], section_size: u64) -> Result<(), LayoutError> {
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
        if range.kind == RangeKind::Hotplug
            && (range.start % section_size != 0 || range.end % section_size != 0)
        {
            return Err(LayoutError::MisalignedHotplug {
                index,
                range,
                section_size,
            });
        }
    }
    Ok(())
}

/// Appends the present pages of `input` (`order`: its positions sorted by start
/// address) to `layout`.
fn push_present_pages(layout: &mut Layout, input: &[MemoryRange], order: &[u16]) {
    // The present pages: usable ranges shrunk inward to whole pages, reserved
    // ranges grown outward. A page any reserved range touches is reserved; where
    // two ranges of different nodes share a page (only possible at their
    // rounded ends), the one that starts first has it. Walk the page
    // boundaries of all ranges in address order and classify each piece.
    let pages = |range: &MemoryRange| match range.kind {
        RangeKind::Usable => Some((range.start.div_ceil(PAGE_SIZE), range.end / PAGE_SIZE)),
        RangeKind::Reserved => Some((range.start / PAGE_SIZE, range.end.div_ceil(PAGE_SIZE))),
        RangeKind::Other | RangeKind::Hotplug => None,
    };
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
}

/// Checks each range against every earlier one (`order`: positions sorted by
/// start address) that reaches past its start.
fn check_overlaps(input: &[MemoryRange], order: &[u16]) -> Result<(), LayoutError> {
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
    Ok(())
}
