//! What compaction asks of the free lists: whether a chunk can be emptied,
//! holding its free blocks so that nothing is allocated into it meanwhile, a
//! target block taken in a chosen chunk, and everything put back.
//!
//! Under the zone lock, like the rest of [`super`]. A block held by a
//! compaction pass is `Cached` with the compacting flag: off the lists, never
//! merged, and a free of it is a double free; its chunk counts it as off the
//! lists (with no class change), as free page reporting's isolation does, and
//! its zone counts it among its isolated pages.

use super::{page, FreeArea};
use crate::memmap::{Memmap, MemmapBacking};
use crate::page::PageState;
use crate::types::MobilityClass;

impl FreeArea {
    /// Whether `[start, end)` is a chunk a compaction pass may empty: every
    /// allocated block in it was allocated movable, nothing of it is in a CPU
    /// cache or away (for reporting, or held by another pass), and it has a
    /// free block of this zone. Reads descriptors of a chunk the caller knows is
    /// `Ready`.
    pub(crate) fn chunk_movable<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) -> bool {
        let (mut pfn, mut free) = (start, false);
        while pfn < end {
            let p = page(mm, pfn);
            let word = p.head_word();
            match word.state() {
                PageState::Reserved => pfn += 1,
                PageState::Free { order } if p.zone_index() == self.zone => {
                    free = true;
                    pfn += 1 << order;
                }
                PageState::Allocated { order } if word.class() == MobilityClass::Movable => {
                    pfn += 1 << order;
                }
                _ => return false,
            }
        }
        free
    }

    /// Takes every free block of `[start, end)` off the lists and holds it for
    /// a compaction pass (see the module docs). Returns the pages held.
    pub(crate) fn hold_chunk<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) -> u64 {
        let (mut pfn, mut held) = (start, 0);
        while pfn < end {
            let p = page(mm, pfn);
            match p.state() {
                PageState::Free { order } if p.zone_index() == self.zone => {
                    let aged = p.is_aged();
                    let reported = self.unlink(mm, p, order);
                    mm.sections().chunk_take(mm.chunk_of(pfn), 1 << order, None);
                    p.set_compacting(order, reported, aged);
                    held += 1 << order;
                    pfn += 1 << order;
                }
                other => pfn += other.pages_to_next(),
            }
        }
        held
    }

    /// The first allocated block at or after `from` in `[from, end)`, a block
    /// boundary: its head and order.
    pub(crate) fn next_allocated<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        from: u64,
        end: u64,
    ) -> Option<(u64, u32)> {
        let mut pfn = from;
        while pfn < end {
            match page(mm, pfn).state() {
                PageState::Allocated { order } => return Some((pfn, order)),
                other => pfn += other.pages_to_next(),
            }
        }
        None
    }

    /// A target for a block of `order` moved by compaction: the first free block
    /// of at least `order` of this zone in `[from, end)` (part of a chunk of
    /// movable memory), split down and allocated movable, as
    /// [`take`](Self::take) would. Returns its head.
    pub(crate) fn take_in<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        from: u64,
        end: u64,
        order: u32,
    ) -> Option<u64> {
        let mut pfn = from;
        let found = loop {
            if pfn >= end {
                return None;
            }
            let p = page(mm, pfn);
            match p.state() {
                PageState::Free { order: o } if o >= order && p.zone_index() == self.zone => {
                    break o;
                }
                other => pfn += other.pages_to_next(),
            }
        };
        // A movable chunk's block: the chunk's class does not change, so its
        // other free blocks stay on the lists they are on.
        self.split_off(mm, pfn, found, order, MobilityClass::Movable);
        Some(pfn)
    }

    /// Holds the allocated block of `order` at `pfn` for the compaction pass,
    /// once the embedder moved its contents out: it stays off the lists (its
    /// chunk's count does not change) until [`put_back_held`] frees it with
    /// the chunk's free blocks. Returns false, changing nothing, if the head no
    /// longer says `Allocated{order}` (the hook freed it itself).
    ///
    /// [`put_back_held`]: Self::put_back_held
    pub(crate) fn hold_moved<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        pfn: u64,
        order: u32,
    ) -> bool {
        let p = page(mm, pfn);
        if p.state() != (PageState::Allocated { order }) {
            return false;
        }
        p.set_compacting(order, false, false);
        true
    }

    /// Puts every block of `[start, end)` held by the compaction pass back on
    /// the lists, merging; a chunk emptied goes on the wholly free lists.
    /// Returns the pages put back.
    pub(crate) fn put_back_held<B: MemmapBacking>(
        &mut self,
        mm: &Memmap<'_, B>,
        start: u64,
        end: u64,
    ) -> u64 {
        let (mut pfn, mut back) = (start, 0);
        while pfn < end {
            let p = page(mm, pfn);
            match p.state() {
                PageState::Cached { order } if p.is_compacting() => {
                    let (reported, aged) = (p.is_reported(), p.is_aged());
                    self.put_back(mm, pfn, order, self.zone, reported, aged);
                    back += 1 << order;
                    pfn += 1 << order;
                }
                other => pfn += other.pages_to_next(),
            }
        }
        back
    }
}
