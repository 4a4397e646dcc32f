//! Depots: per zone, mobility class and cached order, a stack of whole batches
//! of free blocks that CPU caches hand each other without merging them into the
//! buddy lists (the depot of Bonwick and Adams' magazines, USENIX 2001).
//!
//! This module owns the stacks and their counters: pushing and popping a whole
//! batch, O(1) under a lock of the embedder's type held for a pointer swap, and
//! taking every batch at once for a flush. It decides nothing: when a stock
//! pushes or pops, and where a flushed batch goes, is decided in
//! [`crate::allocator::cached`]. It never touches a free list or a chunk's
//! word of use.
//!
//! ## Representation: no heap, no array
//!
//! A block in a batch is off the free lists, in the `Cached` state, so its head
//! descriptor's list links are free to use:
//!
//! - `next` chains the blocks of one batch, head first, ending in `NO_PFN`;
//! - the batch head's `prev` chains the batches of a stack: the next batch's
//!   head in its low [`LINK_BITS`] bits (all ones for none), the batch's block
//!   count above them, so that a pop knows the pages it takes in O(1).
//!
//! The stack itself is a top pfn and a batch count. Whoever holds a batch (the
//! stock that chained it, the stock that popped it, a flush) is the only one
//! that reads or writes its descriptors' links; the stack's lock orders the
//! hand-over.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::{Mutex, RawMutex};

use crate::cpu_cache::CACHED_ORDERS;
use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, NO_PFN};
use crate::types::CLASSES;

/// The most batches one depot (a zone, class and cached order) holds, however
/// many CPUs there are. Its bound is [`DEPOT_BATCHES_PER_CPU`] per CPU cache
/// lent, within this. With the default batches, a full order-0 depot holds
/// 256 × 32 pages (32 MiB), a full pageblock one 256 × 2 blocks of 2 MiB.
pub const DEPOT_MAX_BATCHES: u32 = 256;

/// Batches a depot holds per CPU cache lent, before [`DEPOT_MAX_BATCHES`].
pub const DEPOT_BATCHES_PER_CPU: u32 = 4;

/// The bound of a depot with `cpus` CPU caches lent: at least one batch.
#[inline]
pub(crate) fn bound(cpus: usize) -> u32 {
    (cpus as u32)
        .saturating_mul(DEPOT_BATCHES_PER_CPU)
        .clamp(1, DEPOT_MAX_BATCHES)
}

/// Bits of a batch head's `prev` that name the next batch's head (pfns are
/// below 2^40, [`crate::MAX_PFN`]).
const LINK_BITS: u32 = 48;
const LINK_MASK: u64 = (1 << LINK_BITS) - 1;
/// The link of the last batch of a stack.
const NO_LINK: u64 = LINK_MASK;

/// One stack of batches.
struct Stack {
    /// The head of the batch pushed last, or `NO_PFN`.
    top: u64,
    /// Batches in the stack.
    batches: u32,
}

/// The depots of one zone: a stack per mobility class and cached order, each
/// behind its own lock, and the pages they hold.
pub(crate) struct Depot<R: RawMutex> {
    stacks: [[Mutex<R, Stack>; CACHED_ORDERS.len()]; CLASSES],
    /// Pages in every stack, changed under the stack's lock, read without it.
    pages: AtomicU64,
}

/// A batch popped from, or taken off, a stack: its head, and how to walk it.
pub(crate) struct Batch {
    /// The first block's head pfn.
    pub(crate) head: u64,
}

/// A descriptor a depot holds: always of a `Ready` chunk (its blocks are counted
/// off the free lists in their chunk's word, so no give-back retires it).
#[inline]
fn page<'m, B: MemmapBacking>(mm: &'m Memmap<'_, B>, pfn: u64) -> &'m Page {
    match mm.page(pfn) {
        Ok(p) => p,
        Err(e) => panic!("depot corrupted: {e}"),
    }
}

/// The block after `pfn` in its batch, or `NO_PFN`.
#[inline]
pub(crate) fn next<B: MemmapBacking>(mm: &Memmap<'_, B>, pfn: u64) -> u64 {
    // Relaxed: the holder of the batch wrote it, and the stack's lock (or the
    // owner's own cache lock) ordered that write before this read.
    page(mm, pfn).next.load(Relaxed)
}

/// Chains `pfn` after `last` in a batch being built (`last` is `NO_PFN` for
/// the first block), and ends the batch at `pfn`.
#[inline]
pub(crate) fn chain<B: MemmapBacking>(mm: &Memmap<'_, B>, last: u64, pfn: u64) {
    // Relaxed: the batch is its builder's alone until a stack's lock hands it
    // over (its release orders these stores).
    if last != NO_PFN {
        page(mm, last).next.store(pfn, Relaxed);
    }
    page(mm, pfn).next.store(NO_PFN, Relaxed);
}

impl<R: RawMutex> Depot<R> {
    pub(crate) const fn new() -> Self {
        Depot {
            stacks: [const {
                [const {
                    Mutex::const_new(
                        R::INIT,
                        Stack {
                            top: NO_PFN,
                            batches: 0,
                        },
                    )
                }; CACHED_ORDERS.len()]
            }; CLASSES],
            pages: AtomicU64::new(0),
        }
    }

    /// Pages in this zone's depots (a snapshot, exact when no operation is in
    /// flight).
    #[inline]
    pub(crate) fn pages(&self) -> u64 {
        // Relaxed: a statistic, and a hint for whether a flush could find anything.
        self.pages.load(Relaxed)
    }

    /// Pushes the batch of `blocks` blocks of cached-order slot `slot` whose
    /// head is `head` (chained with [`chain`]) on the stack of `class`, unless
    /// it already holds `bound` batches. Returns whether it took the batch.
    #[inline]
    pub(crate) fn push<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
        head: u64,
        blocks: u32,
        bound: u32,
    ) -> bool {
        let mut stack = self.stacks[class][slot].lock();
        if stack.batches >= bound {
            return false;
        }
        let below = if stack.top == NO_PFN {
            NO_LINK
        } else {
            stack.top
        };
        // Relaxed: under the stack's lock, whose release publishes it (and the
        // batch's `next` links) to the next holder.
        page(mm, head)
            .prev
            .store((blocks as u64) << LINK_BITS | below, Relaxed);
        stack.top = head;
        stack.batches += 1;
        // Relaxed: a mirror for statistics; changed under the stack's lock.
        self.pages
            .fetch_add((blocks as u64) << CACHED_ORDERS[slot], Relaxed);
        true
    }

    /// Pops the batch pushed last on the stack of `class` and `slot`.
    #[inline]
    pub(crate) fn pop<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
    ) -> Option<Batch> {
        let mut stack = self.stacks[class][slot].lock();
        let head = stack.top;
        if head == NO_PFN {
            return None;
        }
        // Relaxed: written by the push, under this lock.
        let link = page(mm, head).prev.load(Relaxed);
        let below = link & LINK_MASK;
        stack.top = if below == NO_LINK { NO_PFN } else { below };
        stack.batches -= 1;
        // Relaxed: as in `push`.
        self.pages
            .fetch_sub((link >> LINK_BITS) << CACHED_ORDERS[slot], Relaxed);
        Some(Batch { head })
    }

    /// Takes every batch of the stack of `class` and `slot` at once (a flush)
    /// and hands each block to `each`, head by head, batch by batch, after the
    /// lock is released. `each` may relink the block (put it on a free list):
    /// its links are read before it is called. Returns the pages taken.
    pub(crate) fn take_all<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
        mut each: impl FnMut(u64),
    ) -> u64 {
        let mut top = {
            let mut stack = self.stacks[class][slot].lock();
            stack.batches = 0;
            core::mem::replace(&mut stack.top, NO_PFN)
        };
        let mut pages = 0;
        while top != NO_PFN {
            // Relaxed: written under the stack's lock, which this thread took
            // after the writer.
            let link = page(mm, top).prev.load(Relaxed);
            pages += (link >> LINK_BITS) << CACHED_ORDERS[slot];
            let mut block = top;
            top = match link & LINK_MASK {
                NO_LINK => NO_PFN,
                below => below,
            };
            while block != NO_PFN {
                let after = next(mm, block);
                each(block);
                block = after;
            }
        }
        // Relaxed: as in `push`. Taken out here rather than under the lock: the
        // count is only a statistic, and the pages were found by the walk.
        self.pages.fetch_sub(pages, Relaxed);
        pages
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_cpus_within_the_maximum() {
        assert_eq!(bound(0), 1);
        assert_eq!(bound(1), DEPOT_BATCHES_PER_CPU);
        assert_eq!(bound(16), 16 * DEPOT_BATCHES_PER_CPU);
        assert_eq!(bound(100_000), DEPOT_MAX_BATCHES);
        // The link word holds any pfn and any batch.
        assert!(crate::types::MAX_PFN < NO_LINK);
    }
}
