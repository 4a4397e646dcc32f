//! The free path: the descriptor is checked before the caller is trusted, and a
//! compare-and-swap on the block's head decides between two frees racing.

use lock_api::RawMutex;

use super::request::FreeRequest;
use super::Allocator;
use crate::cpu_cache::CpuCache;
use crate::error::FreeError;
use crate::memmap::MemmapBacking;
use crate::page::{PageState, NO_ZONE};
use crate::types::{Pfn, MAX_ORDER};

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Returns a block that [`alloc`](Self::alloc) handed out, and says its
    /// order, which the block's head descriptor records: `free(pfn)` through the
    /// zones, or a [`FreeRequest`] naming the calling CPU (into its cache) and the
    /// order the caller expects (checked first: [`FreeError::WrongOrder`]).
    ///
    /// The descriptor is checked before the caller is trusted: a double free, a
    /// reserved or never-initialised page, or a pfn inside a block is refused
    /// with nothing changed. Of two frees of one block racing, exactly one
    /// succeeds (a compare-and-swap on the head decides). A block may be freed on
    /// any CPU, whichever allocated it.
    #[inline]
    pub fn free(&self, request: impl Into<FreeRequest>) -> Result<u32, FreeError> {
        let FreeRequest { pfn, cpu, order } = request.into();
        let cache = match cpu {
            Some(cpu) => Some(self.cache(cpu).map_err(|_| FreeError::UnknownCpu {
                cpu,
                cpus: self.cpus.len(),
            })?),
            None => None,
        };
        self.free_in(pfn, order, cache)
    }

    /// The free path, through `cache` for the cached orders when given; checks
    /// `given` against the descriptor when given. Returns the block's order.
    #[inline]
    pub(crate) fn free_in(
        &self,
        pfn: Pfn,
        given: Option<u32>,
        cache: Option<&CpuCache<R>>,
    ) -> Result<u32, FreeError> {
        if let Some(order) = given.filter(|&o| o > MAX_ORDER) {
            return Err(FreeError::OrderTooLarge { order });
        }
        let page = self.memmap.page(pfn.0).map_err(FreeError::Lookup)?;
        let zone_index = page.zone_index();
        if zone_index == NO_ZONE {
            return Err(FreeError::Reserved { pfn });
        }
        // The order the block was allocated with, and its class; a head in any
        // other state is refused here. This read decides nothing: the
        // compare-and-swap below, from exactly this state, does.
        let head = page.head_word();
        let class = head.class();
        let order = match (head.state(), given) {
            (PageState::Allocated { order }, None) => order,
            (_, Some(order)) => order,
            (found, None) => return Err(free_error(pfn, None, found)),
        };
        let zone = &self.zones[zone_index as usize];
        if let Some(cache) = cache {
            if let Some(done) = self.free_cached(cache, zone, page, pfn, order, class) {
                return done
                    .map(|()| order)
                    .map_err(|found| free_error(pfn, given, found));
            }
        }
        zone.with_free(|area| {
            // The compare-and-swap, not the zone lock, decides between two frees of
            // one block: the other may be going into a CPU cache under its lock.
            page.release(order, class, PageState::Tail)
                .map_err(|found| free_error(pfn, given, found))?;
            area.free(&self.memmap, pfn.0, order, zone_index);
            Ok(order)
        })
    }
}

/// Why a free of `pfn` (with order `given`, if the caller gave one) is refused,
/// given the state its head was found in instead of `Allocated`.
pub(crate) fn free_error(pfn: Pfn, given: Option<u32>, found: PageState) -> FreeError {
    match (found, given) {
        (PageState::Allocated { order: allocated }, Some(given)) => FreeError::WrongOrder {
            pfn,
            allocated,
            given,
        },
        // Seen free-able a moment ago, now allocated again: another free of the
        // block won, and the block was handed out anew.
        (PageState::Allocated { .. }, None) => FreeError::DoubleFree { pfn },
        (PageState::Free { .. } | PageState::Cached { .. }, _) => FreeError::DoubleFree { pfn },
        (PageState::Tail, _) => FreeError::NotBlockHead { pfn },
        (PageState::Reserved, _) => FreeError::Reserved { pfn },
    }
}
