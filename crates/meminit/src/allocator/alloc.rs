//! The allocation path. The common case first, alone: a block of a cached order
//! popped from the calling CPU's stock for the first zone the walk would try
//! (unless THIS_NODE rules that zone out; one `try_lock`, nothing else set up). Otherwise the walk: take a block from
//! the first zone of the list that has one (through the calling CPU's cache for
//! the cached orders, [`super::cached`]); only when a zone has none, grow it
//! ([`super::grow`]), and only when no eligible zone has memory of the class,
//! wholly free or to initialise, steal from the other mobility class's chunks.
//! Before it reports [`AllocError::OutOfMemory`] it drains every CPU's cache
//! back to the zones and looks again, stealing too.

use lock_api::RawMutex;

use super::hotplug::{defers_hotplug_only, has_present};
use super::request::{AllocFlags, AllocPath, AllocRequest};
use super::{Allocator, CONSTRAINTS};
use crate::cpu_cache::CpuCache;
use crate::error::{AllocError, ChunkError};
use crate::memmap::{BackingError, MemmapBacking};
use crate::types::{Constraint, MobilityClass, NodeId, Pfn, MAX_ORDER};
use crate::zone::Zone;

/// How many times an allocation that found every zone empty drains the CPU caches
/// and looks again before it reports `OutOfMemory`. Each round runs only if the
/// previous drain found pages, so it ends early on a truly full machine; the bound
/// keeps CPUs that refill as fast as others drain from starving it forever.
const DRAIN_ROUNDS: usize = 8;

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Allocates what `request` asks for: a block of 2^order pages within its
    /// constraint, preferring its node, through its CPU's cache for the cached
    /// orders. Returns the block's first pfn.
    ///
    /// Zones are tried preferred node first, highest allowed zone first. A zone
    /// with no free block but with uninitialised memory is grown (a chunk
    /// initialised) before the next zone is tried, so an allocation fails only
    /// when every eligible zone is fully initialised and has no block of that
    /// order (after draining every CPU's cache and looking again), or when its
    /// flags forbid what would serve it.
    #[inline]
    pub fn alloc(&self, request: AllocRequest) -> Result<Pfn, AllocError> {
        self.alloc_traced(request).map(|(pfn, _)| pfn)
    }

    /// [`alloc`](Self::alloc), saying which path served it: what a simulator or
    /// a tracing kernel counts.
    #[inline]
    pub fn alloc_traced(&self, request: AllocRequest) -> Result<(Pfn, AllocPath), AllocError> {
        let AllocRequest {
            order,
            cpu,
            constraint,
            node,
            flags,
        } = request;
        let cache = match cpu {
            Some(cpu) => Some(self.cache(cpu)?),
            None => None,
        };
        let (pfn, path) = self.alloc_in(order, constraint, node, cache, flags)?;
        if flags.contains(AllocFlags::ZEROED) {
            let block = pfn..Pfn(pfn.0 + (1 << order));
            if let Err(e) = self.in_callback(|| self.memmap.backing().zero(block)) {
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
        if let Some(cache) = cache {
            if let Some(pfn) = self.pop_stocked(order, constraint, node, cache, flags) {
                return Ok((Pfn(pfn), AllocPath::Fast));
            }
        }
        self.alloc_walk(order, constraint, node, cache, flags)
    }

    /// The common allocation, alone: a block of a cached order popped from
    /// `cache`'s stock for the first zone the walk would try, with nothing
    /// else set up. `None` when that stock has none to hand out (or the cache
    /// is busy, or holds another node's blocks): the walk then does what it
    /// always does, from that zone on (refilling the stock when it serves
    /// that zone, taking from the zone's lists when not). Kept apart so
    /// that the walk's state stays off this path.
    #[inline]
    fn pop_stocked(
        &self,
        order: u32,
        constraint: Constraint,
        node: usize,
        cache: &CpuCache<R>,
        flags: AllocFlags,
    ) -> Option<u64> {
        let class = flags.class();
        let zone = self.zones_for(constraint, node, class).next()?;
        if flags.contains(AllocFlags::THIS_NODE) && zone.node as usize != node {
            return None;
        }
        self.pop_cached(zone, order, cache, class)
    }

    /// Walks the zone list: takes from each zone in turn, through `cache`
    /// for the cached orders, growing a zone that has none, then falls back
    /// to the drains and steals of [`alloc_after_drain`](Self::alloc_after_drain).
    /// `node` is checked (below the node count).
    #[inline(never)]
    fn alloc_walk(
        &self,
        order: u32,
        constraint: Constraint,
        node: usize,
        cache: Option<&CpuCache<R>>,
        flags: AllocFlags,
    ) -> Result<(Pfn, AllocPath), AllocError> {
        let this_node = flags.contains(AllocFlags::THIS_NODE);
        let no_grow = flags.contains(AllocFlags::NO_GROW);
        let class = flags.class();
        let mut path = AllocPath::Fast;
        let mut grow_error = None;
        let mut would_grow = false;
        for zone in self.zones_for(constraint, node, class) {
            if this_node && zone.node as usize != node {
                continue;
            }
            if let Some(pfn) = self.take(zone, order, cache, class) {
                return Ok((Pfn(pfn), path));
            }
            let slow = if no_grow {
                // Relaxed: only chooses which error to report.
                would_grow |= zone.uninit.load(core::sync::atomic::Ordering::Relaxed) > 0;
                // What cannot grow steals too, but only after every zone
                // was tried for its own class (`alloc_after_drain`).
                Ok(zone
                    .take(&self.memmap, order, class, false)
                    .map(|pfn| (pfn, false)))
            } else {
                self.take_slow(zone, order, class)
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
        // Growth that failed in the walk is reported, not tried again here.
        let may_grow = !no_grow && grow_error.is_none();
        self.alloc_after_drain(order, constraint, node, flags, may_grow)
            .ok_or_else(|| match grow_error {
                Some(ChunkError::Backing(e)) => AllocError::Backing(e),
                Some(ChunkError::Reentrant { .. }) => AllocError::Reentrant { order },
                None if would_grow => AllocError::WouldGrow { order },
                // From inside a callback, blocks out for reporting were not
                // waited for: perhaps the caller's own batch.
                None if self.reporting(constraint, node) && self.reentrant() => {
                    AllocError::Reentrant { order }
                }
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
    /// come back as soon as the host has them. A chunk given back (made
    /// uninitialised again) after the walk saw the zone fully initialised is
    /// grown into, free memory all the same, when `may_grow` (the request
    /// allows growth and none failed in the walk: that error is reported).
    #[cold]
    fn alloc_after_drain(
        &self,
        order: u32,
        constraint: Constraint,
        node: usize,
        flags: AllocFlags,
        may_grow: bool,
    ) -> Option<u64> {
        let this_node = flags.contains(AllocFlags::THIS_NODE);
        // First a look that steals, which a zone whose growth failed never had.
        for zone in self.zones_for(constraint, node, flags.class()) {
            if this_node && zone.node as usize != node {
                continue;
            }
            if let Some(pfn) = zone.take(&self.memmap, order, flags.class(), true) {
                return Some(pfn);
            }
        }
        let mut waiting = None;
        for _ in 0..DRAIN_ROUNDS {
            let drained = self.drain_all_cpus();
            // A look after every drain, even one that found nothing: another
            // allocation's drain may have put blocks on the lists just now
            // (this one's flush waited for it; see `Depot::take_all`).
            let mut given_back = false;
            for zone in self.zonelist(constraint, node) {
                if this_node && zone.node as usize != node {
                    continue;
                }
                if let Some(pfn) = zone.take(&self.memmap, order, flags.class(), true) {
                    return Some(pfn);
                }
                // A chunk given back since the walk saw the zone's last
                // uninitialised page go: memory all the same, so grow into it.
                // Relaxed: a hint; `take_slow` observes the count with Acquire
                // before it decides anything.
                if may_grow && zone.uninit.load(core::sync::atomic::Ordering::Relaxed) > 0 {
                    given_back = true;
                    if let Ok(Some((pfn, _))) = self.take_slow(zone, order, flags.class()) {
                        return Some(pfn);
                    }
                }
            }
            // The look is done: reporting may go on in these zones.
            drop(waiting.take());
            if drained == 0 && !given_back {
                if flags.contains(AllocFlags::NO_GROW) {
                    return None;
                }
                waiting = Some(self.wait_for_reporting(constraint, node)?);
            }
        }
        None
    }

    /// Waits until no zone an allocation may use has blocks away for free page
    /// reporting (spinning a while, then calling [`Config::wait`] between
    /// looks); returns `None` if there were none. Until the returned wait is
    /// dropped (after the look that follows), reporting isolates no more blocks
    /// of those zones: a reporter that runs pass after pass cannot keep the
    /// allocation from the blocks it waited for. From inside a callback it never
    /// waits (the batch away may be its own caller's, a reporter's) and returns
    /// `None`.
    ///
    /// [`Config::wait`]: crate::Config::wait
    fn wait_for_reporting(&self, constraint: Constraint, node: usize) -> Option<ReportWait<'_, R>> {
        if !self.reporting(constraint, node) || self.reentrant() {
            return None;
        }
        let wait = ReportWait::new(
            &self.zones,
            self.zonelists[node * CONSTRAINTS + constraint as usize].zones(),
        );
        for zone in self.zonelist(constraint, node) {
            let mut backoff = crate::sync::Backoff::new(self.config.wait);
            // Relaxed: the count drops under the zone lock as the blocks go back;
            // the take that follows takes that lock after, and finds them.
            while zone.isolated.load(core::sync::atomic::Ordering::Relaxed) > 0 {
                backoff.pause();
            }
        }
        Some(wait)
    }

    /// Whether a zone an allocation may use has blocks away for free page
    /// reporting (a snapshot).
    fn reporting(&self, constraint: Constraint, node: usize) -> bool {
        // Relaxed: a snapshot; see `wait_for_reporting`.
        self.zonelist(constraint, node)
            .any(|zone| zone.isolated.load(core::sync::atomic::Ordering::Relaxed) > 0)
    }

    /// The populated zones an allocation may use, in the order it tries them.
    /// The zones an allocation of `class` tries, in order: the zone list less
    /// the zones with nothing present now, those whose memory is all
    /// hot-pluggable last for unmovable allocations (see [`super::hotplug`]).
    #[inline]
    fn zones_for(
        &self,
        constraint: Constraint,
        node: usize,
        class: MobilityClass,
    ) -> ZonesFor<'_, R> {
        let list = &self.zonelists[node * CONSTRAINTS + constraint as usize];
        ZonesFor {
            zones: &self.zones,
            list: list.zones(),
            next: 0,
            hotplug: list.has_hotplug_only(),
            defer: defers_hotplug_only(class),
            late_pass: false,
        }
    }

    #[inline]
    fn zonelist(&self, constraint: Constraint, node: usize) -> impl Iterator<Item = &Zone<R>> {
        self.zonelists[node * CONSTRAINTS + constraint as usize]
            .zones()
            .iter()
            .map(|&i| &self.zones[i as usize])
    }
}

/// The zones an allocation tries ([`Allocator::zones_for`]). A zone list
/// holds only zones with memory present or hot-pluggable, so only a zone of
/// hot-pluggable memory alone can have nothing present now: a list without
/// one is walked as it is, with no check per zone. With one, such a zone is
/// skipped while nothing of it is present, and for a class that defers such
/// zones it comes in a second walk, after every other zone. A plain loop
/// rather than chained filters: it is on every allocation's path.
pub(super) struct ZonesFor<'a, R: RawMutex> {
    zones: &'a [Zone<R>],
    list: &'a [u8],
    next: usize,
    /// The list has a zone of hot-pluggable memory alone.
    hotplug: bool,
    /// The class tries such zones last.
    defer: bool,
    /// In the second walk (only with `hotplug` and `defer`).
    late_pass: bool,
}

impl<'a, R: RawMutex> Iterator for ZonesFor<'a, R> {
    type Item = &'a Zone<R>;

    #[inline]
    fn next(&mut self) -> Option<&'a Zone<R>> {
        loop {
            let Some(&index) = self.list.get(self.next) else {
                if self.hotplug && self.defer && !self.late_pass {
                    self.late_pass = true;
                    self.next = 0;
                    continue;
                }
                return None;
            };
            self.next += 1;
            let zone = &self.zones[index as usize];
            if !self.hotplug {
                return Some(zone);
            }
            let hot = zone.is_hotplug_only();
            // Early walk: every zone but the deferred ones; late walk: only those.
            let in_this_walk = if self.late_pass {
                hot
            } else {
                !(hot && self.defer)
            };
            if in_this_walk && (!hot || has_present(zone)) {
                return Some(zone);
            }
        }
    }
}

/// An allocation waiting for blocks away for free page reporting, registered in
/// every zone of its list (`Zone::report_waiters`) so that reporting isolates no
/// more of their blocks; dropping it, after the allocation's next look,
/// unregisters it.
struct ReportWait<'s, R: RawMutex> {
    zones: &'s [Zone<R>],
    /// The allocation's zone list: indices into `zones`.
    list: &'s [u8],
}

impl<'s, R: RawMutex> ReportWait<'s, R> {
    fn new(zones: &'s [Zone<R>], list: &'s [u8]) -> Self {
        let wait = ReportWait { zones, list };
        for zone in wait.zones() {
            // Under the zone lock, which the reporter holds when it looks at
            // the count before isolating: its next batch sees this.
            zone.with_free(|_| {
                zone.report_waiters
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed)
            });
        }
        wait
    }

    fn zones(&self) -> impl Iterator<Item = &'s Zone<R>> + '_ {
        self.list.iter().map(|&i| &self.zones[i as usize])
    }
}

impl<R: RawMutex> Drop for ReportWait<'_, R> {
    fn drop(&mut self) {
        for zone in self.zones() {
            // Relaxed: a reporter that still sees the waiter holds back one
            // batch more, nothing else.
            zone.report_waiters
                .fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
}
