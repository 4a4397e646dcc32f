//! Buddy free lists: split and coalesce blocks of 2^order pages, on lists per
//! mobility class.
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
//! Chunks are at least a max-order block too, so a block never spans two chunks.
//!
//! ## Mobility classes
//!
//! Each order has three lists: one per [`MobilityClass`] and one for the blocks
//! of *wholly free* chunks. A free block is on the list its chunk's word of use
//! ([`ChunkUse`], in the section slot) names: the chunk's class while any page of
//! it is off the lists, else the wholly free list. This module keeps the words:
//! every block that leaves the lists (an allocation's take, free page reporting's
//! isolation) counts its pages into its chunk's word, every block that comes back
//! counts them out, and when a chunk's class appears or goes its other free
//! blocks in this zone move to the lists it now names. A default chunk that is
//! wholly free is one max-order block, so these moves cost nothing then; a chunk
//! with holes, or larger than a block, is walked.
//!
//! An allocation of class C takes, in order (see [`FreeArea::take`]):
//! 1. the smallest block that serves on C's lists: partly used chunks of its own
//!    class fill up before a wholly free chunk is split (the buddy's own
//!    approximation of "fullest first", at no cost beyond the lists);
//! 2. the smallest block that serves on the wholly free lists: the chunk becomes
//!    C's;
//! 3. only when the caller allows it (after growth, which yields wholly free
//!    chunks, found nothing): *steal* the largest block on the other class's
//!    lists (Linux's rule: a large block keeps the stolen memory together). The
//!    chunk keeps its class; steals are counted per zone.
//!
//! A chunk whose pages lie in two zones is counted by both zones (under either
//! lock; the word's update is atomic), but each zone moves only its own blocks:
//! the other zone's blocks of such a chunk may stay on the lists they were on
//! until they are next touched. That costs placement, never a page.

mod chunk;
mod compact;

use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, PageState, NO_PFN};
use crate::section::ChunkUse;
use crate::types::{MobilityClass, Pfn, CLASSES, MAX_ORDER};
use core::sync::atomic::Ordering::Relaxed;

const ORDERS: usize = MAX_ORDER as usize + 1;

/// Lists per order: one per class, then the wholly free chunks'.
pub(crate) const LISTS: usize = CLASSES + 1;
/// The index of the wholly free chunks' lists.
pub(crate) const WHOLE: usize = CLASSES;

/// The list a free block of a chunk whose word is `u` belongs on.
#[inline]
fn list_of(u: ChunkUse) -> usize {
    match u.class() {
        Some(class) => class as usize,
        None => WHOLE,
    }
}

/// The free lists of one zone.
///
/// Within each list, blocks whose memory was reported to the host sit behind all
/// the others: fresh blocks are pushed at the head, reported ones at the tail. So
/// an allocation takes memory the host still backs before memory it discarded,
/// and free page reporting finds the blocks it has not reported yet at the head.
pub(crate) struct FreeArea {
    /// The zone's index (as descriptors store it): only its blocks are moved.
    zone: u32,
    heads: [[u64; ORDERS]; LISTS],
    tails: [[u64; ORDERS]; LISTS],
    /// Per list, bit `o` set while its order-`o` list is not empty.
    nonempty: [u16; LISTS],
    blocks: [u64; ORDERS],
    list_pages: [u64; LISTS],
    pages: u64,
    reported_pages: u64,
    steals: u64,
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
    /// Empty lists of the zone whose descriptors say `zone`.
    pub(crate) const fn new(zone: u32) -> Self {
        FreeArea {
            zone,
            heads: [[NO_PFN; ORDERS]; LISTS],
            tails: [[NO_PFN; ORDERS]; LISTS],
            nonempty: [0; LISTS],
            blocks: [0; ORDERS],
            list_pages: [0; LISTS],
            pages: 0,
            reported_pages: 0,
            steals: 0,
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

    /// Free pages on each list: per class, then of wholly free chunks.
    pub(crate) fn list_pages(&self) -> [u64; LISTS] {
        self.list_pages
    }

    /// Allocations served from the other class's lists so far.
    pub(crate) fn steals(&self) -> u64 {
        self.steals
    }

    /// Free blocks of each order.
    pub(crate) fn blocks(&self) -> [u64; ORDERS] {
        self.blocks
    }

    /// Links the block at `pfn` as a free block of `order` on list `list`: at the
    /// head, or at the tail if its memory is reported.
    #[inline]
    fn push<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        pfn: u64,
        order: u32,
        reported: bool,
        list: usize,
    ) {
        let o = order as usize;
        let p = page(mm, pfn);
        p.set_free(order, reported, list);
        let (heads, tails) = (&mut self.heads[list], &mut self.tails[list]);
        if reported {
            let tail = tails[o];
            p.next.store(NO_PFN, Relaxed);
            p.prev.store(tail, Relaxed);
            if tail == NO_PFN {
                heads[o] = pfn;
            } else {
                page(mm, tail).next.store(pfn, Relaxed);
            }
            tails[o] = pfn;
            self.reported_pages += 1 << order;
        } else {
            let head = heads[o];
            p.prev.store(NO_PFN, Relaxed);
            p.next.store(head, Relaxed);
            if head == NO_PFN {
                tails[o] = pfn;
            } else {
                page(mm, head).prev.store(pfn, Relaxed);
            }
            heads[o] = pfn;
        }
        self.nonempty[list] |= 1 << o;
        self.blocks[o] += 1;
        self.list_pages[list] += 1 << order;
        self.pages += 1 << order;
    }

    /// Unlinks the free block of `order` whose head is `p` from the list the
    /// head names, leaving its state to the caller. Returns whether its memory
    /// was reported. Inlined: it is the inner step of every merge.
    #[inline(always)]
    fn unlink<B: MemmapBacking>(&mut self, mm: &Memmap<'_, B>, p: &Page, order: u32) -> bool {
        let o = order as usize;
        // Only `push` writes the list bits, with a list below LISTS.
        let list = p.list().min(WHOLE);
        let (prev, next) = (p.prev.load(Relaxed), p.next.load(Relaxed));
        if prev == NO_PFN {
            self.heads[list][o] = next;
        } else {
            page(mm, prev).next.store(next, Relaxed);
        }
        if next == NO_PFN {
            self.tails[list][o] = prev;
        } else {
            page(mm, next).prev.store(prev, Relaxed);
        }
        if self.heads[list][o] == NO_PFN {
            self.nonempty[list] &= !(1 << o);
        }
        self.blocks[o] -= 1;
        self.list_pages[list] -= 1 << order;
        self.pages -= 1 << order;
        let reported = p.is_reported();
        if reported {
            self.reported_pages -= 1 << order;
        }
        reported
    }

    /// The list a free block at `pfn` belongs on now, by its chunk's word.
    #[inline]
    fn list_for<B: MemmapBacking>(mm: &Memmap<'_, B>, pfn: u64) -> usize {
        list_of(mm.sections().chunk_use(mm.chunk_of(pfn)))
    }

    /// Adds `[start, end)`, whose descriptors all say `Tail`, as the largest aligned
    /// blocks that fit, on the lists their chunk's word names (those of wholly
    /// free chunks, for a chunk just initialised). They were not counted off the
    /// lists: the chunk's count does not change. Returns the pages added.
    pub(crate) fn add_run<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) -> u64 {
        let mut pfn = start;
        while pfn < end {
            let order = block_order(pfn, end - pfn);
            let list = Self::list_for(mm, pfn);
            self.push(mm, pfn, order, false, list);
            pfn += 1 << order;
        }
        end - start
    }

    /// The smallest order from `order` up with a block on list `list`.
    #[inline]
    fn smallest(&self, list: usize, order: u32) -> Option<usize> {
        let above = self.nonempty[list] >> order;
        (above != 0).then(|| (order + above.trailing_zeros()) as usize)
    }

    /// The largest order from `order` up with a block on list `list`.
    #[inline]
    fn largest(&self, list: usize, order: u32) -> Option<usize> {
        let above = self.nonempty[list] >> order;
        (above != 0).then(|| (order + 15 - above.leading_zeros()) as usize)
    }

    /// Takes a block of `order` for an allocation of `class`, splitting a larger
    /// one if needed: the smallest that serves on `class`'s lists, else on the
    /// wholly free lists, else, if `steal`, the largest on the other class's lists
    /// (counted as a steal; the chunk keeps its class). The pages count into the
    /// chunk's word, and the head records `class`. If the memory taken was
    /// reported, the backing is told before this returns; the halves split off
    /// stay reported.
    #[inline]
    pub(crate) fn take<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        order: u32,
        class: MobilityClass,
        steal: bool,
    ) -> Option<u64> {
        let own = class as usize;
        let other = class.other() as usize;
        let (list, found) = match self.smallest(own, order) {
            Some(found) => (own, found),
            None => match self.smallest(WHOLE, order) {
                Some(found) => (WHOLE, found),
                None if steal => (other, self.largest(other, order)?),
                None => return None,
            },
        };
        if list == other {
            self.steals += 1;
        }
        let pfn = self.heads[list][found];
        let (old, new) = self.split_off(mm, pfn, found as u32, order, class);
        let to = list_of(new);
        let chunk = mm.chunk_of(pfn);
        // The chunk took a class (or its blocks were not on its class's lists):
        // its other free blocks follow. Nothing else is in a chunk that was one
        // block.
        if (old.class() != new.class() || list != to) && (found as u32) < mm.chunk_shift() {
            self.move_chunk(mm, chunk, to);
        }
        Some(pfn)
    }

    /// Takes the free block of order `found` at `pfn` off its list and
    /// allocates its first `order` for `class`: counted in its chunk's word of
    /// use, the halves split off put on the lists the chunk's new word names
    /// (reported if the block was), the backing told of a reported block
    /// reused. Returns the chunk's word before and after.
    #[inline]
    fn split_off<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        pfn: u64,
        found: u32,
        order: u32,
        class: MobilityClass,
    ) -> (ChunkUse, ChunkUse) {
        let head = page(mm, pfn);
        let reported = self.unlink(mm, head, found);
        let (old, new) = mm
            .sections()
            .chunk_take(mm.chunk_of(pfn), 1 << order, Some(class));
        let to = list_of(new);
        let mut o = found;
        while o > order {
            o -= 1;
            // The upper half becomes a free block of its own; its first page was a
            // tail of the larger block.
            self.push(mm, pfn + (1 << o), o, reported, to);
        }
        head.set_allocated(order, class);
        if reported {
            reuse(mm, pfn, order);
        }
        (old, new)
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

    /// Returns a block that was off the lists (allocated, cached or isolated),
    /// merging it with free buddies of the same zone, and counts its pages back
    /// out of its chunk's word: the merged block goes on the lists of the chunk's
    /// class, or, if that was the chunk's last page off the lists, on the wholly
    /// free lists with every other free block of the chunk. The merged block is
    /// reported only if every part of it was; a reported part merged into an
    /// unreported block is in use again as far as the host is concerned (it may
    /// be handed out without a report), so the backing is told. A block that was
    /// `aged` and merges with nothing stays so.
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
            let buddy_reported = self.unlink(mm, buddy, order);
            if reported != buddy_reported {
                reuse(mm, if reported { pfn } else { buddy_pfn }, order);
                reported = false;
            }
            let upper = pfn.max(buddy_pfn);
            page(mm, upper).set_state(PageState::Tail);
            pfn = pfn.min(buddy_pfn);
            order += 1;
        }
        let chunk = mm.chunk_of(pfn);
        let (old, new) = mm.sections().chunk_return(chunk, 1 << given);
        let to = list_of(new);
        self.push(mm, pfn, order, reported, to);
        if aged && order == given {
            page(mm, pfn).mark_aged();
        }
        // The chunk's last page came back: every free block of it joins the
        // wholly free lists (none besides this one in a chunk that is one block).
        if old.class() != new.class() && order < mm.chunk_shift() {
            self.move_chunk(mm, chunk, to);
        }
    }

    /// Takes up to `out.len()` blocks of at least `min_order` whose memory has not
    /// been reported off the lists (every list), largest first, for free page
    /// reporting. Their heads say `Cached` while they are away (free, on no list,
    /// never merged: a free of one is a double free), and their pages count into
    /// their chunks' words, with no class. Returns how many were taken, each with
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
            for list in 0..LISTS {
                while n < out.len() {
                    // Unreported blocks come first in each list: stop at a
                    // reported one.
                    let pfn = self.heads[list][order as usize];
                    if pfn == NO_PFN || page(mm, pfn).is_reported() {
                        break;
                    }
                    let head = page(mm, pfn);
                    self.unlink(mm, head, order);
                    mm.sections().chunk_take(mm.chunk_of(pfn), 1 << order, None);
                    let aged = head.is_aged();
                    head.set_state(PageState::Cached { order });
                    out[n] = (pfn, order, aged);
                    n += 1;
                }
            }
        }
        n
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

#[cfg(all(test, not(loom)))]
mod tests;
