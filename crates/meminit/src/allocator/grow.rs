//! Initialising a chunk, and the grow path: an allocation that found its zone
//! empty initialises more of it, one chunk at a time, until it is served.
//!
//! One mechanism serves every strategy: `init_run` claims a chunk (the unit of
//! initialisation, one max-order block by default), or a run of a section's
//! chunks, has the memmap under it
//! populated (its section's, or its own, as the backing asks) and its memory
//! accepted, writes its descriptors, publishes it, then puts its usable pages on
//! their zones' free lists. Eager start-up and the deferred workers
//! ([`super::deferred`]) run it over runs of a section's chunks (one claim,
//! publish, zone lock per usable memory run and finish for the run, which is what
//! brings a pass's bookkeeping down to a few locked instructions per section);
//! the grow path runs it for the one chunk an allocation needs, and a
//! descriptor look-up ([`Allocator::page_or_init`]) for the page it wants.
//! On-demand is the grow path and look-ups alone.
//!
//! This module decides *which* chunk to initialise and *when*; it never writes a
//! descriptor itself (that is [`crate::memmap`]) and holds a zone lock only to
//! splice finished blocks.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use lock_api::RawMutex;

use super::stats::InitCause;
use super::Allocator;
use crate::error::ChunkError;
use crate::memmap::{InitPass, LookupError, MemmapBacking};
use crate::page::{zone_index, Page, PageState, NO_ZONE};
use crate::section::ChunkState;
use crate::types::{MobilityClass, NodeId, Pfn};
use crate::zone::Zone;

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// The descriptor of `pfn`, initialising its chunk first if no one has (or
    /// waiting for whoever is). From inside a callback (on the same
    /// [`Config::context`](crate::Config::context)) it neither initialises nor waits:
    /// [`LookupError::Reentrant`].
    pub fn page_or_init(&self, pfn: Pfn) -> Result<&Page, LookupError> {
        loop {
            match self.memmap.page(pfn.0) {
                Err(LookupError::Uninitialised { .. }) => {
                    let index = self.memmap.chunk_of(pfn.0);
                    self.init_chunk(index, InitCause::Lookup, &mut InitPass::new())
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

    /// Initialises chunk `index` if no one has claimed it: has the memmap under it
    /// populated and its memory accepted, writes every descriptor, publishes it,
    /// and puts its usable pages on their zones' free lists. Returns the pages
    /// freed, or `None` if someone else had it. `pass` is the caller's pass of
    /// initialisation, one for all the chunks it initialises in a row (it picks
    /// the stores, see [`InitPass`]). From inside a callback (on the
    /// same [`Config::context`]) it gives the claim back and says so, rather than
    /// call the backing again or wait for the section's memmap.
    pub(crate) fn init_chunk(
        &self,
        index: usize,
        cause: InitCause,
        pass: &mut InitPass,
    ) -> Result<Option<u64>, ChunkError> {
        let run = self.init_run(index, 1, cause, pass);
        match run.error {
            Some(e) => Err(e),
            None => Ok((run.chunks > 0).then_some(run.pages)),
        }
    }

    /// [`init_chunk`](Self::init_chunk) for a run: chunk `first` and the
    /// `Uninit` chunks after it in its section, up to `most` in all, claimed,
    /// written, published, spliced and finished together (one claim, one
    /// publish, one zone lock per usable memory run rather than per chunk, one
    /// finish), for a pass that initialises chunk after chunk (start-up, a
    /// deferred worker). The run stops at the first chunk that is not `Uninit`
    /// (someone else's, already initialised, or without memory). If a
    /// chunk's populate or accept fails, the chunks before it are initialised
    /// and it and those after it are given back; the result says which.
    pub(crate) fn init_run(
        &self,
        first: usize,
        most: usize,
        cause: InitCause,
        pass: &mut InitPass,
    ) -> RunInit {
        let nothing = |error| RunInit {
            chunks: 0,
            pages: 0,
            next: first + 1,
            error,
        };
        let Ok(claim) = self.memmap.sections().claim_run(first, most) else {
            return nothing(None);
        };
        let populated = match self.config.context {
            Some(context) => {
                let context = context();
                if self.in_backing.contains(context) {
                    return nothing(Some(ChunkError::Reentrant { chunk: first }));
                }
                let _inside = self.in_backing.enter(context, self.config.wait);
                self.memmap.populate(claim, &self.layout, pass)
            }
            None => self.memmap.populate(claim, &self.layout, pass),
        };
        let (mut writer, cut) = match populated {
            Ok(populated) => populated,
            Err(e) => return nothing(Some(ChunkError::Backing(e))),
        };
        let chunks = writer.chunks();
        let taken = writer.taken();
        let (start, _) = self.memmap.chunk_pfns(chunks.start);
        let (_, end) = self.memmap.chunk_pfns(chunks.end - 1);
        for index in chunks.clone() {
            let (s, e) = self.memmap.chunk_pfns(index);
            self.mark_if_shared(index, s, e);
        }
        for run in self.layout.memory_runs(Pfn(start)..Pfn(end)) {
            let (rs, re) = (run.start.0, run.end.0);
            writer.write_run(rs, PageState::Reserved, NO_ZONE);
            let zone = zone_index(run.node, run.zone);
            if run.reserved {
                writer.write_run(re, PageState::Reserved, zone);
                continue;
            }
            let (t0, t1) = clamp(&taken, rs, re);
            writer.write_run(t0, PageState::Tail, zone);
            writer.write_run(t1, PageState::Reserved, zone);
            writer.write_run(re, PageState::Tail, zone);
        }
        writer.write_run(end, PageState::Reserved, NO_ZONE);
        let published = writer.publish();
        let pages = self.free_runs(start, end, &taken);
        // Relaxed: a statistic.
        self.counters.chunks_by[cause as usize].fetch_add(chunks.len() as u64, Relaxed);
        published.finish();
        RunInit {
            chunks: chunks.len(),
            pages,
            // Past the chunk that failed, if one did.
            next: chunks.end + usize::from(cut.is_some()),
            error: cut.map(ChunkError::Backing),
        }
    }

    // `init_run`'s steps, in functions of their own so that unoptimised (where
    // every iterator is a slot in its frame) the grow path that start-up and a
    // first allocation take fits a small stack.

    /// Marks chunk `index`, pfns `[start, end)`, shared if it has usable pages of
    /// two zones: such a chunk is counted under both zones' locks, so it is
    /// marked before any of its blocks is on a list.
    fn mark_if_shared(&self, index: usize, start: u64, end: u64) {
        let mut usable = self
            .layout
            .memory_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved);
        if let Some(first) = usable.next() {
            if usable.any(|r| (r.node, r.zone) != (first.node, first.zone)) {
                self.memmap.sections().mark_chunk_shared(index);
            }
        }
    }

    /// Puts the usable pages of `[start, end)` but `taken` on their zones' free
    /// lists; returns how many.
    fn free_runs(&self, start: u64, end: u64, taken: &core::ops::Range<u64>) -> u64 {
        let mut freed = 0;
        for run in self
            .layout
            .memory_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved)
        {
            let (rs, re) = (run.start.0, run.end.0);
            let zone = &self.zones[zone_index(run.node, run.zone) as usize];
            let (t0, t1) = clamp(taken, rs, re);
            let added = zone.with_free(|area| {
                area.add_run(&self.memmap, rs, t0) + area.add_run(&self.memmap, t1, re)
            });
            freed += added;
            // Relaxed: a counter; its sum with `uninit` is exact when quiescent.
            zone.memmap_pages.fetch_add(t1 - t0, Relaxed);
            // Release: pairs with the Acquire in `grow_and_take`, so a grower that
            // sees the count drop finds these blocks when it takes the zone lock.
            zone.uninit.fetch_sub(run.pages(), Release);
        }
        freed
    }

    /// The slow path of one zone, after a take for `class` found nothing of its
    /// class nor wholly free: returns a block and whether this call initialised
    /// memory for it, or `None` when the zone has nothing of `class` nor wholly
    /// free left, initialised or not. It never steals from the other class: the
    /// allocation tries the next zones first (Linux's `ALLOC_NOFRAGMENT`), and
    /// steals only once no eligible zone has anything else (`alloc_after_drain`).
    ///
    /// The take that failed may have run just before another thread spliced the
    /// zone's last pages, so "nothing left to initialise" is never enough to give
    /// up: every path here observes that first and takes once more after it.
    pub(crate) fn take_slow(
        &self,
        zone: &Zone<R>,
        order: u32,
        class: MobilityClass,
    ) -> Result<Option<(u64, bool)>, ChunkError> {
        // The off switch: once set, this one flag is all that remains of laziness.
        // Acquire (in `all_initialised`) pairs with the Release of the last
        // section's finish, which comes after every section's splice.
        if self.memmap.sections().all_initialised() {
            if let Some(pfn) = zone.take(&self.memmap, order, class, false) {
                return Ok(Some((pfn, false)));
            }
            // A chunk given back may have turned the switch off again, just before
            // its blocks left the lists: seen here, after the take's lock.
            if self.memmap.sections().all_initialised() {
                return Ok(None);
            }
        }
        self.grow_and_take(zone, order, class)
    }

    /// Alternately look at what is left to initialise in `zone`, take a block, and
    /// initialise more of the zone, until a block is found or the zone was seen with
    /// nothing left to initialise before a take that failed. No take here steals.
    fn grow_and_take(
        &self,
        zone: &Zone<R>,
        order: u32,
        class: MobilityClass,
    ) -> Result<Option<(u64, bool)>, ChunkError> {
        let started = self.config.clock.map(|now| now());
        let mut grew = false;
        let result = loop {
            // Observe first, then take. Acquire: pairs with the Release decrement in
            // `init_run`, which follows that run's splice; so when this sees
            // zero, the take below sees every page that was ever spliced here.
            let left = zone.uninit.load(Acquire);
            if let Some(pfn) = zone.take(&self.memmap, order, class, false) {
                break Ok(Some(pfn));
            }
            // A give-back counts its chunk uninitialised under the zone lock
            // before its blocks leave the lists; a take that missed them took
            // that lock after, so this second look sees the count.
            if left == 0 && zone.uninit.load(Acquire) == 0 {
                break Ok(None);
            }
            // Whether this pass initialised a chunk or someone else is finishing
            // the zone's last ones, the next pass looks again.
            match self.grow_zone(zone) {
                Ok(initialised) => grew |= initialised,
                Err(e) => break Err(e),
            }
        };
        if grew {
            self.counters.grows.fetch_add(1, Relaxed);
            if let (Some(now), Some(t0)) = (self.config.clock, started) {
                self.counters
                    .grow_time
                    .fetch_add(now().saturating_sub(t0), Relaxed);
            }
        }
        result.map(|found| found.map(|pfn| (pfn, grew)))
    }

    /// Initialises one more chunk holding usable pages of `zone` (returns true), or
    /// waits for whoever is initialising the last ones (false). A chunk whose memmap
    /// cannot be populated (or whose memory cannot be accepted) is passed over for
    /// the next; its error is returned only if no chunk could be initialised. From
    /// inside a callback, neither initialises nor waits: `Reentrant`.
    fn grow_zone(&self, zone: &Zone<R>) -> Result<bool, ChunkError> {
        let sections = self.memmap.sections();
        let (first, end) = zone.chunks(self.memmap.chunk_shift());
        // Relaxed: the cursor is only a hint of where unclaimed sections start;
        // the claim decides who initialises what.
        let cursor = zone.grow_cursor.load(Relaxed).clamp(first, end);
        let mut busy = None;
        let mut failed = None;
        // From the cursor on, then from the start, in case a claimant gave a
        // chunk back after its backing failed.
        for index in (cursor..end).chain(first..cursor) {
            let state = sections.state(index);
            if !matches!(state, ChunkState::Uninit | ChunkState::Initialising)
                || !self.chunk_has_usable(index, zone)
            {
                continue;
            }
            if state == ChunkState::Initialising {
                busy = Some(index);
                continue;
            }
            match self.init_chunk(index, InitCause::Grow, &mut InitPass::new()) {
                Ok(Some(_)) => {
                    zone.grow_cursor.store(index + 1, Relaxed);
                    self.pacing
                        .grew(zone_index(NodeId(zone.node as u32), zone.kind) as usize);
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e @ ChunkError::Reentrant { .. }) => return Err(e),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(index) = busy {
            if self.reentrant() {
                return Err(ChunkError::Reentrant { chunk: index });
            }
            sections.wait_while_initialising(index);
            return Ok(false);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        zone.grow_cursor.store(end, Relaxed);
        // Every chunk is Ready, but one may still be splicing its pages: the
        // caller's next look at the zone's count tells.
        crate::sync::spin_hint();
        Ok(false)
    }

    /// Whether the calling context is inside a callback (known only with a
    /// [`Config::context`]). Only for the paths that would initialise or wait.
    pub(crate) fn reentrant(&self) -> bool {
        self.config
            .context
            .is_some_and(|context| self.in_backing.contains(context()))
    }

    /// Makes `callback`, a call of one of the embedder's callbacks (the
    /// backing's `depopulate` or `zero`, a reporter's `report`), with the calling
    /// context recorded inside a callback for its length, so that whatever it
    /// asks of the allocator is served from initialised free memory or refused
    /// (`Reentrant`), never made to wait for what its own caller holds.
    /// (`populate` and `accept` are recorded by `init_run`, which refuses to
    /// claim a chunk from inside a callback first.)
    pub(crate) fn in_callback<T>(&self, callback: impl FnOnce() -> T) -> T {
        let _inside = self
            .config
            .context
            .map(|context| self.in_backing.enter(context(), self.config.wait));
        callback()
    }

    /// Whether chunk `index` holds usable pages of `zone`.
    fn chunk_has_usable(&self, index: usize, zone: &Zone<R>) -> bool {
        let (s, e) = self.memmap.chunk_pfns(index);
        let s = Pfn(s).max(zone.span.start_pfn);
        let e = Pfn(e).min(zone.span.end_pfn);
        s < e
            && self
                .layout
                .memory_runs(s..e)
                .any(|r| !r.reserved && r.node.index() == zone.node as usize && r.zone == zone.kind)
    }
}

/// What one [`Allocator::init_run`] did.
#[derive(Debug)]
pub(crate) struct RunInit {
    /// Chunks it initialised, from the first on.
    pub chunks: usize,
    /// Pages it put on free lists.
    pub pages: u64,
    /// Where the caller's pass goes on: the chunk after the run, or after the
    /// chunk that failed.
    pub next: usize,
    /// Why chunk `next - 1` could not be initialised (nothing was if it is the
    /// first), if one could not.
    pub error: Option<ChunkError>,
}

/// `taken` clipped to `[start, end)`: an empty range at `start` or `end` when
/// they do not meet.
fn clamp(taken: &core::ops::Range<u64>, start: u64, end: u64) -> (u64, u64) {
    let t0 = taken.start.clamp(start, end);
    (t0, taken.end.clamp(t0, end))
}
