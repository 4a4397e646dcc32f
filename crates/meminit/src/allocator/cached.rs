//! Allocation and free through a CPU's own cache; drains.
//!
//! The policy of the per-CPU caches ([`crate::cpu_cache`] owns their storage): which
//! blocks go in, when a stock is refilled from its zone or drained back to it, and
//! the entry points that name the calling CPU. A block of a cached order that is
//! freed on a CPU goes into that CPU's stock for the block's zone type when the stock
//! holds blocks of the same node's zone (or nothing); any other block goes straight
//! back to its zone, so a page always returns to the zone it belongs to. An
//! allocation pops from the stock of the zone it would take from; an empty stock is
//! refilled with a batch, a full one drains its coldest batch.
//!
//! Between the stocks and the zone's lists sits the zone's depot
//! ([`crate::depot`]), per class and cached order: a full stock pushes its
//! coldest batch there whole, and an empty one pops a whole batch from there
//! before it looks at the lists, so a block freed on another CPU than its
//! allocation's crosses no zone lock and is neither merged nor split on the
//! way. Batches reach the lists (and merge) only when a depot is at its bound
//! ([`crate::depot::bound`]: per CPU lent, within a maximum), and in a flush:
//! an allocation that finds its zone's lists without a block for it, a drain
//! ([`Allocator::drain`], and so the last look before `OutOfMemory`), and every
//! idle-time pass (free page reporting, give-back), so that chunks pinned by
//! blocks in a depot go back once the traffic stops.
//!
//! A stock's batch follows its traffic (see [`crate::cpu_cache::Stock::drained`]):
//! a CPU that frees more than it allocates moves larger batches.
//!
//! The rules a kernel must keep are in the crate documentation ("Per-CPU caches").
//! In short: correctness never depends on the [`CpuId`] being the caller's own CPU;
//! only speed does. A CPU takes its own cache with `try_lock` and, if that fails
//! (an interrupted context on the same CPU holds it, or a remote drain), uses the
//! zone directly; a remote drain takes it with `lock`.
//!
//! Nothing here initialises memory or waits for anyone but a cache's owner.
//! Locks nest one way: a cache's, then a depot's, then a zone's (a flush holds
//! a depot's lock while it frees the batches to the zone; a stock that drains
//! to the lists lets the depot's go first).

use lock_api::RawMutex;

use super::Allocator;
use crate::cpu_cache::{slot_of, CacheGuard, CpuCache, Stock, CACHED_ORDERS};
use crate::depot;
use crate::error::AllocError;
use crate::memmap::MemmapBacking;
use crate::page::{Page, PageState};
use crate::types::{CpuId, MobilityClass, NodeId, Pfn, CLASSES, PAGEBLOCK_ORDER, ZONE_TYPES};
use crate::zone::Zone;

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Returns every block in `cpu`'s cache (every CPU's, for `None`), and every
    /// batch in the zones' depots, to its zone, where it merges with its
    /// buddies: for a CPU going offline, or before measuring fragmentation.
    /// Waits for each CPU to finish an operation on its cache, if it is in one.
    /// Returns the pages returned.
    pub fn drain(&self, cpu: Option<CpuId>) -> Result<u64, AllocError> {
        match cpu {
            Some(cpu) => {
                let cached = self.drain_cache(&mut self.cache(cpu)?.lock());
                Ok(cached + self.flush_depots())
            }
            None => Ok(self.drain_all_cpus()),
        }
    }

    /// Drains every CPU's cache, then every depot (so that a batch a CPU was
    /// pushing while its cache was drained is found). Returns the pages
    /// returned.
    pub(crate) fn drain_all_cpus(&self) -> u64 {
        let cached: u64 = self
            .cpus
            .iter()
            .map(|c| self.drain_cache(&mut c.lock()))
            .sum();
        cached + self.flush_depots()
    }

    /// Returns every batch in every zone's depots to the zone's lists, where
    /// its blocks merge. Returns the pages returned.
    pub(crate) fn flush_depots(&self) -> u64 {
        self.zones
            .iter()
            .filter(|z| z.is_populated())
            .map(|z| self.flush_depot(z))
            .sum()
    }

    /// Returns every batch in `zone`'s depots to its lists. Returns the pages
    /// returned.
    pub(crate) fn flush_depot(&self, zone: &Zone<R>) -> u64 {
        let zone_index = crate::page::zone_index(NodeId(zone.node as u32), zone.kind);
        let mut pages = 0;
        for class in 0..CLASSES {
            for (slot, &order) in CACHED_ORDERS.iter().enumerate() {
                // The zone lock is taken once per batch, inside the depot's
                // (see `Depot::take_all`).
                pages += zone.depot.take_all(&self.memmap, class, slot, |batch| {
                    zone.with_free(|area| {
                        for &pfn in batch.blocks() {
                            area.free(&self.memmap, pfn, order, zone_index);
                        }
                    })
                });
            }
        }
        pages
    }

    #[inline]
    pub(crate) fn cache(&self, cpu: CpuId) -> Result<&CpuCache<R>, AllocError> {
        self.cpus.get(cpu.0 as usize).ok_or(AllocError::UnknownCpu {
            cpu,
            cpus: self.cpus.len(),
        })
    }

    /// Pages of `zone` held in CPU caches (a snapshot).
    pub(crate) fn cached_pages(&self, zone: &Zone<R>) -> u64 {
        self.cpus
            .iter()
            .map(|c| c.pages_of(NodeId(zone.node as u32), zone.kind))
            .sum()
    }

    /// Takes a block of `order` for `class` from `zone`: through `cache` when the
    /// order is cached and the cache is free to use and serves this zone, else
    /// from the zone's lists. When the lists have no block for it but the
    /// zone's depots hold pages, flushes them (their blocks merge) and looks
    /// again. Never steals from the other class (growth comes first: see
    /// [`super::grow`]).
    #[inline]
    pub(crate) fn take(
        &self,
        zone: &Zone<R>,
        order: u32,
        cache: Option<&CpuCache<R>>,
        class: MobilityClass,
    ) -> Option<u64> {
        let taken = self.take_here(zone, order, cache, class);
        if taken.is_some() || zone.depot.pages() == 0 {
            return taken;
        }
        self.take_after_flush(zone, order, class)
    }

    /// [`take`](Self::take) without the flush.
    #[inline]
    fn take_here(
        &self,
        zone: &Zone<R>,
        order: u32,
        cache: Option<&CpuCache<R>>,
        class: MobilityClass,
    ) -> Option<u64> {
        if let (Some(cache), Some(slot)) = (cache, slot_of(order)) {
            if let Some(mut guard) = cache.try_lock() {
                if guard.stock(zone.kind, class).serves(zone.node) {
                    return self.take_cached(&mut guard, zone, slot, class);
                }
            }
        }
        zone.take(&self.memmap, order, class, false)
    }

    /// Pops a block of `order` for `class` from `cache`'s stock for `zone`
    /// when the stock holds one, and does nothing else: no refill, no zone
    /// lock. `None` when the order is not cached, the cache is busy, its
    /// stock holds another node's blocks or none of this order.
    #[inline]
    pub(crate) fn pop_cached(
        &self,
        zone: &Zone<R>,
        order: u32,
        cache: &CpuCache<R>,
        class: MobilityClass,
    ) -> Option<u64> {
        let slot = slot_of(order)?;
        let mut guard = cache.try_lock()?;
        let stock = guard.stock(zone.kind, class);
        if stock.node() != Some(zone.node) {
            return None;
        }
        let pfn = self.hand_out(stock, slot, class)?;
        guard.publish(zone.kind, class);
        Some(pfn)
    }

    /// Pops the hottest block of `slot` from the locked `stock` of `class` and
    /// marks its head allocated: how a cached block leaves a stock.
    #[inline]
    fn hand_out(&self, stock: &mut Stock, slot: usize, class: MobilityClass) -> Option<u64> {
        let pfn = stock.pop(slot)?;
        // The block was the cache's alone: no one else writes its head.
        self.head(pfn).set_allocated(CACHED_ORDERS[slot], class);
        Some(pfn)
    }

    /// The lists had no block of `order` for `class`: flushes `zone`'s depots
    /// and looks again, if they held anything.
    #[cold]
    fn take_after_flush(&self, zone: &Zone<R>, order: u32, class: MobilityClass) -> Option<u64> {
        if self.flush_depot(zone) == 0 {
            return None;
        }
        zone.take(&self.memmap, order, class, false)
    }

    /// Pops a block of `slot` from the locked cache's stock of `class` for
    /// `zone`, refilling the stock with a batch from the zone first if it is
    /// empty. A refill takes what an allocation of the class would (its own
    /// lists, then wholly free chunks) but never steals nor grows: those stay
    /// on the slow path, one block at a time.
    #[inline]
    fn take_cached(
        &self,
        guard: &mut CacheGuard<'_, R>,
        zone: &Zone<R>,
        slot: usize,
        class: MobilityClass,
    ) -> Option<u64> {
        let order = CACHED_ORDERS[slot];
        let stock = guard.stock(zone.kind, class);
        let pfn = match self.hand_out(stock, slot, class) {
            Some(pfn) => pfn,
            None => {
                // From the lists, a pageblock stock takes only the block it
                // hands out: huge frames it keeps are those its CPU freed.
                // Taking a batch of them from the lists would let busy CPUs
                // hoard every free pageblock between another allocation's
                // drains before `OutOfMemory` (`tests/stress.rs`).
                let batch = match stock.refilled(slot) {
                    _ if order >= PAGEBLOCK_ORDER => 1,
                    batch => batch,
                };
                if let Some(pfn) = self.refill_from_depot(stock, zone, slot, class) {
                    guard.publish(zone.kind, class);
                    return Some(pfn);
                }
                let pfn = zone.with_free(|area| {
                    let pfn = area.take(&self.memmap, order, class, false)?;
                    for _ in 1..batch {
                        let Some(more) = area.take(&self.memmap, order, class, false) else {
                            break;
                        };
                        self.head(more).set_state(PageState::Cached { order });
                        stock.push(slot, more);
                    }
                    Some(pfn)
                })?;
                pfn
            }
        };
        guard.publish(zone.kind, class);
        Some(pfn)
    }

    /// Pops a whole batch of `slot` from `zone`'s depot of `class` into the
    /// empty `stock`, and hands out its first block.
    #[inline]
    fn refill_from_depot(
        &self,
        stock: &mut Stock,
        zone: &Zone<R>,
        slot: usize,
        class: MobilityClass,
    ) -> Option<u64> {
        let mut batch = depot::Batch::new();
        if !zone
            .depot
            .pop(&self.memmap, class as usize, slot, &mut batch)
        {
            return None;
        }
        let (&first, rest) = batch.blocks().split_first()?;
        // The coldest block of the batch at the stock's cold end.
        for &pfn in rest.iter().rev() {
            // A batch is at most CACHE_BATCH_MAX blocks, half a high mark, and
            // the stock's slot is empty.
            let pushed = stock.push(slot, pfn);
            debug_assert!(pushed);
        }
        // The batch was the depot's, now this cache's alone: no one else
        // writes its heads.
        self.head(first).set_allocated(CACHED_ORDERS[slot], class);
        Some(first)
    }

    /// Frees the head `page` of a block of `order` at `pfn` in `zone`, allocated
    /// for `class` (as its head said), into `cache`'s stock of that class.
    /// `None` when the cache cannot take it (not a cached order, busy, or holding
    /// another node's blocks of this zone type): the caller frees it to the zone.
    /// `Some(Err(found))` when the head was not `Allocated { order }` for
    /// `class` but `found`.
    #[inline]
    pub(crate) fn free_cached(
        &self,
        cache: &CpuCache<R>,
        zone: &Zone<R>,
        page: &Page,
        pfn: Pfn,
        order: u32,
        class: MobilityClass,
    ) -> Option<Result<(), PageState>> {
        let slot = slot_of(order)?;
        let mut guard = cache.try_lock()?;
        let stock = guard.stock(zone.kind, class);
        if !stock.serves(zone.node) {
            return None;
        }
        // Claim the block: of two frees racing under different locks, one wins.
        if let Err(found) = page.release(order, class, PageState::Cached { order }) {
            return Some(Err(found));
        }
        if stock.is_full(slot) {
            self.drain_batch(stock, zone, page.zone_index(), slot, class);
        }
        // Not full any more: the drain above made room.
        let pushed = stock.push(slot, pfn.0);
        debug_assert!(pushed);
        guard.publish(zone.kind, class);
        Some(Ok(()))
    }

    /// Moves the coldest batch of the full `stock`'s `slot` to `zone`'s depot
    /// of `class`, whole, or, when the depot is at its bound, to the zone's
    /// lists.
    fn drain_batch(
        &self,
        stock: &mut Stock,
        zone: &Zone<R>,
        zone_index: u32,
        slot: usize,
        class: MobilityClass,
    ) {
        let n = stock.drained(slot);
        let mut batch = depot::Batch::new();
        for _ in 0..n {
            // The coldest first: the head, which the next refill hands out.
            let Some(cold) = stock.pop_cold(slot) else {
                break;
            };
            batch.add(cold);
        }
        let bound = depot::bound(self.cpus.len());
        let mm = &self.memmap;
        if zone.depot.push(mm, class as usize, slot, &batch, bound) {
            return;
        }
        let order = CACHED_ORDERS[slot];
        zone.with_free(|area| {
            for &pfn in batch.blocks() {
                area.free(mm, pfn, order, zone_index);
            }
        });
    }

    /// Returns every block of the locked cache to its zone, each to the lists
    /// its chunk's word names (the buddy lists read it under the zone lock).
    /// Returns the pages moved.
    pub(super) fn drain_cache(&self, guard: &mut CacheGuard<'_, R>) -> u64 {
        let mut pages = 0;
        for kind in crate::types::ZoneType::ALL {
            for class in MobilityClass::ALL {
                let stock = guard.stock(kind, class);
                let Some(node) = stock.node() else {
                    continue;
                };
                let zone_index = node as usize * ZONE_TYPES + kind as usize;
                let zone = &self.zones[zone_index];
                pages += stock.pages();
                zone.with_free(|area| {
                    for (slot, &order) in CACHED_ORDERS.iter().enumerate() {
                        while let Some(pfn) = stock.pop_cold(slot) {
                            area.free(&self.memmap, pfn, order, zone_index as u32);
                        }
                    }
                });
                guard.publish(kind, class);
            }
        }
        pages
    }

    /// The descriptor of a block head that a cache or a free list holds: always in
    /// a `Ready` chunk.
    #[inline]
    fn head(&self, pfn: u64) -> &Page {
        match self.memmap.page(pfn) {
            Ok(page) => page,
            Err(e) => panic!("per-CPU cache corrupted: {e}"),
        }
    }
}
