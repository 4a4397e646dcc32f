//! The layout: nodes, zones and sections of a validated memory map.
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

mod builder;
mod hotplug;
#[cfg(test)]
mod tests;

pub use builder::{LayoutBuilder, LayoutError, MemoryRange, RangeKind};
pub use hotplug::MemoryRuns;

use core::fmt;
use core::ops::Range;

use crate::types::{
    NodeId, Pfn, ZoneType, DESCRIPTOR_SIZE, MAX_NODES, MAX_ORDER, MAX_PFN, PAGE_SIZE, ZONE_TYPES,
};
/// The most ranges a memory map may have (Linux's e820 table holds 128, plus room
/// for ranges split by NUMA affinity).
pub const MAX_RANGES: usize = 256;
/// The default section size in bytes: 128 MiB, 2^15 pages, as on x86-64 Linux.
pub const DEFAULT_SECTION_SIZE: u64 = 128 << 20;
/// The smallest section: one max-order block, so that a block and its buddy always
/// share a section.
pub const MIN_SECTION_SIZE: u64 = PAGE_SIZE << MAX_ORDER;
/// The most runs of present pages a layout holds: a reserved range inside a usable
/// one splits it in three, so `MAX_RANGES` input ranges give fewer than twice as many.
const MAX_PRESENT: usize = 2 * MAX_RANGES;
/// The most hot-pluggable ranges ([`RangeKind::Hotplug`]) a layout holds.
pub const MAX_HOTPLUG_RANGES: usize = 32;

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
    /// Pages declared hot-pluggable in the span ([`RangeKind::Hotplug`]): not
    /// present (nor counted in `present`) until added.
    pub hotplug: u64,
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
    /// Pages declared hot-pluggable on the node (not in `present`); the span
    /// covers them.
    pub hotplug: u64,
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
    /// Declared hot-pluggable ranges, in address order (never reserved).
    hotplug: [PresentRange; MAX_HOTPLUG_RANGES],
    hotplug_len: usize,
    nodes: [NodeSpan; MAX_NODES],
    node_count: usize,
    section_shift: u32,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("present", &&self.present[..self.len])
            .field("hotplug", &&self.hotplug[..self.hotplug_len])
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
            hotplug: [PresentRange::new(0, 0, 0, false); MAX_HOTPLUG_RANGES],
            hotplug_len: 0,
            nodes: [NodeSpan {
                start_pfn: Pfn(0),
                end_pfn: Pfn(0),
                present: 0,
                hotplug: 0,
                zones: [ZoneSpan {
                    start_pfn: Pfn(0),
                    end_pfn: Pfn(0),
                    present: 0,
                    reserved: 0,
                    hotplug: 0,
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
        self.hotplug_len = 0;
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
        for r in &self.hotplug[..self.hotplug_len] {
            let n = &mut self.nodes[r.node() as usize];
            if n.present == 0 && n.hotplug == 0 {
                n.start_pfn = Pfn(r.start);
            }
            n.start_pfn = n.start_pfn.min(Pfn(r.start));
            n.end_pfn = n.end_pfn.max(Pfn(r.end()));
            n.hotplug += r.pages();
            self.node_count = self.node_count.max(r.node() as usize + 1);
        }
        for node in &mut self.nodes[..self.node_count] {
            if node.present == 0 && node.hotplug == 0 {
                continue;
            }
            for zt in ZoneType::ALL {
                let z = &mut node.zones[zt as usize];
                z.start_pfn = node.start_pfn.clamp(zt.lowest_pfn(), zt.highest_pfn());
                z.end_pfn = node.end_pfn.clamp(zt.lowest_pfn(), zt.highest_pfn());
            }
        }
        // Pages per zone, by index rather than through `present_runs` into
        // arrays of counts: unoptimised, each iterator and array would be a slot
        // in this frame, and start-up in place runs this on a small stack. A
        // range's pages in a zone are those within the zone's bounds, as
        // `present_runs` splits them.
        for node in &mut self.nodes {
            for zone in &mut node.zones {
                (zone.present, zone.reserved, zone.hotplug) = (0, 0, 0);
            }
        }
        for i in 0..self.len + self.hotplug_len {
            let (r, hotplug) = match i.checked_sub(self.len) {
                None => (self.present[i], false),
                Some(h) => (self.hotplug[h], true),
            };
            for zt in ZoneType::ALL {
                let start = r.start.max(zt.lowest_pfn().0);
                let pages = r.end().min(zt.highest_pfn().0).saturating_sub(start);
                let zone = &mut self.nodes[r.node() as usize].zones[zt as usize];
                if hotplug {
                    zone.hotplug += pages;
                } else {
                    zone.present += pages;
                    if r.reserved() {
                        zone.reserved += pages;
                    }
                }
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
    /// or hot-pluggable memory to the last. Section numbers in the crate's API ([`Layout::section_pfns`],
    /// [`crate::MemmapPiece::section`], [`crate::BackingError::section`]) are
    /// absolute; the section slots lent to the allocator are indexed from the
    /// first of these (slot `i` holds section `memmap_sections().start + i`).
    pub fn memmap_sections(&self) -> Range<usize> {
        let Some(first) = self.present[..self.len].first() else {
            return 0..0;
        };
        // Hot-pluggable sections have slots and memmap address space from the start.
        let start = self.hotplug[..self.hotplug_len]
            .first()
            .map_or(first.start, |h| h.start.min(first.start));
        let end = self.hotplug[..self.hotplug_len]
            .last()
            .map_or(self.end_pfn().0, |h| h.end().max(self.end_pfn().0));
        let end = end.div_ceil(self.section_pages());
        // Below MAX_PFN (2^40) >> section_shift: fits in usize on 64-bit targets, and
        // saturates (never wraps) elsewhere.
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        to_usize(start >> self.section_shift)..to_usize(end)
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
        self.memmap_descriptors() * DESCRIPTOR_SIZE
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

    /// Node `node`'s span, or `None` if it has no present nor hot-pluggable
    /// pages.
    pub fn node(&self, node: NodeId) -> Option<&NodeSpan> {
        self.nodes[..self.node_count]
            .get(node.index())
            .filter(|n| n.present > 0 || n.hotplug > 0)
    }

    /// The nodes that have present or hot-pluggable pages, lowest id first.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeSpan)> + '_ {
        self.nodes[..self.node_count]
            .iter()
            .enumerate()
            .filter(|(_, n)| n.present > 0 || n.hotplug > 0)
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
