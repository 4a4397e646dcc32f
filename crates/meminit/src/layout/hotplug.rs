//! The layout's hot-pluggable ranges: memory declared at start-up that becomes
//! present later ([`RangeKind::Hotplug`](super::RangeKind::Hotplug)).
//!
//! A hot-pluggable range covers whole sections and overlaps no other range, so a
//! section is either all hot-pluggable or holds none of it. The ranges are kept
//! apart from the present ones: nothing counted at start-up (present pages, node
//! and zone `present`) includes them; spans, node counts and the memmap's
//! sections do, so that the section slots and the memmap's address space exist
//! before any of it is added. Which parts are present *now* is the allocator's
//! state (its chunks' states), not the layout's: [`Layout::memory_runs`] yields
//! both kinds, and a caller that holds a chunk knows it is present.

use core::ops::Range;

use super::{Layout, PresentRange, PresentRun, PresentRuns};
use crate::types::{NodeId, Pfn};

impl Layout {
    /// Appends hot-pluggable pages `[start, end)` on `node`, in address order.
    /// `build` pushes one per hot-pluggable range, checked to be at most
    /// `MAX_HOTPLUG_RANGES`.
    pub(super) fn push_hotplug(&mut self, start: u64, end: u64, node: u8) {
        if let Some(slot) = self.hotplug.get_mut(self.hotplug_len) {
            *slot = PresentRange::new(start, end, node, false);
            self.hotplug_len += 1;
        }
    }

    /// The runs of hot-pluggable pages inside `pfns` (present or not), in address
    /// order, each within one node and one zone; never reserved.
    pub fn hotplug_runs(&self, pfns: Range<Pfn>) -> PresentRuns<'_> {
        let (start, end) = (pfns.start.0, pfns.end.0);
        let ranges = &self.hotplug[..self.hotplug_len];
        let first = ranges.partition_point(|r| r.end() <= start);
        PresentRuns {
            ranges: &ranges[first..],
            cursor: start,
            end,
        }
    }

    /// The declared hot-pluggable ranges and their nodes, in address order.
    pub fn hotplug_ranges(&self) -> impl Iterator<Item = (Range<Pfn>, NodeId)> + '_ {
        self.hotplug[..self.hotplug_len]
            .iter()
            .map(|r| (Pfn(r.start)..Pfn(r.end()), NodeId(r.node() as u32)))
    }

    /// Pages declared hot-pluggable, on all nodes.
    pub fn hotplug_pages(&self) -> u64 {
        self.hotplug[..self.hotplug_len]
            .iter()
            .map(PresentRange::pages)
            .sum()
    }

    /// Whether every pfn of `pfns` (not empty) is declared hot-pluggable.
    pub fn is_hotplug(&self, pfns: Range<Pfn>) -> bool {
        if pfns.start >= pfns.end {
            return false;
        }
        let mut cursor = pfns.start.0;
        for r in self.hotplug_runs(pfns.clone()) {
            if r.start.0 != cursor {
                return false;
            }
            cursor = r.end.0;
        }
        cursor == pfns.end.0
    }

    /// The runs of memory inside `pfns`: present at start-up, or declared
    /// hot-pluggable (whether added now or not), merged in address order, each
    /// within one node and one zone. What a chunk's initialisation writes and
    /// frees, and what a backing accepts, once the chunk is present.
    pub fn memory_runs(&self, pfns: Range<Pfn>) -> MemoryRuns<'_> {
        MemoryRuns {
            present: self.present_runs(pfns.clone()),
            hotplug: self.hotplug_runs(pfns),
            next_present: None,
            next_hotplug: None,
        }
    }
}

/// Iterator over the runs of present and hot-pluggable memory; see
/// [`Layout::memory_runs`].
pub struct MemoryRuns<'a> {
    present: PresentRuns<'a>,
    hotplug: PresentRuns<'a>,
    next_present: Option<PresentRun>,
    next_hotplug: Option<PresentRun>,
}

impl Iterator for MemoryRuns<'_> {
    type Item = PresentRun;

    fn next(&mut self) -> Option<PresentRun> {
        if self.next_present.is_none() {
            self.next_present = self.present.next();
        }
        if self.next_hotplug.is_none() {
            self.next_hotplug = self.hotplug.next();
        }
        // The two kinds never overlap: the lower start goes first.
        match (self.next_present, self.next_hotplug) {
            (Some(p), Some(h)) if h.start < p.start => self.next_hotplug.take(),
            (Some(_), _) => self.next_present.take(),
            (None, _) => self.next_hotplug.take(),
        }
    }
}
