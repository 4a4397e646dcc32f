//! Per-CPU caches: storage the embedder lends, one [`CpuCache`] per CPU.
//!
//! Each CPU keeps, for each zone type and [`MobilityClass`], a small stock of free
//! blocks of the cached orders (0 to 3 and the pageblock order, as Linux's per-CPU
//! lists do) taken from one node's zone of that type: an allocation of a class
//! pops from that class's stock, a free pushes to the stock of the class the
//! block was allocated for. The common allocation pops a block from the
//! calling CPU's stock and the common free pushes one back, touching nothing shared
//! but the block's own descriptor; the zone lock is taken once per batch, to refill
//! an empty stock or to drain one that reached its high mark.
//!
//! This module owns the stocks: fixed rings of pfns (no heap, no pointers), their
//! tags and the counters that statistics read without the lock. It never touches a
//! descriptor or a zone: which blocks move between a stock and a zone, and when, is
//! decided in [`crate::allocator::cached`].
//!
//! A stock is a ring per order: blocks are pushed and popped at its hot end (the
//! block freed last is the one allocated next, still in the CPU's cache) and drained
//! from its cold end.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::{Mutex, MutexGuard, RawMutex};

use crate::types::{MobilityClass, NodeId, ZoneType, CLASSES, PAGEBLOCK_ORDER, ZONE_TYPES};

/// The orders a CPU caches.
pub const CACHED_ORDERS: [u32; 5] = [0, 1, 2, 3, PAGEBLOCK_ORDER];

/// Per cached order, the most blocks a stock holds (its high mark). Powers of two.
/// A pageblock stock holds up to 16 blocks of 2 MiB, so that a CPU working
/// with a few huge frames at once stays on its own stock: with 2, every huge
/// frame beyond them went through the zone's one depot stack, whose lock two
/// CPUs then shared for every frame (order-9 pairs on 2 threads ran at 0.19x
/// LLFree; with 8, 0.8x; with 16, 2.6x on the peers benchmark, 16 frames per
/// thread). What stocks hold counts as free, is drained by the last look
/// before `OutOfMemory`, and goes back at rest: an idle-time pass drains every
/// cache that did nothing since the pass before
/// ([`crate::Allocator::tick`]).
#[cfg(not(loom))]
pub const CACHE_HIGH: [usize; 5] = [128, 32, 16, 8, 16];
/// Per cached order, the most blocks a stock holds (its high mark). Powers of two.
/// Small under loom, so that models explore refills and drains in few steps.
#[cfg(loom)]
pub const CACHE_HIGH: [usize; 5] = [4, 2, 2, 2, 2];

/// Per cached order, how many blocks move between a stock and its zone (or its
/// zone's depot) at once, at first: a stock's batch follows its traffic between
/// this and [`CACHE_BATCH_MAX`].
#[cfg(not(loom))]
pub const CACHE_BATCH: [usize; 5] = [32, 8, 4, 2, 4];
/// Per cached order, how many blocks move between a stock and its zone (or its
/// zone's depot) at once, at first.
#[cfg(loom)]
pub const CACHE_BATCH: [usize; 5] = [2, 1, 1, 1, 1];

/// Per cached order, the largest batch a stock that frees more than it
/// allocates grows to: half its high mark, so that a drain always leaves the
/// hotter half in the CPU's cache.
pub const CACHE_BATCH_MAX: [usize; 5] = {
    let mut out = [0; 5];
    let mut i = 0;
    while i < 5 {
        out[i] = if CACHE_HIGH[i] / 2 > CACHE_BATCH[i] {
            CACHE_HIGH[i] / 2
        } else {
            CACHE_BATCH[i]
        };
        i += 1;
    }
    out
};

const fn offsets() -> [usize; 6] {
    let mut out = [0; 6];
    let mut i = 0;
    while i < 5 {
        out[i + 1] = out[i] + CACHE_HIGH[i];
        i += 1;
    }
    out
}
const OFFSET: [usize; 6] = offsets();
// The rings index with a mask: every high mark must be a power of two.
const _: () = {
    let mut i = 0;
    while i < 5 {
        assert!(CACHE_HIGH[i].is_power_of_two());
        i += 1;
    }
};
const SLOTS: usize = OFFSET[5];

/// The slot of `order` in [`CACHED_ORDERS`], if it is cached.
#[inline]
pub(crate) fn slot_of(order: u32) -> Option<usize> {
    match order {
        0..=3 => Some(order as usize),
        PAGEBLOCK_ORDER => Some(4),
        _ => None,
    }
}

/// No node: a stock that holds nothing and may be tagged with any node.
const UNTAGGED: u8 = u8::MAX;

/// One zone type's stock on one CPU: blocks of a single node's zone.
pub(crate) struct Stock {
    /// The node whose zone the blocks belong to, or [`UNTAGGED`] while empty.
    node: u8,
    /// Per cached order, bit set when the slot's last exchange with its zone
    /// was a drain (it reached its high mark), clear when it was a refill.
    drained: u8,
    /// Per cached order, the blocks its next drain moves (see [`Stock::drained`]).
    batch: [u16; 5],
    /// Per cached order, the ring index of the coldest block.
    cold: [u16; 5],
    /// Per cached order, the blocks held.
    len: [u16; 5],
    /// The rings, one after the other (order `i` at `OFFSET[i]..OFFSET[i+1]`).
    pfns: [u64; SLOTS],
    /// Pages held, all orders together (kept, not recounted).
    held: u64,
}

impl Stock {
    const fn new() -> Self {
        Stock {
            node: UNTAGGED,
            drained: 0,
            batch: {
                let mut out = [0; 5];
                let mut i = 0;
                while i < 5 {
                    out[i] = CACHE_BATCH[i] as u16;
                    i += 1;
                }
                out
            },
            cold: [0; 5],
            len: [0; 5],
            pfns: [0; SLOTS],
            held: 0,
        }
    }

    /// Pages held, all orders together.
    #[inline]
    pub(crate) fn pages(&self) -> u64 {
        self.held
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Whether blocks of `node`'s zone may live here: it already holds that node's
    /// blocks, or nothing (and is tagged with `node` now).
    #[inline]
    pub(crate) fn serves(&mut self, node: u8) -> bool {
        if self.node == node {
            return true;
        }
        if self.is_empty() {
            self.node = node;
            return true;
        }
        false
    }

    /// The node whose blocks this stock holds, if it holds any.
    pub(crate) fn node(&self) -> Option<u8> {
        (!self.is_empty()).then_some(self.node)
    }

    /// Blocks held of cached-order slot `slot`.
    #[inline]
    pub(crate) fn len(&self, slot: usize) -> usize {
        self.len[slot] as usize
    }

    /// Whether the slot is at its high mark.
    #[inline]
    pub(crate) fn is_full(&self, slot: usize) -> bool {
        self.len(slot) == CACHE_HIGH[slot]
    }

    #[inline]
    fn at(&self, slot: usize, i: usize) -> usize {
        OFFSET[slot] + ((self.cold[slot] as usize + i) & (CACHE_HIGH[slot] - 1))
    }

    /// The blocks the next drain of `slot` moves.
    #[inline]
    pub(crate) fn batch(&self, slot: usize) -> usize {
        self.batch[slot] as usize
    }

    /// `slot` drains at its high mark. Two drains with no refill between them
    /// say the CPU frees more than it allocates (blocks allocated elsewhere come
    /// back here): its batch doubles, up to [`CACHE_BATCH_MAX`], as Linux's
    /// per-CPU lists raise their high mark for a CPU that frees a lot. Returns
    /// the batch to move now.
    #[inline]
    pub(crate) fn drained(&mut self, slot: usize) -> usize {
        if self.drained & 1 << slot != 0 {
            let grown = (self.batch[slot] as usize * 2).min(CACHE_BATCH_MAX[slot]);
            self.batch[slot] = grown as u16;
        }
        self.drained |= 1 << slot;
        self.batch(slot)
    }

    /// `slot` is refilled, empty. Two refills with no drain between them say the
    /// CPU allocates more than it frees: its batch halves, down to
    /// [`CACHE_BATCH`]. Returns the batch to refill with from the zone.
    #[inline]
    pub(crate) fn refilled(&mut self, slot: usize) -> usize {
        if self.drained & 1 << slot == 0 {
            let shrunk = (self.batch[slot] as usize / 2).max(CACHE_BATCH[slot]);
            self.batch[slot] = shrunk as u16;
        }
        self.drained &= !(1 << slot);
        self.batch(slot)
    }

    /// Takes the hottest block of `slot`.
    #[inline]
    pub(crate) fn pop(&mut self, slot: usize) -> Option<u64> {
        let len = self.len(slot);
        if len == 0 {
            return None;
        }
        self.len[slot] -= 1;
        self.held -= 1 << CACHED_ORDERS[slot];
        Some(self.pfns[self.at(slot, len - 1)])
    }

    /// Adds a block of `slot` at the hot end. The caller checked the slot is not
    /// full; a full one refuses (returns false).
    #[inline]
    pub(crate) fn push(&mut self, slot: usize, pfn: u64) -> bool {
        let len = self.len(slot);
        if len == CACHE_HIGH[slot] {
            return false;
        }
        let at = self.at(slot, len);
        self.pfns[at] = pfn;
        self.len[slot] += 1;
        self.held += 1 << CACHED_ORDERS[slot];
        true
    }

    /// Takes the coldest block of `slot`.
    #[inline]
    pub(crate) fn pop_cold(&mut self, slot: usize) -> Option<u64> {
        if self.len[slot] == 0 {
            return None;
        }
        let pfn = self.pfns[self.at(slot, 0)];
        self.cold[slot] = ((self.cold[slot] as usize + 1) & (CACHE_HIGH[slot] - 1)) as u16;
        self.held -= 1 << CACHED_ORDERS[slot];
        self.len[slot] -= 1;
        Some(pfn)
    }
}

/// The stocks of one CPU, one per zone type and class (indexed by both, whose
/// ranges the compiler knows: no bounds check on the fast path): 6 stocks of
/// 1,640 bytes, so a [`CpuCache`] is 9,984 bytes (it was 4,608 with one stock
/// per zone type, 9,216 before the batches followed the traffic).
pub(crate) type Stocks = [[Stock; CLASSES]; ZONE_TYPES];

/// One CPU's cache of free blocks. The embedder lends a slice of these to
/// [`crate::Allocator::new`], one per CPU, and says which CPU is calling with a
/// [`crate::CpuId`] (see the crate documentation for the rules).
///
/// `R` is the allocator's lock type: the cache is behind one lock of it, which its
/// CPU takes with `try_lock` (never waiting) and a remote CPU draining it takes
/// with `lock`. Aligned to 128 bytes so that no two CPUs' caches share a cache line
/// (or an adjacent-line prefetch pair).
#[repr(align(128))]
pub struct CpuCache<R: RawMutex> {
    stocks: Mutex<R, Stocks>,
    /// Per stock, `node << 56 | pages held`, written under the lock whenever the
    /// stock changes and read without it by statistics.
    held: [[AtomicU64; CLASSES]; ZONE_TYPES],
    /// What `held` looked like at the last idle-time pass (see
    /// [`CpuCache::unchanged_since_last_pass`]); written only by that pass.
    seen_at_last_pass: AtomicU64,
}

impl<R: RawMutex> CpuCache<R> {
    /// An empty cache.
    pub const fn new() -> Self {
        CpuCache {
            stocks: Mutex::const_new(
                R::INIT,
                [const { [const { Stock::new() }; CLASSES] }; ZONE_TYPES],
            ),
            held: [const { [const { AtomicU64::new(0) }; CLASSES] }; ZONE_TYPES],
            seen_at_last_pass: AtomicU64::new(0),
        }
    }

    /// For an idle-time pass: whether the cache holds pages and its stocks
    /// look exactly as they did at the previous pass (a CPU that allocated and
    /// freed nothing meanwhile, or, rarely, one whose traffic came back to the
    /// same counts: draining it then costs a refill, never a page). Remembers
    /// what it saw for the next pass. Only one pass runs at a time.
    pub(crate) fn unchanged_since_last_pass(&self) -> bool {
        // Relaxed: a snapshot of statistics words; the drain that may follow
        // takes the cache's lock and sees the stocks as they are.
        let mut pages = 0;
        let mut print = 0u64;
        for h in self.held.iter().flatten() {
            let h = h.load(Relaxed);
            pages += h & ((1 << 56) - 1);
            print = print.rotate_left(11) ^ h;
        }
        // Relaxed: read and written only by the one pass running (`tick`
        // elects it with a compare-and-swap).
        let before = self.seen_at_last_pass.swap(print, Relaxed);
        pages > 0 && before == print
    }

    /// Pages of `node`'s zone `zone` this cache holds (a snapshot).
    pub fn pages_of(&self, node: NodeId, zone: ZoneType) -> u64 {
        MobilityClass::ALL
            .iter()
            .map(|&class| self.pages_of_class(node, zone, class))
            .sum()
    }

    /// Pages of `node`'s zone `zone` this cache holds for allocations of
    /// `class` (a snapshot).
    pub fn pages_of_class(&self, node: NodeId, zone: ZoneType, class: MobilityClass) -> u64 {
        // Relaxed: a statistic, exact when no operation is in flight.
        let held = self.held[zone as usize][class as usize].load(Relaxed);
        if held >> 56 == node.0 as u64 {
            held & ((1 << 56) - 1)
        } else {
            0
        }
    }

    /// Pages this cache holds, all zones together (a snapshot).
    pub fn pages(&self) -> u64 {
        // Relaxed: as in `pages_of`.
        self.held
            .iter()
            .flatten()
            .map(|h| h.load(Relaxed) & ((1 << 56) - 1))
            .sum()
    }

    /// Empties the cache, forgetting what it held (at start-up, when no allocator
    /// uses it yet).
    pub(crate) fn reset(&self) {
        let mut guard = self.lock();
        for zone in ZoneType::ALL {
            for class in MobilityClass::ALL {
                *guard.stock(zone, class) = Stock::new();
                guard.publish(zone, class);
            }
        }
    }

    /// The CPU's own access: never waits. `None` when the lock is held, by an
    /// interrupted context on this CPU, by another thread that was given the same
    /// CPU id, or by a remote drain; the caller then goes to the zone directly.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<CacheGuard<'_, R>> {
        self.stocks.try_lock().map(|stocks| CacheGuard {
            stocks,
            held: &self.held,
        })
    }

    /// A remote drain's access: waits for the owner to finish its operation.
    pub(crate) fn lock(&self) -> CacheGuard<'_, R> {
        CacheGuard {
            stocks: self.stocks.lock(),
            held: &self.held,
        }
    }
}

impl<R: RawMutex> Default for CpuCache<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// A locked cache.
pub(crate) struct CacheGuard<'c, R: RawMutex> {
    stocks: MutexGuard<'c, R, Stocks>,
    held: &'c [[AtomicU64; CLASSES]; ZONE_TYPES],
}

impl<R: RawMutex> CacheGuard<'_, R> {
    /// The stock of zone type `zone` for allocations of `class`.
    #[inline]
    pub(crate) fn stock(&mut self, zone: ZoneType, class: MobilityClass) -> &mut Stock {
        &mut self.stocks[zone as usize][class as usize]
    }

    /// Publishes the page count of zone type `zone`'s stock of `class` for
    /// statistics. Call after every change, before the guard drops.
    #[inline]
    pub(crate) fn publish(&mut self, zone: ZoneType, class: MobilityClass) {
        let stock = &self.stocks[zone as usize][class as usize];
        let node = stock.node().unwrap_or(UNTAGGED) as u64;
        // Relaxed: read only by statistics, exact once operations are quiescent.
        self.held[zone as usize][class as usize].store(node << 56 | stock.pages(), Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_stock_is_1640_bytes_and_a_cache_holds_six() {
        assert_eq!(core::mem::size_of::<Stock>(), 1640);
        assert_eq!(
            core::mem::size_of::<CpuCache<parking_lot::RawMutex>>(),
            9984
        );
    }

    #[test]
    fn batches_follow_the_traffic_within_their_bounds() {
        let mut s = Stock::new();
        for slot in 0..5 {
            assert_eq!(s.batch(slot), CACHE_BATCH[slot]);
            // Alternating drains and refills: a balanced CPU keeps its batch.
            for _ in 0..10 {
                assert_eq!(s.drained(slot), CACHE_BATCH[slot]);
                assert_eq!(s.refilled(slot), CACHE_BATCH[slot]);
            }
            // Drains alone: the batch grows, never past the maximum, which
            // leaves at least half the high mark cached.
            for _ in 0..20 {
                let n = s.drained(slot);
                assert!(n >= CACHE_BATCH[slot] && n <= CACHE_BATCH_MAX[slot]);
                assert!(n <= CACHE_HIGH[slot] / 2 || n == CACHE_BATCH[slot]);
            }
            assert_eq!(s.batch(slot), CACHE_BATCH_MAX[slot]);
            // Refills alone: back down to the first batch, never below.
            for _ in 0..20 {
                let n = s.refilled(slot);
                assert!(n >= CACHE_BATCH[slot] && n <= CACHE_BATCH_MAX[slot]);
            }
            assert_eq!(s.batch(slot), CACHE_BATCH[slot]);
        }
        assert_eq!(CACHE_BATCH_MAX, [64, 16, 8, 4, 8]);
    }

    #[test]
    fn rings_are_lifo_at_the_hot_end_and_fifo_at_the_cold_end() {
        let mut s = Stock::new();
        assert!(s.serves(1));
        for p in 0..CACHE_HIGH[0] as u64 {
            assert!(s.push(0, p));
        }
        assert!(s.is_full(0));
        assert!(!s.push(0, 999));
        assert!(!s.serves(0));
        assert_eq!(s.pop(0), Some(CACHE_HIGH[0] as u64 - 1));
        assert_eq!(s.pop_cold(0), Some(0));
        assert_eq!(s.pop_cold(0), Some(1));
        assert!(s.push(0, 1000));
        assert_eq!(s.pop(0), Some(1000));
        assert_eq!(s.pages(), CACHE_HIGH[0] as u64 - 3);
        while s.pop(0).is_some() {}
        assert_eq!(s.node(), None);
        assert!(s.serves(0));
        assert!(s.push(4, 512));
        assert_eq!(s.pages(), 512);
        assert_eq!(slot_of(PAGEBLOCK_ORDER), Some(4));
        assert_eq!(slot_of(4), None);
    }
}
