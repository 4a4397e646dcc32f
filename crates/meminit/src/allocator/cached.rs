//! Allocation and free through a CPU's own cache; drains.
//!
//! The policy of the per-CPU caches ([`crate::cpu_cache`] owns their storage): which
//! blocks go in, when a stock is refilled from its zone or drained back to it, and
//! the entry points that name the calling CPU. A block of a cached order that is
//! freed on a CPU goes into that CPU's stock for the block's zone type when the stock
//! holds blocks of the same node's zone (or nothing); any other block goes straight
//! back to its zone, so a page always returns to the zone it belongs to. An
//! allocation pops from the stock of the zone it would take from; an empty stock is
//! refilled with a batch under the zone lock, a full one drains its coldest batch.
//!
//! The rules a kernel must keep are in the crate documentation ("Per-CPU caches").
//! In short: correctness never depends on the [`CpuId`] being the caller's own CPU;
//! only speed does. A CPU takes its own cache with `try_lock` and, if that fails
//! (an interrupted context on the same CPU holds it, or a remote drain), uses the
//! zone directly; a remote drain takes it with `lock`.
//!
//! Nothing here initialises memory or waits for anyone but a cache's owner.

use lock_api::RawMutex;

use super::Allocator;
use crate::cpu_cache::{slot_of, CacheGuard, CpuCache, CACHED_ORDERS, CACHE_BATCH};
use crate::error::AllocError;
use crate::memmap::MemmapBacking;
use crate::page::{Page, PageState};
use crate::types::{CpuId, MobilityClass, NodeId, Pfn, ZONE_TYPES};
use crate::zone::Zone;

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Returns every block in `cpu`'s cache (every CPU's, for `None`) to its
    /// zone, where it merges with its buddies: for a CPU going offline, or before
    /// measuring fragmentation. Waits for each CPU to finish an operation on its
    /// cache, if it is in one. Returns the pages returned.
    pub fn drain(&self, cpu: Option<CpuId>) -> Result<u64, AllocError> {
        match cpu {
            Some(cpu) => Ok(self.drain_cache(&mut self.cache(cpu)?.lock())),
            None => Ok(self.drain_all_cpus()),
        }
    }

    /// Drains every CPU's cache. Returns the pages returned.
    pub(crate) fn drain_all_cpus(&self) -> u64 {
        self.cpus
            .iter()
            .map(|c| self.drain_cache(&mut c.lock()))
            .sum()
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
    /// from the zone's lists. Never steals from the other class (growth comes
    /// first: see [`super::grow`]).
    #[inline]
    pub(crate) fn take(
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
        let pfn = match stock.pop(slot) {
            Some(pfn) => {
                // The block was the cache's alone: no one else writes its head.
                self.head(pfn).set_allocated(order, class);
                pfn
            }
            None => {
                let pfn = zone.with_free(|area| {
                    let pfn = area.take(&self.memmap, order, class, false)?;
                    for _ in 1..CACHE_BATCH[slot] {
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
            let zone_index = page.zone_index();
            zone.with_free(|area| {
                for _ in 0..CACHE_BATCH[slot] {
                    if let Some(cold) = stock.pop_cold(slot) {
                        area.free(&self.memmap, cold, order, zone_index);
                    }
                }
            });
        }
        // Not full any more: the drain above made room.
        let pushed = stock.push(slot, pfn.0);
        debug_assert!(pushed);
        guard.publish(zone.kind, class);
        Some(Ok(()))
    }

    /// Returns every block of the locked cache to its zone, each to the lists
    /// its chunk's word names (the buddy lists read it under the zone lock).
    /// Returns the pages moved.
    fn drain_cache(&self, guard: &mut CacheGuard<'_, R>) -> u64 {
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
