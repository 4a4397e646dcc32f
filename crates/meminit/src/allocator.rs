//! The allocator: zones over a memmap; allocation, free, look-up and counters.
//!
//! This module owns the paths a caller takes every time: an allocation walks the
//! zone list and takes a block from the first zone that has one (through the calling
//! CPU's cache for small orders, [`crate::percpu`]); only when a zone has none does
//! it look at the off switch and, while memory remains uninitialised, grow that zone
//! ([`crate::init`]). Before it reports [`AllocError::OutOfMemory`] it drains every
//! CPU's cache back to the zones and looks again. A free checks the descriptor
//! before it trusts the caller. Nothing here writes a descriptor outside a lock that
//! owns it, and nothing here is `unsafe`.

use core::fmt;
use core::sync::atomic::AtomicUsize;

use lock_api::RawMutex;

use crate::init::{ChunkError, Config, InitCounters, Strategy};
use crate::layout::{Layout, NodeId, Pfn, ZoneType, MAX_NODES, MAX_ORDER, ZONE_TYPES};
use crate::memmap::{BackingError, LookupError, Memmap, MemmapBacking};
use crate::page::{Page, PageState, NO_ZONE};
use crate::pcp::{CpuCache, CpuId};
use crate::reentry::InBacking;
use crate::zone::{Zone, ZoneStats};

/// Which zones an allocation may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Constraint {
    /// Any zone: Normal first, then DMA32, then DMA.
    Any = 0,
    /// Below 4 GiB: DMA32, then DMA.
    Dma32 = 1,
    /// Below 16 MiB: DMA only.
    Dma = 2,
}

impl Constraint {
    /// The highest zone the constraint allows.
    pub const fn highest_zone(self) -> ZoneType {
        match self {
            Constraint::Any => ZoneType::Normal,
            Constraint::Dma32 => ZoneType::Dma32,
            Constraint::Dma => ZoneType::Dma,
        }
    }
}

/// What an allocation may do, beyond taking a free block (Linux's GFP flags, the
/// few that a page allocator itself decides).
///
/// Combine with `|`: `AllocFlags::NO_GROW | AllocFlags::THIS_NODE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocFlags(u8);

impl AllocFlags {
    /// Nothing special: may initialise memory (grow), fall back to other nodes,
    /// and hands out memory as it is.
    pub const NONE: AllocFlags = AllocFlags(0);
    /// May not grow: never initialises a chunk, never calls the backing, never
    /// waits for a chunk someone else initialises nor for blocks away being
    /// reported. What an allocation in interrupt context needs (Linux's
    /// `GFP_ATOMIC`): it takes only free blocks (draining CPU caches if it must)
    /// and fails with [`AllocError::WouldGrow`] where only growing would serve.
    pub const NO_GROW: AllocFlags = AllocFlags(1);
    /// Only the preferred node's zones (Linux's `__GFP_THISNODE`): no fall-back
    /// to other nodes.
    pub const THIS_NODE: AllocFlags = AllocFlags(2);
    /// The block's memory is zeroed before it is returned, by
    /// [`MemmapBacking::zero`] (the crate has no mapping of the memory itself).
    pub const ZEROED: AllocFlags = AllocFlags(4);

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: AllocFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for AllocFlags {
    type Output = AllocFlags;

    fn bitor(self, other: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 | other.0)
    }
}

/// How an allocation was served (see [`Allocator::alloc_traced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocPath {
    /// From the free lists of the first zone in the zone list.
    Fast,
    /// From the free lists of a later zone, without initialising anything.
    Fallback,
    /// After initialising at least one chunk (the grow path).
    Grew,
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Orders above [`MAX_ORDER`] are not served.
    OrderTooLarge {
        /// The order asked for.
        order: u32,
    },
    /// The preferred node is not in the layout.
    UnknownNode {
        /// The node asked for.
        node: NodeId,
    },
    /// The CPU has no cache: its id is not below the number of caches lent.
    UnknownCpu {
        /// The CPU named.
        cpu: CpuId,
        /// Caches lent at start-up.
        cpus: usize,
    },
    /// Every eligible zone is initialised and has no free block of the order.
    OutOfMemory {
        /// The order asked for.
        order: u32,
        /// The constraint.
        constraint: Constraint,
    },
    /// Memory remained, but the backing could not populate the memmap for it (or,
    /// with [`AllocFlags::ZEROED`], could not zero the block).
    Backing(BackingError),
    /// With [`AllocFlags::NO_GROW`]: no eligible zone has a free block of the
    /// order, though memory remains uninitialised; an allocation that may grow
    /// would be served.
    WouldGrow {
        /// The order asked for.
        order: u32,
    },
    /// The allocation was made from inside the backing's `populate` or `accept`
    /// (on the same [`Config::context`]), and no eligible zone had a free block:
    /// serving it would have meant initialising a chunk, or waiting for the one
    /// the caller's own stack is initialising.
    Reentrant {
        /// The order asked for.
        order: u32,
    },
}

impl core::error::Error for AllocError {}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::OrderTooLarge { order } => {
                write!(f, "order {order} is above the maximum order {MAX_ORDER}")
            }
            AllocError::UnknownNode { node } => write!(f, "{node} is not in the layout"),
            AllocError::UnknownCpu { cpu, cpus } => {
                write!(f, "{cpu} has no page cache: {cpus} were lent at start-up")
            }
            AllocError::OutOfMemory { order, constraint } => write!(
                f,
                "out of memory: no free block of order {order} in any zone allowed by {constraint:?}"
            ),
            AllocError::Backing(e) => e.fmt(f),
            AllocError::WouldGrow { order } => write!(
                f,
                "no free block of order {order} without initialising memory, which this allocation may not do (NO_GROW)"
            ),
            AllocError::Reentrant { order } => write!(
                f,
                "an allocation of order {order} from inside the memmap backing found no free block, and may not initialise memory there"
            ),
        }
    }
}

/// A free the allocator refused: the descriptor says the caller is wrong. Nothing
/// was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The order is above [`MAX_ORDER`].
    OrderTooLarge {
        /// The order given.
        order: u32,
    },
    /// The CPU has no cache: its id is not below the number of caches lent.
    UnknownCpu {
        /// The CPU named.
        cpu: CpuId,
        /// Caches lent at start-up.
        cpus: usize,
    },
    /// The page's descriptor cannot be read: outside present memory, or never
    /// initialised (so never allocated).
    Lookup(LookupError),
    /// The page is reserved (a hole, a reserved range, the memmap): never allocated.
    Reserved {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The page heads a free block, on a free list or in a CPU's cache: a double
    /// free.
    DoubleFree {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The page lies inside a block, not at its head: a double free of a block that
    /// has since merged, or a pfn that was never returned by `alloc`.
    NotBlockHead {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The block was allocated with another order (only from the order-checked
    /// frees, [`Allocator::free_order`] and [`Allocator::free_order_on`]).
    WrongOrder {
        /// The pfn given.
        pfn: Pfn,
        /// The order it was allocated with.
        allocated: u32,
        /// The order given.
        given: u32,
    },
}

impl core::error::Error for FreeError {}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::OrderTooLarge { order } => {
                write!(
                    f,
                    "free of order {order}, above the maximum order {MAX_ORDER}"
                )
            }
            FreeError::UnknownCpu { cpu, cpus } => {
                write!(f, "{cpu} has no page cache: {cpus} were lent at start-up")
            }
            FreeError::Lookup(e) => write!(f, "free of a page that was never allocated: {e}"),
            FreeError::Reserved { pfn } => write!(f, "free of reserved page {pfn}"),
            FreeError::DoubleFree { pfn } => write!(f, "double free of {pfn}"),
            FreeError::NotBlockHead { pfn } => write!(
                f,
                "free of {pfn}, which is inside a block, not at its head (double free?)"
            ),
            FreeError::WrongOrder {
                pfn,
                allocated,
                given,
            } => write!(
                f,
                "free of {pfn} with order {given}, but it was allocated with order {allocated}"
            ),
        }
    }
}

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
}

/// How many times an allocation that found every zone empty drains the CPU caches
/// and looks again before it reports `OutOfMemory`. Each round runs only if the
/// previous drain found pages, so it ends early on a truly full machine; the bound
/// keeps CPUs that refill as fast as others drain from starving it forever.
const DRAIN_ROUNDS: usize = 8;

/// The number of [`Constraint`]s.
pub(crate) const CONSTRAINTS: usize = 3;

/// Zones to try for one preferred node and constraint: that node's populated zones
/// from the highest allowed down, then each other node's in turn (Linux's
/// zonelist, with nodes ordered by distance from the preferred one modulo count).
#[derive(Clone, Copy)]
pub(crate) struct ZoneList {
    zones: [u8; MAX_NODES * ZONE_TYPES],
    len: u8,
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
        };
        let top = constraint.highest_zone() as usize;
        for i in 0..nodes {
            let n = (node + i) % nodes;
            for z in (0..=top).rev() {
                let index = n * ZONE_TYPES + z;
                if zones[index].is_populated() {
                    list.zones[list.len as usize] = index as u8;
                    list.len += 1;
                }
            }
        }
        list
    }

    #[inline]
    fn zones(&self) -> &[u8] {
        &self.zones[..self.len as usize]
    }
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Allocates a block of 2^`order` pages within `constraint`, preferring
    /// `node`. Returns the first pfn of the block.
    ///
    /// Zones are tried preferred node first, highest allowed zone first. A zone with
    /// no free block but with uninitialised memory is grown (a chunk initialised)
    /// before the next zone is tried, so an allocation fails only when every
    /// eligible zone is fully initialised and has no block of that order.
    #[inline]
    pub fn alloc(
        &self,
        order: u32,
        constraint: Constraint,
        node: NodeId,
    ) -> Result<Pfn, AllocError> {
        self.alloc_traced(order, constraint, node)
            .map(|(pfn, _)| pfn)
    }

    /// [`alloc`](Self::alloc), saying which path served it.
    #[inline]
    pub fn alloc_traced(
        &self,
        order: u32,
        constraint: Constraint,
        node: NodeId,
    ) -> Result<(Pfn, AllocPath), AllocError> {
        self.alloc_in(order, constraint, node, None, AllocFlags::NONE)
    }

    /// [`alloc_traced`](Self::alloc_traced) with `flags`, through `cpu`'s cache
    /// when one is named (see [`Allocator::alloc_on`]).
    #[inline]
    pub fn alloc_with(
        &self,
        cpu: Option<CpuId>,
        order: u32,
        constraint: Constraint,
        node: NodeId,
        flags: AllocFlags,
    ) -> Result<(Pfn, AllocPath), AllocError> {
        let cache = match cpu {
            Some(cpu) => Some(self.cache(cpu)?),
            None => None,
        };
        let (pfn, path) = self.alloc_in(order, constraint, node, cache, flags)?;
        if flags.contains(AllocFlags::ZEROED) {
            if let Err(e) = self.memmap.backing().zero(pfn..Pfn(pfn.0 + (1 << order))) {
                // The block goes back as it came: nothing else saw it.
                let _ = self.free_in(pfn, Some(order), cache);
                return Err(AllocError::Backing(BackingError {
                    section: self.layout.section_of(pfn),
                    ..e
                }));
            }
        }
        Ok((pfn, path))
    }

    /// The allocation path, through `cache` for the cached orders when given.
    #[inline]
    pub(crate) fn alloc_in(
        &self,
        order: u32,
        constraint: Constraint,
        node: NodeId,
        cache: Option<&CpuCache<R>>,
        flags: AllocFlags,
    ) -> Result<(Pfn, AllocPath), AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::OrderTooLarge { order });
        }
        // Checked here once: below `node_count()` (at most MAX_NODES), the index
        // of a zonelist.
        if node.index() >= self.layout.node_count() {
            return Err(AllocError::UnknownNode { node });
        }
        let node = node.index();
        let this_node = flags.contains(AllocFlags::THIS_NODE);
        let no_grow = flags.contains(AllocFlags::NO_GROW);
        let mut path = AllocPath::Fast;
        let mut grow_error = None;
        let mut would_grow = false;
        for zone in self.zonelist(constraint, node) {
            if this_node && zone.node as usize != node {
                continue;
            }
            if let Some(pfn) = self.take(zone, order, cache) {
                return Ok((Pfn(pfn), path));
            }
            let slow = if no_grow {
                // Relaxed: only chooses which error to report.
                would_grow |= zone.uninit.load(core::sync::atomic::Ordering::Relaxed) > 0;
                Ok(None)
            } else {
                self.take_slow(zone, order)
            };
            match slow {
                Ok(Some((pfn, grew))) => {
                    let path = if grew { AllocPath::Grew } else { path };
                    return Ok((Pfn(pfn), path));
                }
                Ok(None) => {}
                // A zone whose memmap cannot be populated now does not stop the
                // fall-back to the next zone; the error is reported only if no
                // zone can serve (a re-entrant call's first).
                Err(e) => {
                    if !matches!(grow_error, Some(ChunkError::Reentrant { .. })) {
                        grow_error = Some(e);
                    }
                }
            }
            path = AllocPath::Fallback;
        }
        self.alloc_after_drain(order, constraint, node, flags)
            .ok_or(match grow_error {
                Some(ChunkError::Backing(e)) => AllocError::Backing(e),
                Some(ChunkError::Reentrant { .. }) => AllocError::Reentrant { order },
                None if would_grow => AllocError::WouldGrow { order },
                None => AllocError::OutOfMemory { order, constraint },
            })
            .map(|pfn| (Pfn(pfn), AllocPath::Fallback))
    }

    /// The last resort of an allocation that found every eligible zone empty, each
    /// after it saw the zone's last source of new memory run dry: blocks may still
    /// sit in CPU caches, or be split between them so that no block of `order`
    /// exists until they merge. Drains every cache back to its zone and looks again,
    /// for as long as draining finds pages.
    /// Blocks away for free page reporting are waited for the same way: they
    /// come back as soon as the host has them.
    #[cold]
    fn alloc_after_drain(
        &self,
        order: u32,
        constraint: Constraint,
        node: usize,
        flags: AllocFlags,
    ) -> Option<u64> {
        let this_node = flags.contains(AllocFlags::THIS_NODE);
        for _ in 0..DRAIN_ROUNDS {
            let drained = self.drain_all_cpus();
            if drained == 0
                && (flags.contains(AllocFlags::NO_GROW)
                    || !self.wait_for_reporting(constraint, node))
            {
                return None;
            }
            for zone in self.zonelist(constraint, node) {
                if this_node && zone.node as usize != node {
                    continue;
                }
                if let Some(pfn) = zone.take(&self.memmap, order) {
                    return Some(pfn);
                }
            }
        }
        None
    }

    /// Waits until no zone an allocation may use has blocks away for free page
    /// reporting; returns whether there were any.
    fn wait_for_reporting(&self, constraint: Constraint, node: usize) -> bool {
        let mut waited = false;
        for zone in self.zonelist(constraint, node) {
            // Relaxed: the count drops under the zone lock as the blocks go back;
            // the take that follows takes that lock after, and finds them.
            while zone.isolated.load(core::sync::atomic::Ordering::Relaxed) > 0 {
                crate::sync::spin_hint();
                waited = true;
            }
        }
        waited
    }

    /// The populated zones an allocation may use, in the order it tries them.
    #[inline]
    fn zonelist(&self, constraint: Constraint, node: usize) -> impl Iterator<Item = &Zone<R>> {
        self.zonelists[node * CONSTRAINTS + constraint as usize]
            .zones()
            .iter()
            .map(|&i| &self.zones[i as usize])
    }

    /// Returns a block that [`alloc`](Self::alloc) handed out, and says its order,
    /// which the block's head descriptor records. The descriptor is checked first:
    /// a double free, a reserved or never-initialised page, or a pfn inside a
    /// block is refused with nothing changed. Of two frees of one block racing,
    /// exactly one succeeds (a compare-and-swap on the head decides).
    #[inline]
    pub fn free(&self, pfn: Pfn) -> Result<u32, FreeError> {
        self.free_in(pfn, None, None)
    }

    /// [`free`](Self::free) for a caller that knows the order, checked against the
    /// descriptor: a different order is [`FreeError::WrongOrder`].
    #[inline]
    pub fn free_order(&self, pfn: Pfn, order: u32) -> Result<(), FreeError> {
        self.free_in(pfn, Some(order), None).map(drop)
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
        // The order the block was allocated with; a head in any other state is
        // refused here. This read decides nothing: the compare-and-swap below,
        // from exactly this state, does.
        let order = match (page.state(), given) {
            (PageState::Allocated { order }, None) => order,
            (_, Some(order)) => order,
            (found, None) => return Err(free_error(pfn, None, found)),
        };
        let zone = &self.zones[zone_index as usize];
        if let Some(cache) = cache {
            if let Some(done) = self.free_cached(cache, zone, page, pfn, order) {
                return done
                    .map(|()| order)
                    .map_err(|found| free_error(pfn, given, found));
            }
        }
        zone.with_free(|area| {
            // The compare-and-swap, not the zone lock, decides between two frees of
            // one block: the other may be going into a CPU cache under its lock.
            page.transition(PageState::Allocated { order }, PageState::Tail)
                .map_err(|found| free_error(pfn, given, found))?;
            area.give(&self.memmap, pfn.0, order, zone_index);
            Ok(order)
        })
    }

    /// The descriptor of `pfn` if its chunk is initialised; never initialises.
    pub fn page(&self, pfn: Pfn) -> Result<&Page, LookupError> {
        self.memmap.page(pfn.0)
    }

    /// The descriptor of `pfn`, initialising its chunk first if no one has (or
    /// waiting for whoever is). From inside the backing (on the same
    /// [`Config::context`]) it neither initialises nor waits:
    /// [`LookupError::Reentrant`].
    pub fn page_or_init(&self, pfn: Pfn) -> Result<&Page, LookupError> {
        loop {
            match self.memmap.page(pfn.0) {
                Err(LookupError::Uninitialised { .. }) => {
                    let index = self.memmap.chunk_of(pfn.0);
                    self.init_chunk(index, crate::init::InitCause::Lookup)
                        .map_err(|e| match e {
                            ChunkError::Backing(e) => LookupError::Backing(e),
                            ChunkError::Reentrant { .. } => LookupError::Reentrant { pfn },
                        })?;
                }
                Err(LookupError::Initialising { .. }) => {
                    if self.reentrant() {
                        return Err(LookupError::Reentrant { pfn });
                    }
                    let index = self.memmap.chunk_of(pfn.0);
                    self.memmap.sections().wait_while_initialising(index);
                }
                other => return other,
            }
        }
    }

    /// The layout the allocator runs on.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The backing under the memmap.
    pub fn backing(&self) -> &B {
        self.memmap.backing()
    }

    /// The strategy chosen at start-up.
    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// Whether every chunk is initialised (the off switch is set).
    pub fn is_fully_initialised(&self) -> bool {
        self.memmap.sections().all_initialised()
    }

    /// Bytes of memmap populated so far.
    pub fn memmap_populated_bytes(&self) -> u64 {
        self.memmap.populated_bytes()
    }

    /// The counters of every zone with present pages, node by node, lowest zone
    /// first. Pages in CPU caches count as free.
    pub fn zone_stats(&self) -> impl Iterator<Item = ZoneStats> + '_ {
        self.zones
            .iter()
            .filter(|z| z.is_populated())
            .map(|z| z.stats(self.cached_pages(z)))
    }

    /// The zone of `node` and type `zone`, if the node is in the layout.
    fn zone(&self, node: NodeId, zone: ZoneType) -> Option<&Zone<R>> {
        if node.index() >= self.layout.node_count() {
            return None;
        }
        self.zones.get(node.index() * ZONE_TYPES + zone as usize)
    }

    /// The counters of `node`'s zone `zone`, if it has present pages.
    pub fn zone_stats_of(&self, node: NodeId, zone: ZoneType) -> Option<ZoneStats> {
        self.zone(node, zone)
            .filter(|z| z.is_populated())
            .map(|z| z.stats(self.cached_pages(z)))
    }

    /// Free blocks of each order on the free lists of `node`'s zone `zone` (takes
    /// the zone lock); blocks in CPU caches are not on them. All zeroes for a node
    /// not in the layout.
    pub fn free_blocks(&self, node: NodeId, zone: ZoneType) -> [u64; MAX_ORDER as usize + 1] {
        self.zone(node, zone)
            .map(|z| z.free_blocks())
            .unwrap_or_default()
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

    /// Pages free or uninitialised across all zones: what a caller watching memory
    /// should count as available.
    pub fn available_pages(&self) -> u64 {
        self.zone_stats().map(|z| z.available()).sum()
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
