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
//! descriptor's list links (`next`, `prev`) are free to use:
//!
//! - the batch head's `prev` chains the batches of a stack: the next batch's
//!   head in its low [`LINK_BITS`] bits (all ones for none), the batch's block
//!   count above them, so that a pop knows the pages it takes in O(1);
//! - the other blocks hang from the head's `next` as a binary tree in heap
//!   order (block `j`, from 1, has blocks `2j` and `2j + 1` in its `next` and
//!   `prev`), so that reading a batch of 64 takes 6 dependent descriptor loads,
//!   not 64: the descriptors were last written on the CPU that pushed the
//!   batch, and each load that follows a link misses its cache.
//!
//! The stack itself is a top pfn and a batch count. Whoever holds a batch (the
//! stock that chained it, the stock that popped it, a flush) is the only one
//! that reads or writes its descriptors' links; the stack's lock orders the
//! hand-over. A push or a pop holds the lock for a pointer swap; a flush holds
//! it until every batch it took is on the lists (see [`Depot::take_all`]).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::{Mutex, RawMutex};

use crate::cpu_cache::{CACHED_ORDERS, CACHE_BATCH_MAX};
use crate::memmap::{Memmap, MemmapBacking};
use crate::page::{Page, NO_PFN};
use crate::types::CLASSES;

/// The most batches one depot (a zone, class and cached order) holds, however
/// many CPUs there are. Its bound is [`DEPOT_BATCHES_PER_CPU`] per CPU cache
/// lent, within this. With the largest batches a full order-0 depot holds
/// 256 × 64 pages (64 MiB), a full pageblock one 256 × 4 blocks of 2 MiB; all
/// of it counts as free, and goes to the lists whenever an allocation needs
/// merged memory and at every idle-time pass.
pub const DEPOT_MAX_BATCHES: u32 = 256;

/// Batches a depot holds per CPU cache lent, before [`DEPOT_MAX_BATCHES`]:
/// enough for a consumer CPU to run well ahead of its producer (on 2 CPUs,
/// with 4 per CPU the producer/consumer benchmark spilled to the lists and ran
/// at 0.7x LLFree; with 16, 1.4x).
pub const DEPOT_BATCHES_PER_CPU: u32 = 16;

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
// The link word holds any pfn, and any batch's count.
const _: () = assert!(crate::types::MAX_PFN < NO_LINK);
const _: () = assert!(BATCH_CAP < 1 << (64 - LINK_BITS));

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
    /// Pages in each stack: written only by the holder of that stack's lock
    /// (a load and a store, no locked instruction), read without it.
    pages: [[AtomicU64; CACHED_ORDERS.len()]; CLASSES],
}

/// The most blocks in a batch: the largest [`CACHE_BATCH_MAX`].
pub(crate) const BATCH_CAP: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < CACHE_BATCH_MAX.len() {
        if CACHE_BATCH_MAX[i] > max {
            max = CACHE_BATCH_MAX[i];
        }
        i += 1;
    }
    max
};

/// The blocks of one batch, head first.
pub(crate) struct Batch {
    pfns: [u64; BATCH_CAP],
    len: usize,
}

impl Batch {
    pub(crate) const fn new() -> Self {
        Batch {
            pfns: [NO_PFN; BATCH_CAP],
            len: 0,
        }
    }

    /// Adds a block; false when the batch is full.
    #[inline]
    pub(crate) fn add(&mut self, pfn: u64) -> bool {
        if self.len == BATCH_CAP {
            return false;
        }
        self.pfns[self.len] = pfn;
        self.len += 1;
        true
    }

    /// The blocks, head first.
    #[inline]
    pub(crate) fn blocks(&self) -> &[u64] {
        &self.pfns[..self.len]
    }

    /// Writes the links of the blocks after the head (see the module docs).
    /// The batch is its builder's alone until a stack's lock hands it over.
    #[inline]
    fn link<B: MemmapBacking>(&self, mm: &Memmap<'_, B>) {
        let b = self.blocks();
        let at = |i: usize| b.get(i).copied().unwrap_or(NO_PFN);
        // Relaxed throughout: the stack's lock, taken after these stores and
        // released, orders them for the next holder.
        if let Some(&head) = b.first() {
            page(mm, head).next.store(at(1), Relaxed);
        }
        for (j, &pfn) in b.iter().enumerate().skip(1) {
            let p = page(mm, pfn);
            p.next.store(at(2 * j), Relaxed);
            p.prev.store(at(2 * j + 1), Relaxed);
        }
    }

    /// Reads the `len` blocks of the batch whose head is `head`, as
    /// [`Batch::link`] wrote them, into `batch` (filled in place: a batch is
    /// half a KiB, not worth a copy on the way out).
    #[inline]
    fn read_into<B: MemmapBacking>(batch: &mut Batch, mm: &Memmap<'_, B>, head: u64, len: usize) {
        let len = len.min(BATCH_CAP);
        batch.len = len;
        batch.pfns[0] = head;
        // Relaxed throughout: the holder of the batch wrote these, and the
        // stack's lock ordered the writes before this thread took the batch.
        if len > 1 {
            batch.pfns[1] = page(mm, head).next.load(Relaxed);
        }
        // Level by level: the loads of one level do not depend on each other.
        for j in 1..len {
            if 2 * j >= len {
                break;
            }
            let p = page(mm, batch.pfns[j]);
            batch.pfns[2 * j] = p.next.load(Relaxed);
            if 2 * j + 1 < len {
                batch.pfns[2 * j + 1] = p.prev.load(Relaxed);
            }
        }
    }
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
            pages: [const { [const { AtomicU64::new(0) }; CACHED_ORDERS.len()] }; CLASSES],
        }
    }

    /// Pages in this zone's depots (a snapshot, exact when no operation is in
    /// flight).
    #[inline]
    pub(crate) fn pages(&self) -> u64 {
        // Relaxed: a statistic, and a hint for whether a flush could find anything.
        self.pages.iter().flatten().map(|p| p.load(Relaxed)).sum()
    }

    /// Adds `delta` pages to the count of the stack of `class` and `slot`,
    /// whose lock the caller holds (the lock, not the instruction, makes the
    /// load and the store one step).
    #[inline]
    fn count(&self, class: usize, slot: usize, delta: i64) {
        let pages = &self.pages[class][slot];
        // Relaxed: only the holder of the stack's lock writes this count, and
        // the lock orders one holder's store before the next one's load;
        // readers without the lock see a snapshot.
        pages.store(pages.load(Relaxed).wrapping_add_signed(delta), Relaxed);
    }

    /// Pushes `batch`, of blocks of cached-order slot `slot`, on the stack of
    /// `class`, unless it already holds `bound` batches. Returns whether it
    /// took the batch.
    #[inline]
    pub(crate) fn push<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
        batch: &Batch,
        bound: u32,
    ) -> bool {
        let Some(&head) = batch.blocks().first() else {
            return true;
        };
        let blocks = batch.len as u64;
        // Outside the lock: the batch is still this thread's alone.
        batch.link(mm);
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
        // batch's links) to the next holder.
        page(mm, head)
            .prev
            .store(blocks << LINK_BITS | below, Relaxed);
        stack.top = head;
        stack.batches += 1;
        self.count(class, slot, (blocks << CACHED_ORDERS[slot]) as i64);
        true
    }

    /// Pops the batch pushed last on the stack of `class` and `slot` into
    /// `batch`; false if the stack is empty.
    #[inline]
    pub(crate) fn pop<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
        batch: &mut Batch,
    ) -> bool {
        let (head, link) = {
            let mut stack = self.stacks[class][slot].lock();
            let head = stack.top;
            if head == NO_PFN {
                return false;
            }
            // Relaxed: written by the push, under this lock.
            let link = page(mm, head).prev.load(Relaxed);
            let below = link & LINK_MASK;
            stack.top = if below == NO_LINK { NO_PFN } else { below };
            stack.batches -= 1;
            self.count(
                class,
                slot,
                -(((link >> LINK_BITS) << CACHED_ORDERS[slot]) as i64),
            );
            (head, link)
        };
        // Outside the lock: the batch is this thread's alone now.
        Batch::read_into(batch, mm, head, (link >> LINK_BITS) as usize);
        true
    }

    /// Takes every batch of the stack of `class` and `slot` (a flush) and
    /// hands each to `each`, which may relink the blocks (put them on a free
    /// list: the batch's links are read before it is called). Returns the
    /// pages taken.
    ///
    /// The stack's lock is held until the last batch is handed over, so that a
    /// flush that finds the stack empty because another flush is taking it
    /// waits for that one to finish: when this returns, every batch that was
    /// in the stack when it was called is wherever `each` put it. The last
    /// look before `OutOfMemory` relies on that: two allocations draining at
    /// once must not both see nothing while the first one's batches are
    /// between the depot and the lists. `each` may take the zone lock (locks
    /// nest: a cache's, a depot's, the zone's) but no depot lock.
    pub(crate) fn take_all<B: MemmapBacking>(
        &self,
        mm: &Memmap<'_, B>,
        class: usize,
        slot: usize,
        mut each: impl FnMut(&Batch),
    ) -> u64 {
        let mut stack = self.stacks[class][slot].lock();
        let mut top = core::mem::replace(&mut stack.top, NO_PFN);
        stack.batches = 0;
        let mut pages = 0;
        let mut batch = Batch::new();
        while top != NO_PFN {
            // Relaxed: written by a push under this lock, which this thread
            // holds now.
            let link = page(mm, top).prev.load(Relaxed);
            let taken = (link >> LINK_BITS) << CACHED_ORDERS[slot];
            pages += taken;
            Batch::read_into(&mut batch, mm, top, (link >> LINK_BITS) as usize);
            top = match link & LINK_MASK {
                NO_LINK => NO_PFN,
                below => below,
            };
            each(&batch);
            // After `each`, so that the pages are counted somewhere (here,
            // or on the lists) at every moment.
            self.count(class, slot, -(taken as i64));
        }
        drop(stack);
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
    }
}
