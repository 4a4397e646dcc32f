//! Buddy free lists: split and coalesce blocks of 2^order pages.
//!
//! A [`FreeArea`] is the free lists of one zone, orders `0..=MAX_ORDER`, doubly
//! linked through the descriptors of the blocks' first pages (by pfn, not pointer).
//! Every function here runs under the zone's lock, which its caller holds by owning
//! `&mut FreeArea`; descriptors are reached only through [`Memmap::page`], so a page
//! whose section is not `Ready` can never be linked or read.
//!
//! Block states follow one rule: the first page of a block says `Free{order}` or
//! `Allocated{order}`, every other page says `Tail`. Splits and merges keep it, so a
//! free of a pfn that is not the head of an allocated block of that order is detected
//! from the descriptor alone.
//!
//! Because sections are aligned, at least one max-order block in size, a block and
//! its buddy always share a section: merging never looks outside a `Ready` section.

use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, PageState, NO_PFN};
use crate::types::{Pfn, MAX_ORDER};
use core::sync::atomic::Ordering::Relaxed;

const ORDERS: usize = MAX_ORDER as usize + 1;

/// The free lists of one zone.
///
/// Within each list, blocks whose memory was reported to the host sit behind all
/// the others: fresh blocks are pushed at the head, reported ones at the tail. So
/// an allocation takes memory the host still backs before memory it discarded,
/// and free page reporting finds the blocks it has not reported yet at the head.
pub(crate) struct FreeArea {
    heads: [u64; ORDERS],
    tails: [u64; ORDERS],
    blocks: [u64; ORDERS],
    pages: u64,
    reported_pages: u64,
}

/// A free-list page must be in a Ready section; anything else is a bug here.
#[inline]
fn page<'m, B: MemmapBacking>(mm: &'m Memmap<'_, B>, pfn: u64) -> &'m Page {
    match mm.page(pfn) {
        Ok(p) => p,
        Err(e) => panic!("free list corrupted: {e}"),
    }
}

/// Tells the backing that reported memory `[pfn, pfn + 2^order)` is in use again.
#[inline]
fn reuse<B: MemmapBacking>(mm: &Memmap<'_, B>, pfn: u64, order: u32) {
    mm.backing()
        .reuse_reported(Pfn(pfn)..Pfn(pfn + (1 << order)));
}

impl FreeArea {
    pub(crate) const fn new() -> Self {
        FreeArea {
            heads: [NO_PFN; ORDERS],
            tails: [NO_PFN; ORDERS],
            blocks: [0; ORDERS],
            pages: 0,
            reported_pages: 0,
        }
    }

    /// Free pages on these lists.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Of those, pages whose memory was reported to the host.
    pub(crate) fn reported_pages(&self) -> u64 {
        self.reported_pages
    }

    /// Free blocks of each order.
    pub(crate) fn blocks(&self) -> [u64; ORDERS] {
        self.blocks
    }

    /// Links the block at `pfn` as a free block of `order`: at the head of its
    /// list, or at the tail if its memory is reported.
    #[inline]
    fn push<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, pfn: u64, order: u32, reported: bool) {
        let o = order as usize;
        let p = page(mm, pfn);
        p.set_free(order, reported);
        if reported {
            let tail = self.tails[o];
            p.next.store(NO_PFN, Relaxed);
            p.prev.store(tail, Relaxed);
            if tail == NO_PFN {
                self.heads[o] = pfn;
            } else {
                page(mm, tail).next.store(pfn, Relaxed);
            }
            self.tails[o] = pfn;
            self.reported_pages += 1 << order;
        } else {
            let head = self.heads[o];
            p.prev.store(NO_PFN, Relaxed);
            p.next.store(head, Relaxed);
            if head == NO_PFN {
                self.tails[o] = pfn;
            } else {
                page(mm, head).prev.store(pfn, Relaxed);
            }
            self.heads[o] = pfn;
        }
        self.blocks[o] += 1;
        self.pages += 1 << order;
    }

    /// Unlinks the free block at `pfn` of `order`, leaving its state to the caller.
    /// Returns whether its memory was reported.
    #[inline]
    fn unlink<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, pfn: u64, order: u32) -> bool {
        let o = order as usize;
        let p = page(mm, pfn);
        let (prev, next) = (p.prev.load(Relaxed), p.next.load(Relaxed));
        if prev == NO_PFN {
            self.heads[o] = next;
        } else {
            page(mm, prev).next.store(next, Relaxed);
        }
        if next == NO_PFN {
            self.tails[o] = prev;
        } else {
            page(mm, next).prev.store(prev, Relaxed);
        }
        self.blocks[o] -= 1;
        self.pages -= 1 << order;
        let reported = p.is_reported();
        if reported {
            self.reported_pages -= 1 << order;
        }
        reported
    }

    /// Adds `[start, end)`, whose descriptors all say `Tail`, as the largest aligned
    /// blocks that fit. Returns the pages added.
    pub(crate) fn add_run<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) -> u64 {
        let mut pfn = start;
        while pfn < end {
            let order = block_order(pfn, end - pfn);
            self.push(mm, pfn, order, false);
            pfn += 1 << order;
        }
        end - start
    }

    /// Takes a block of `order`, splitting a larger one if needed. If the memory
    /// taken was reported, the backing is told before this returns; the halves
    /// split off stay reported.
    #[inline]
    pub(crate) fn take<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, order: u32) -> Option<u64> {
        let found = (order..=MAX_ORDER).find(|&o| self.heads[o as usize] != NO_PFN)?;
        let pfn = self.heads[found as usize];
        let reported = self.unlink(mm, pfn, found);
        let mut o = found;
        while o > order {
            o -= 1;
            // The upper half becomes a free block of its own; its first page was a
            // tail of the larger block.
            self.push(mm, pfn + (1 << o), o, reported);
        }
        page(mm, pfn).set_state(PageState::Allocated { order });
        if reported {
            reuse(mm, pfn, order);
        }
        Some(pfn)
    }

    /// Returns the block at `pfn` of `order`, whose head the caller checked says
    /// `Allocated{order}`, merging it with free buddies of the same zone.
    #[inline]
    pub(crate) fn free<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        pfn: u64,
        order: u32,
        zone_index: u32,
    ) {
        self.put_back(mm, pfn, order, zone_index, false, false);
    }

    /// Returns a free block to the lists, merging it with free buddies of the
    /// same zone. The merged block is reported only if every part of it was; a
    /// reported part merged into an unreported block is in use again as far as
    /// the host is concerned (it may be handed out without a report), so the
    /// backing is told. A block that was `aged` and merges with nothing stays so.
    pub(crate) fn put_back<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        mut pfn: u64,
        mut order: u32,
        zone_index: u32,
        mut reported: bool,
        aged: bool,
    ) {
        let given = order;
        while order < MAX_ORDER {
            let buddy_pfn = pfn ^ (1 << order);
            let buddy = page(mm, buddy_pfn);
            if buddy.state() != (PageState::Free { order }) || buddy.zone_index() != zone_index {
                break;
            }
            let buddy_reported = self.unlink(mm, buddy_pfn, order);
            if reported != buddy_reported {
                reuse(mm, if reported { pfn } else { buddy_pfn }, order);
                reported = false;
            }
            let upper = pfn.max(buddy_pfn);
            page(mm, upper).set_state(PageState::Tail);
            pfn = pfn.min(buddy_pfn);
            order += 1;
        }
        self.push(mm, pfn, order, reported);
        if aged && order == given {
            page(mm, pfn).mark_aged();
        }
    }

    /// Takes up to `out.len()` blocks of at least `min_order` whose memory has not
    /// been reported off the lists, largest first, for free page reporting. Their
    /// heads say `Cached` while they are away (free, on no list, never merged:
    /// a free of one is a double free). Returns how many were taken, each with
    /// whether it was aged; the caller gives each back with
    /// [`FreeArea::put_back`].
    pub(crate) fn isolate_unreported<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        min_order: u32,
        out: &mut [(u64, u32, bool)],
    ) -> usize {
        let mut n = 0;
        for order in (min_order..=MAX_ORDER).rev() {
            while n < out.len() {
                // Unreported blocks come first in each list: stop at a reported one.
                let pfn = self.heads[order as usize];
                if pfn == NO_PFN || page(mm, pfn).is_reported() {
                    break;
                }
                self.unlink(mm, pfn, order);
                let head = page(mm, pfn);
                let aged = head.is_aged();
                head.set_state(PageState::Cached { order });
                out[n] = (pfn, order, aged);
                n += 1;
            }
        }
        n
    }

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
                    self.unlink(mm, pfn, order);
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
        for order in 0..MAX_ORDER {
            let mut pfn = self.heads[order as usize];
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

/// The order of the largest block that starts at `pfn` (aligned to its size) and
/// fits in `pages`.
pub(crate) fn block_order(pfn: u64, pages: u64) -> u32 {
    let align = if pfn == 0 {
        MAX_ORDER
    } else {
        pfn.trailing_zeros()
    };
    let fit = 63 - pages.leading_zeros();
    align.min(fit).min(MAX_ORDER)
}

#[cfg(test)]
mod tests {
    use super::block_order;

    #[test]
    fn block_orders() {
        assert_eq!(block_order(0, 1 << 20), 10);
        assert_eq!(block_order(1, 100), 0);
        assert_eq!(block_order(4096, 3), 1);
        assert_eq!(block_order(2048, 2048), 10);
        assert_eq!(block_order(1024 + 512, 4096), 9);
    }
}
