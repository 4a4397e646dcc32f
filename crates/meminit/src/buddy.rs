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

use crate::layout::MAX_ORDER;
use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, PageState, NO_PFN};
use core::sync::atomic::Ordering::Relaxed;

const ORDERS: usize = MAX_ORDER as usize + 1;

/// The free lists of one zone.
pub(crate) struct FreeArea {
    heads: [u64; ORDERS],
    blocks: [u64; ORDERS],
    pages: u64,
}

/// A free-list page must be in a Ready section; anything else is a bug here.
#[inline]
fn page<'m, B: MemmapBacking>(mm: &'m Memmap<'_, B>, pfn: u64) -> &'m Page {
    match mm.page(pfn) {
        Ok(p) => p,
        Err(e) => panic!("free list corrupted: {e}"),
    }
}

impl FreeArea {
    pub(crate) const fn new() -> Self {
        FreeArea {
            heads: [NO_PFN; ORDERS],
            blocks: [0; ORDERS],
            pages: 0,
        }
    }

    /// Free pages on these lists.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Free blocks of each order.
    pub(crate) fn blocks(&self) -> [u64; ORDERS] {
        self.blocks
    }

    /// Links the block at `pfn` as a free block of `order`.
    #[inline]
    fn push<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, pfn: u64, order: u32) {
        let o = order as usize;
        let head = self.heads[o];
        let p = page(mm, pfn);
        p.set_state(PageState::Free { order });
        p.prev.store(NO_PFN, Relaxed);
        p.next.store(head, Relaxed);
        if head != NO_PFN {
            page(mm, head).prev.store(pfn, Relaxed);
        }
        self.heads[o] = pfn;
        self.blocks[o] += 1;
        self.pages += 1 << order;
    }

    /// Unlinks the free block at `pfn` of `order`, leaving its state to the caller.
    #[inline]
    fn unlink<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, pfn: u64, order: u32) {
        let o = order as usize;
        let p = page(mm, pfn);
        let (prev, next) = (p.prev.load(Relaxed), p.next.load(Relaxed));
        if prev == NO_PFN {
            self.heads[o] = next;
        } else {
            page(mm, prev).next.store(next, Relaxed);
        }
        if next != NO_PFN {
            page(mm, next).prev.store(prev, Relaxed);
        }
        self.blocks[o] -= 1;
        self.pages -= 1 << order;
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
            self.push(mm, pfn, order);
            pfn += 1 << order;
        }
        end - start
    }

    /// Takes a block of `order`, splitting a larger one if needed.
    #[inline]
    pub(crate) fn take<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, order: u32) -> Option<u64> {
        let found = (order..=MAX_ORDER).find(|&o| self.heads[o as usize] != NO_PFN)?;
        let pfn = self.heads[found as usize];
        self.unlink(mm, pfn, found);
        let mut o = found;
        while o > order {
            o -= 1;
            // The upper half becomes a free block of its own; its first page was a
            // tail of the larger block.
            self.push(mm, pfn + (1 << o), o);
        }
        page(mm, pfn).set_state(PageState::Allocated { order });
        Some(pfn)
    }

    /// Returns the block at `pfn` of `order`, whose head the caller checked says
    /// `Allocated{order}`, merging it with free buddies of the same zone.
    #[inline]
    pub(crate) fn give<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        mut pfn: u64,
        mut order: u32,
        zone_index: u32,
    ) {
        while order < MAX_ORDER {
            let buddy_pfn = pfn ^ (1 << order);
            let buddy = page(mm, buddy_pfn);
            if buddy.state() != (PageState::Free { order }) || buddy.zone_index() != zone_index {
                break;
            }
            self.unlink(mm, buddy_pfn, order);
            let upper = pfn.max(buddy_pfn);
            page(mm, upper).set_state(PageState::Tail);
            pfn = pfn.min(buddy_pfn);
            order += 1;
        }
        self.push(mm, pfn, order);
    }
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
