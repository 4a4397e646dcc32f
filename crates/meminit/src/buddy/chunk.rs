//! The chunk-level operations of the free lists: what give-back asks of a
//! chunk (is it all free, mark it, take it off), moving a chunk's free blocks to
//! the lists its word of use names, and the consistency checks.
//!
//! Under the zone lock, like the rest of [`super`]; it reads descriptors only of
//! chunks whose blocks are on these lists, so `Ready` ones.

use super::{list_of, page, FreeArea, LISTS};
use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, PageState, NO_PFN};
use crate::types::MAX_ORDER;
use core::sync::atomic::Ordering::Relaxed;

impl FreeArea {
    /// Whether every page in `[start, end)` that is not reserved heads or lies in
    /// a free block of zone `zone_index` on these lists, with no block crossing
    /// `end`; if so, the free pages and whether every block is aged. Reads only
    /// descriptors of a chunk the caller knows is `Ready`.
    pub(crate) fn chunk_free<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
        zone_index: u32,
    ) -> Option<ChunkFree> {
        let mut pfn = start;
        let mut found = ChunkFree {
            free: 0,
            aged: true,
            reported: true,
        };
        while pfn < end {
            let p = page(mm, pfn);
            match p.state() {
                PageState::Reserved => pfn += 1,
                PageState::Free { order }
                    if p.zone_index() == zone_index && pfn + (1 << order) <= end =>
                {
                    found.free += 1 << order;
                    found.aged &= p.is_aged();
                    found.reported &= p.is_reported();
                    pfn += 1 << order;
                }
                _ => return None,
            }
        }
        (found.free > 0).then_some(found)
    }

    /// Marks every free block of `[start, end)` aged; the caller checked with
    /// [`FreeArea::chunk_free`] that free blocks and reserved pages tile it.
    pub(crate) fn mark_chunk_aged<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) {
        self.for_each_block(mm, start, end, |p, _, _| p.mark_aged());
    }

    /// Unlinks every free block of `[start, end)`; the caller checked with
    /// [`FreeArea::chunk_free`] that free blocks and reserved pages tile it.
    pub(crate) fn remove_chunk<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) {
        let mut pfn = start;
        while pfn < end {
            let p = page(mm, pfn);
            match p.state() {
                PageState::Free { order } => {
                    self.unlink(mm, p, order);
                    p.set_state(PageState::Reserved);
                    pfn += 1 << order;
                }
                _ => pfn += 1,
            }
        }
    }

    fn for_each_block<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
        mut f: impl FnMut(&Page, u64, u32),
    ) {
        let mut pfn = start;
        while pfn < end {
            let p = page(mm, pfn);
            match p.state() {
                PageState::Free { order } => {
                    f(p, pfn, order);
                    pfn += 1 << order;
                }
                _ => pfn += 1,
            }
        }
    }
}

/// What [`FreeArea::chunk_free`] found in a chunk whose usable pages are all free.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkFree {
    /// Free pages in it.
    pub(crate) free: u64,
    /// Whether every block was marked by an earlier give-back pass and not
    /// touched since.
    pub(crate) aged: bool,
    /// Whether every block's memory is reported.
    pub(crate) reported: bool,
}

impl FreeArea {
    /// Free blocks whose buddy is a free block of the same order in zone
    /// `zone_index`: pairs that should have merged. The buddy system keeps this at
    /// zero whenever the lock is free; anything else is corruption.
    pub(crate) fn unmerged<B: MemmapBacking>(&self, mm: &Memmap<'_, B>, zone_index: u32) -> u64 {
        let mut found = 0;
        for (list, order) in (0..LISTS).flat_map(|l| (0..MAX_ORDER).map(move |o| (l, o))) {
            let mut pfn = self.heads[list][order as usize];
            while pfn != NO_PFN {
                let buddy_pfn = pfn ^ (1 << order);
                if let Ok(buddy) = mm.page(buddy_pfn) {
                    if buddy.state() == (PageState::Free { order })
                        && buddy.zone_index() == zone_index
                    {
                        found += 1;
                    }
                }
                pfn = page(mm, pfn).next.load(Relaxed);
            }
        }
        found
    }
}

impl FreeArea {
    /// Moves every free block of this zone in chunk `chunk` that is not on list
    /// `to` there, keeping its reported and aged marks: the chunk's class
    /// appeared or went. Walks the chunk's descriptors, a block at a time.
    pub(super) fn move_chunk<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        chunk: usize,
        to: usize,
    ) {
        let (start, end) = mm.chunk_pfns(chunk);
        let mut pfn = start;
        while pfn < end {
            let p = page(mm, pfn);
            if p.zone_index() != self.zone {
                // Another zone's page (a chunk of two zones), or a hole.
                pfn += 1;
                continue;
            }
            match p.state() {
                PageState::Free { order } => {
                    if p.list() != to {
                        let aged = p.is_aged();
                        let reported = self.unlink(mm, p, order);
                        self.push(mm, pfn, order, reported, to);
                        if aged {
                            p.mark_aged();
                        }
                    }
                    pfn += 1 << order;
                }
                other => pfn += other.pages_to_next(),
            }
        }
    }

    /// Free blocks on a list other than the one their head names, or than the
    /// one their chunk's word names (skipped for chunks `shared` says have pages
    /// of another zone, whose blocks there may lag), or heads that are not this
    /// zone's free blocks at all. Zero whenever the lock is free; anything else
    /// is corruption, or a word of use gone wrong.
    pub(crate) fn misfiled<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        shared: impl Fn(usize) -> bool,
    ) -> u64 {
        let mut found = 0;
        for (list, order) in (0..LISTS).flat_map(|l| (0..=MAX_ORDER).map(move |o| (l, o))) {
            let mut pfn = self.heads[list][order as usize];
            while pfn != NO_PFN {
                let p = page(mm, pfn);
                let chunk = mm.chunk_of(pfn);
                let named = list_of(mm.sections().chunk_use(chunk));
                if p.state() != (PageState::Free { order })
                    || p.list() != list
                    || p.zone_index() != self.zone
                    || (named != list && !shared(chunk))
                {
                    found += 1;
                }
                pfn = p.next.load(Relaxed);
            }
        }
        found
    }
}
