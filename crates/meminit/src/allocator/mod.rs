//! The allocator: zones over a memmap, and every entry point an embedder calls.
//!
//! The [`Allocator`] value and its read-only queries live here; each path has its
//! own child module, all of them `impl` blocks over the same private fields:
//! start-up ([`start`]), allocation ([`alloc`]), free ([`free`]), the per-CPU
//! caches ([`cached`]), the grow path and look-ups ([`grow`]), deferred workers
//! ([`deferred`]), give-back and free page reporting ([`giveback`]), counters
//! ([`stats`]), the chunks' mobility words and their check ([`mobility`]),
//! memory added and removed after start-up ([`hotplug`]). Only `start` holds `unsafe` code (writing an allocator into place);
//! nothing here writes a descriptor outside a lock that owns it.

mod alloc;
mod cached;
mod compact;
mod deferred;
mod free;
mod giveback;
mod grow;
mod hotplug;
mod mobility;
mod request;
mod start;
mod stats;
mod tick;

pub use compact::{CompactStats, Migrate, MigrateError};
pub use deferred::{WorkerReport, WORKER_RETRIES, WORKER_RUN};
pub use giveback::{
    FreeReporter, NoReporter, ReportError, ReportStats, REPORT_BATCH, REPORT_ORDER,
};
pub use hotplug::{HotplugError, Removed};
pub use request::{AllocFlags, AllocPath, AllocRequest, FreeRequest};
pub use stats::Stats;
pub use tick::HOLD_DELAYS;

use core::sync::atomic::AtomicUsize;

use lock_api::RawMutex;

use crate::config::Config;
use crate::cpu_cache::CpuCache;
use crate::layout::Layout;
use crate::memmap::reentry::InBacking;
use crate::memmap::{LookupError, Memmap, MemmapBacking};
use crate::page::Page;
use crate::types::{Constraint, NodeId, Pfn, ZoneType, MAX_NODES, ZONE_TYPES};
use crate::zone::{Zone, ZoneStats};
use stats::InitCounters;

/// The physical page allocator.
///
/// `B` provides memory under the memmap; `R` is the lock around each zone's free
/// lists (a spin lock in a kernel, `parking_lot::RawMutex` on a host). `'a` is the
/// lifetime of the section-state slots the embedder lends it.
///
/// See the [crate documentation](crate) for an example.
pub struct Allocator<'a, B, R: RawMutex> {
    pub(crate) layout: Layout,
    pub(crate) memmap: Memmap<'a, B>,
    pub(crate) zones: [Zone<R>; MAX_NODES * ZONE_TYPES],
    pub(crate) config: Config,
    /// Per node: the next section offset a deferred worker takes.
    pub(crate) work: [AtomicUsize; MAX_NODES],
    pub(crate) counters: InitCounters,
    /// Per preferred node and constraint, the zones to try, in order.
    pub(crate) zonelists: [ZoneList; MAX_NODES * CONSTRAINTS],
    /// The per-CPU caches the embedder lent, indexed by [`CpuId`].
    pub(crate) cpus: &'a [CpuCache<R>],
    /// The contexts inside a backing call now.
    pub(crate) in_backing: InBacking,
    /// When [`Allocator::tick`] last ran a pass, and its hysteresis per zone.
    pub(crate) pacing: tick::Pacing,
}

/// The number of [`Constraint`]s.
pub(crate) const CONSTRAINTS: usize = 3;

/// Zones to try for one preferred node and constraint: that node's populated zones
/// from the highest allowed down, then each other node's in turn (Linux's
/// zonelist, with nodes ordered by distance from the preferred one modulo count).
#[derive(Clone, Copy)]
pub(crate) struct ZoneList {
    zones: [u8; MAX_NODES * ZONE_TYPES],
    len: u8,
    /// Whether a zone of the list is all hot-pluggable memory: only then does
    /// an unmovable allocation walk the list twice.
    has_hotplug_only: bool,
}

impl ZoneList {
    pub(crate) fn build<R: RawMutex>(
        zones: &[Zone<R>],
        nodes: usize,
        node: usize,
        constraint: Constraint,
    ) -> ZoneList {
        let mut list = ZoneList {
            zones: [0; MAX_NODES * ZONE_TYPES],
            len: 0,
            has_hotplug_only: false,
        };
        let top = constraint.highest_zone() as usize;
        for i in 0..nodes {
            let n = (node + i) % nodes;
            for z in (0..=top).rev() {
                let index = n * ZONE_TYPES + z;
                if zones[index].is_populated() {
                    list.zones[list.len as usize] = index as u8;
                    list.len += 1;
                    list.has_hotplug_only |= zones[index].is_hotplug_only();
                }
            }
        }
        list
    }

    #[inline]
    fn zones(&self) -> &[u8] {
        &self.zones[..self.len as usize]
    }

    /// Whether a zone of the list is all hot-pluggable memory.
    #[inline]
    fn has_hotplug_only(&self) -> bool {
        self.has_hotplug_only
    }
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// The descriptor of `pfn` if its chunk is initialised; never initialises.
    pub fn page(&self, pfn: Pfn) -> Result<&Page, LookupError> {
        self.memmap.page(pfn.0)
    }

    /// The layout the allocator runs on.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The backing under the memmap.
    pub fn backing(&self) -> &B {
        self.memmap.backing()
    }

    /// The configuration the allocator started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters of every zone with present pages, node by node, lowest zone
    /// first. Pages in CPU caches count as free. Takes each zone's lock briefly,
    /// for its block counts ([`ZoneStats::free_blocks`]); [`stats`](Self::stats)
    /// takes none.
    pub fn zones(&self) -> impl Iterator<Item = ZoneStats> + '_ {
        self.zones
            .iter()
            .filter(|z| z.is_populated())
            .map(|z| z.stats(self.cached_pages(z)))
    }

    /// The zone of `node` and type `zone`, if the node is in the layout.
    fn zone_of(&self, node: NodeId, zone: ZoneType) -> Option<&Zone<R>> {
        if node.index() >= self.layout.node_count() {
            return None;
        }
        self.zones.get(node.index() * ZONE_TYPES + zone as usize)
    }

    /// The counters of `node`'s zone `zone`, if it has present pages (takes the
    /// zone's lock briefly, as [`zones`](Self::zones)).
    pub fn zone(&self, node: NodeId, zone: ZoneType) -> Option<ZoneStats> {
        self.zone_of(node, zone)
            .filter(|z| z.is_populated())
            .map(|z| z.stats(self.cached_pages(z)))
    }

    /// A consistency check of the free lists, zone by zone under each zone's lock:
    /// the number of free blocks whose buddy is also a free block of the same order
    /// and zone, which the buddy system never leaves. Zero always, unless something
    /// corrupted the lists; a kernel may call it from a debug path, a test after any
    /// operation. Blocks in CPU caches are not on the lists: drain them first to
    /// see every block merged.
    pub fn unmerged_free_blocks(&self) -> u64 {
        self.zones
            .iter()
            .filter(|z| z.is_populated())
            .map(|z| z.unmerged(&self.memmap))
            .sum()
    }
}
