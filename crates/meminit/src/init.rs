//! Initialisation: eager, deferred and on-demand; the grow path; work for workers.
//!
//! One mechanism serves every strategy: `Allocator::init_chunk` claims a chunk (the
//! unit of initialisation, one max-order block by default), has the memmap under it
//! populated (its section's, or its own, as the backing asks) and its memory
//! accepted, writes its descriptors, publishes it, then puts its usable pages on
//! their zones' free lists. Eager runs it for every chunk at start-up; deferred runs
//! it from the embedder's workers ([`Allocator::run_deferred_worker`]), which take a
//! section's chunks at a time from a per-node atomic cursor; the grow path runs it
//! from an allocation that found its zone empty, one chunk at a time until the
//! allocation succeeds; a descriptor look-up runs it for the page it wants.
//! On-demand is the grow path and look-ups alone.
//!
//! This module decides *which* chunk to initialise and *when*; it never writes a
//! descriptor itself (that is [`crate::memmap`]) and holds a zone lock only to splice
//! finished blocks.

use core::str::FromStr;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use lock_api::RawMutex;

use crate::allocator::Allocator;
use crate::layout::{Layout, LayoutError, NodeId, Pfn, MAX_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::memmap::{BackingError, MemmapBacking};
use crate::page::{zone_index, PageState, NO_ZONE};
use crate::pcp::CpuCache;
use crate::section::{ChunkState, SectionSlot, MAX_CHUNKS_PER_SECTION};
use crate::zone::Zone;

/// When descriptors are initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Every chunk at start-up, on the calling thread.
    Eager,
    /// Nothing at start-up; the rest by [`Allocator::run_deferred_worker`] in
    /// parallel, and by the grow path for whatever is needed before they finish.
    Deferred,
    /// Nothing at start-up and nothing in the background: only what allocations and
    /// look-ups need.
    OnDemand,
}

impl Strategy {
    /// All strategies.
    pub const ALL: [Strategy; 3] = [Strategy::Eager, Strategy::Deferred, Strategy::OnDemand];

    /// The strategy's name on a command line (`meminit=` in the guest).
    pub const fn name(self) -> &'static str {
        match self {
            Strategy::Eager => "eager",
            Strategy::Deferred => "deferred",
            Strategy::OnDemand => "ondemand",
        }
    }
}

/// A strategy name that is not one of `eager`, `deferred`, `ondemand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownStrategy;

impl core::error::Error for UnknownStrategy {}

impl core::fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("unknown strategy: expected eager, deferred or ondemand")
    }
}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eager" => Ok(Strategy::Eager),
            "deferred" => Ok(Strategy::Deferred),
            "ondemand" | "on-demand" => Ok(Strategy::OnDemand),
            _ => Err(UnknownStrategy),
        }
    }
}

/// The default unit of initialisation: one max-order block (4 MiB of memory, 1024
/// descriptors, 64 KiB of memmap).
pub const DEFAULT_CHUNK_SIZE: u64 = PAGE_SIZE << MAX_ORDER;

/// Start-up choices.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// When descriptors are initialised.
    pub strategy: Strategy,
    /// A monotonic clock in the embedder's unit (nanoseconds on a host, TSC ticks in
    /// a kernel), used only to report time spent growing. `None`: not measured.
    pub clock: Option<fn() -> u64>,
    /// Bytes of memory per chunk, the unit of initialisation: a power of two from
    /// one max-order block ([`DEFAULT_CHUNK_SIZE`]) up to a section, with at most
    /// [`MAX_CHUNKS_PER_SECTION`] chunks per section.
    pub chunk_size: u64,
    /// Whether [`Allocator::give_back`] and [`Allocator::report_free`] return
    /// chunks whose pages all stayed free to uninitialised, releasing their
    /// memmap. On by default for [`Strategy::OnDemand`], whose point is that
    /// memmap follows use.
    pub give_back: bool,
    /// Bytes of initialised free memory each zone keeps when giving chunks back,
    /// so that a workload that frees and allocates again does not make the
    /// allocator give back and initialise the same chunks over and over.
    pub give_back_reserve: u64,
    /// Names the calling context: the CPU number (read with preemption off) in a
    /// kernel, a thread id on a host; any value but `u64::MAX`, the same for the
    /// whole of a call into the allocator. With it, a call back into the allocator
    /// from inside the backing's `populate` or `accept` on the same context is
    /// told apart from a wait on another CPU, and fails
    /// ([`crate::AllocError::Reentrant`], [`crate::LookupError::Reentrant`],
    /// [`ChunkError::Reentrant`]) where it would otherwise wait forever for the
    /// chunk its own caller holds. It is called only on the paths that initialise
    /// or wait for a chunk, never on the fast path. `None`: no such check (a
    /// backing that calls back may then hang).
    pub context: Option<fn() -> u64>,
}

/// The default [`Config::give_back_reserve`]: four default chunks per zone.
pub const DEFAULT_GIVE_BACK_RESERVE: u64 = 4 * DEFAULT_CHUNK_SIZE;

impl Config {
    /// `strategy`, with no clock, the default chunk size, and give-back on for
    /// [`Strategy::OnDemand`] only, keeping [`DEFAULT_GIVE_BACK_RESERVE`].
    pub const fn new(strategy: Strategy) -> Self {
        Config {
            strategy,
            clock: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            give_back: matches!(strategy, Strategy::OnDemand),
            give_back_reserve: DEFAULT_GIVE_BACK_RESERVE,
            context: None,
        }
    }

    /// Checks the configuration against `layout`; returns log2 of the pages in a
    /// chunk.
    pub fn chunk_shift(&self, layout: &Layout) -> Result<u32, InitError> {
        let section = layout.section_pages() * PAGE_SIZE;
        let chunk = self.chunk_size;
        if !chunk.is_power_of_two()
            || !(DEFAULT_CHUNK_SIZE..=section).contains(&chunk)
            || section / chunk > MAX_CHUNKS_PER_SECTION as u64
        {
            return Err(InitError::BadChunkSize { chunk, section });
        }
        Ok(chunk.trailing_zeros() - PAGE_SHIFT)
    }
}

/// Who initialised a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitCause {
    Boot = 0,
    Worker = 1,
    Grow = 2,
    Lookup = 3,
}

/// Counters of initialisation work. All `Relaxed`: statistics, ordered by nothing.
pub(crate) struct InitCounters {
    chunks_by: [AtomicU64; 4],
    /// Chunks given back to uninitialised.
    pub(crate) given_back: AtomicU64,
    grows: AtomicU64,
    grow_time: AtomicU64,
}

impl InitCounters {
    pub(crate) const fn new() -> Self {
        InitCounters {
            chunks_by: [const { AtomicU64::new(0) }; 4],
            given_back: AtomicU64::new(0),
            grows: AtomicU64::new(0),
            grow_time: AtomicU64::new(0),
        }
    }
}

/// What initialisation has done so far, in chunks (the unit of initialisation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitStats {
    /// Bytes of memory per chunk.
    pub chunk_bytes: u64,
    /// Chunks with present pages.
    pub chunks_present: u64,
    /// Of those, chunks whose pages are all on the free lists.
    pub chunks_done: u64,
    /// Chunks initialised at start-up.
    pub by_boot: u64,
    /// Chunks initialised by deferred workers.
    pub by_workers: u64,
    /// Chunks initialised by the grow path.
    pub by_growth: u64,
    /// Chunks initialised by descriptor look-ups.
    pub by_lookup: u64,
    /// Allocations that grew a zone.
    pub grows: u64,
    /// Time those allocations spent growing, in the unit of [`Config::clock`].
    pub grow_time: u64,
    /// Bytes of memmap populated.
    pub memmap_bytes: u64,
    /// Whether the off switch is set.
    pub fully_initialised: bool,
    /// Chunks given back to uninitialised so far ([`Config::give_back`]); each is
    /// counted again in the `by_*` figures when it is initialised anew.
    pub given_back: u64,
}

/// How many times a deferred worker tries again, after its pass over its node,
/// each chunk whose initialisation failed.
pub const WORKER_RETRIES: u32 = 3;

/// Why a chunk could not be initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The backing could not populate the memmap under it, or accept its memory.
    Backing(BackingError),
    /// Asked from inside the backing's `populate` or `accept`, on the same
    /// [`Config::context`]: initialising there could wait for the chunk the
    /// caller's own stack holds.
    Reentrant {
        /// The chunk.
        chunk: usize,
    },
}

impl core::error::Error for ChunkError {}

impl core::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ChunkError::Backing(e) => e.fmt(f),
            ChunkError::Reentrant { chunk } => write!(
                f,
                "chunk {chunk} cannot be initialised from inside the memmap backing"
            ),
        }
    }
}

/// What one call of [`Allocator::run_deferred_worker`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// The node the worker ran for.
    pub node: NodeId,
    /// Chunks this worker initialised.
    pub chunks: u64,
    /// Pages it put on free lists.
    pub pages: u64,
    /// Chunks it could not initialise, even after [`WORKER_RETRIES`] more tries:
    /// they stay uninitialised, and the grow path or a later worker tries them
    /// again when they are needed.
    pub failed: u64,
    /// Why the last of those failed.
    pub error: Option<ChunkError>,
}

/// Why the allocator could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The section-state slice is shorter than [`Layout::section_count`].
    TooFewSlots {
        /// Slots needed.
        needed: usize,
        /// Slots given.
        given: usize,
    },
    /// [`Config::chunk_size`] is not a power of two from one max-order block to a
    /// section, or divides a section into more than [`MAX_CHUNKS_PER_SECTION`].
    BadChunkSize {
        /// The chunk size asked for, in bytes.
        chunk: u64,
        /// The layout's section size, in bytes.
        section: u64,
    },
    /// A section slot is owned by another live allocator: slots must be fresh
    /// ([`SectionSlot::new`]) or given back by dropping the allocator that had them.
    SlotsInUse {
        /// The first slot found in use.
        index: usize,
    },
    /// [`MemmapBacking::descriptors`] is not 64-byte aligned, as its contract
    /// requires.
    MisalignedMemmap,
    /// Eager start-up could not populate the memmap.
    Backing(BackingError),
    /// The memory map given to [`Allocator::build_in_place`] is not valid.
    Layout(LayoutError),
}

impl core::error::Error for InitError {}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::TooFewSlots { needed, given } => write!(
                f,
                "the layout has {needed} sections but only {given} section slots were given"
            ),
            InitError::SlotsInUse { index } => write!(
                f,
                "section slot {index} is in use by another allocator: lend fresh slots, or drop that allocator first"
            ),
            InitError::MisalignedMemmap => f.write_str(
                "the backing's descriptor array (MemmapBacking::descriptors) is not 64-byte aligned",
            ),
            InitError::BadChunkSize { chunk, section } => write!(
                f,
                "chunk size {chunk:#x} must be a power of two from {DEFAULT_CHUNK_SIZE:#x} (one max-order block) up to the section size {section:#x}, and at least 1/{MAX_CHUNKS_PER_SECTION} of it"
            ),
            InitError::Backing(e) => e.fmt(f),
            InitError::Layout(e) => write!(f, "the memory map is not valid: {e}"),
        }
    }
}

impl<'a, B: MemmapBacking, R: RawMutex> Allocator<'a, B, R> {
    /// Starts an allocator over `layout`, with descriptors in `backing`, section
    /// states in `slots` (at least [`Layout::section_count`] of them, fresh: each is
    /// marked owned with a compare-and-swap, refused with
    /// [`InitError::SlotsInUse`] if another live allocator owns it, and fresh again
    /// when this allocator is dropped) and one page cache per CPU in `cpus` (emptied; may be empty,
    /// and then every allocation goes to the zones).
    ///
    /// With [`Strategy::Eager`] every chunk is initialised before this returns;
    /// otherwise nothing is, and the allocator serves at once: start-up costs two
    /// words per section and work per memory-map range, nothing per page.
    ///
    /// The allocator (about 26 KB) and `layout` (about 10 KB) are moved by value:
    /// on a small stack, start up in place instead
    /// ([`init_in_place`](Self::init_in_place), [`build_in_place`](Self::build_in_place)).
    pub fn new(
        layout: Layout,
        backing: B,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<Self, InitError> {
        Self::start_by_value(&layout, backing, slots, cpus, config)
    }

    /// Runs one deferred worker for `node` until the node has no chunk left to hand
    /// out. Call it from as many threads (or CPUs) per node as you like: each takes
    /// a section's chunks at a time from the node's cursor, without a lock, and
    /// skips those the grow path or a look-up already took. Returns at once under
    /// any strategy but [`Strategy::Deferred`], and for a node not in the layout.
    ///
    /// A chunk whose memmap cannot be populated (or whose memory cannot be
    /// accepted) does not stop the worker: it goes on with the node's other
    /// chunks, then tries each failed one again, up to [`WORKER_RETRIES`] times.
    /// Those that still fail are counted in [`WorkerReport::failed`], with the last
    /// error; they stay uninitialised, so the grow path tries them again when their
    /// zone needs them. (A worker remembers at most 64 failed chunks to retry; the
    /// rest are counted failed at once.) Called from inside the backing, it stops
    /// at its first chunk with [`ChunkError::Reentrant`].
    pub fn run_deferred_worker(&self, node: NodeId) -> WorkerReport {
        let mut report = WorkerReport {
            node,
            ..WorkerReport::default()
        };
        if self.config.strategy != Strategy::Deferred {
            return report;
        }
        // `node` answers a span only below `node_count()`, so it indexes `work`.
        let Some(span) = self.layout.node(node) else {
            return report;
        };
        let mut retry = [0usize; 64];
        let mut retries = 0;
        let first = self.layout.section_of(span.start_pfn);
        let end = self.layout.section_of(Pfn(span.end_pfn.0 - 1)) + 1;
        let chunks_shift = self.memmap.sections().chunks_shift();
        loop {
            // Relaxed: the fetch_add alone hands each section (a batch of chunks) to
            // exactly one worker of this node; the chunk claims order everything the
            // chunks hold.
            let section = first + self.work[node.index()].fetch_add(1, Relaxed);
            if section >= end {
                break;
            }
            for index in section << chunks_shift..(section + 1) << chunks_shift {
                if self.memmap.sections().state(index) != ChunkState::Uninit {
                    continue;
                }
                let (s, e) = self.memmap.chunk_pfns(index);
                if !self
                    .layout
                    .present_runs(Pfn(s)..Pfn(e))
                    .any(|r| r.node == node)
                {
                    continue;
                }
                match self.init_chunk(index, InitCause::Worker) {
                    Ok(Some(pages)) => {
                        report.chunks += 1;
                        report.pages += pages;
                    }
                    Ok(None) => {}
                    Err(e @ ChunkError::Reentrant { .. }) => {
                        report.failed += 1;
                        report.error = Some(e);
                        return report;
                    }
                    Err(e) => {
                        report.error = Some(e);
                        match retry.get_mut(retries) {
                            Some(slot) => {
                                *slot = index;
                                retries += 1;
                            }
                            None => report.failed += 1,
                        }
                    }
                }
            }
        }
        // The failed chunks, again: a backing may fail for a moment (no memory for
        // a page table just then). Whoever took one meanwhile has it.
        let mut left = &mut retry[..retries];
        for _ in 0..WORKER_RETRIES {
            let mut still = 0;
            for i in 0..left.len() {
                let index = left[i];
                match self.init_chunk(index, InitCause::Worker) {
                    Ok(Some(pages)) => {
                        report.chunks += 1;
                        report.pages += pages;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.error = Some(e);
                        left[still] = index;
                        still += 1;
                    }
                }
            }
            left = &mut left[..still];
            if left.is_empty() {
                break;
            }
        }
        report.failed += left.len() as u64;
        if report.failed == 0 {
            report.error = None;
        }
        report
    }

    /// What initialisation has done so far.
    pub fn init_stats(&self) -> InitStats {
        let by = |c: InitCause| self.counters.chunks_by[c as usize].load(Relaxed);
        let sections = self.memmap.sections();
        let present = sections.present() as u64;
        InitStats {
            chunk_bytes: PAGE_SIZE << self.memmap.chunk_shift(),
            chunks_present: present,
            chunks_done: present - sections.unfinished() as u64,
            by_boot: by(InitCause::Boot),
            by_workers: by(InitCause::Worker),
            by_growth: by(InitCause::Grow),
            by_lookup: by(InitCause::Lookup),
            grows: self.counters.grows.load(Relaxed),
            grow_time: self.counters.grow_time.load(Relaxed),
            memmap_bytes: self.memmap.populated_bytes(),
            fully_initialised: sections.all_initialised(),
            given_back: self.counters.given_back.load(Relaxed),
        }
    }

    /// Initialises chunk `index` if no one has claimed it: has the memmap under it
    /// populated and its memory accepted, writes every descriptor, publishes it,
    /// and puts its usable pages on their zones' free lists. Returns the pages
    /// freed, or `None` if someone else had it. From inside the backing (on the
    /// same [`Config::context`]) it gives the claim back and says so, rather than
    /// call the backing again or wait for the section's memmap.
    pub(crate) fn init_chunk(
        &self,
        index: usize,
        cause: InitCause,
    ) -> Result<Option<u64>, ChunkError> {
        let Ok(claim) = self.memmap.sections().claim(index) else {
            return Ok(None);
        };
        let populated = match self.config.context {
            Some(context) => {
                let context = context();
                if self.in_backing.contains(context) {
                    return Err(ChunkError::Reentrant { chunk: index });
                }
                let _inside = self.in_backing.enter(context);
                self.memmap.populate(claim, &self.layout)
            }
            None => self.memmap.populate(claim, &self.layout),
        };
        let mut writer = populated.map_err(ChunkError::Backing)?;
        let taken = writer.taken();
        let (start, end) = self.memmap.chunk_pfns(index);
        for run in self.layout.present_runs(Pfn(start)..Pfn(end)) {
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

        let mut freed = 0;
        for run in self
            .layout
            .present_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved)
        {
            let (rs, re) = (run.start.0, run.end.0);
            let zone = &self.zones[zone_index(run.node, run.zone) as usize];
            let (t0, t1) = clamp(&taken, rs, re);
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
        self.counters.chunks_by[cause as usize].fetch_add(1, Relaxed);
        published.finish();
        Ok(Some(freed))
    }

    /// The slow path of one zone, after a take found it empty: returns a block and
    /// whether this call initialised memory for it, or `None` when the zone has
    /// nothing left at all.
    ///
    /// The take that failed may have run just before another thread spliced the
    /// zone's last pages, so "nothing left to initialise" is never enough to give
    /// up: every path here observes that first and takes once more after it.
    pub(crate) fn take_slow(
        &self,
        zone: &Zone<R>,
        order: u32,
    ) -> Result<Option<(u64, bool)>, ChunkError> {
        // The off switch: once set, this one flag is all that remains of laziness.
        // Acquire (in `all_initialised`) pairs with the Release of the last
        // section's finish, which comes after every section's splice.
        if self.memmap.sections().all_initialised() {
            if let Some(pfn) = zone.take(&self.memmap, order) {
                return Ok(Some((pfn, false)));
            }
            // A chunk given back may have turned the switch off again, just before
            // its blocks left the lists: seen here, after the take's lock.
            if self.memmap.sections().all_initialised() {
                return Ok(None);
            }
        }
        self.grow_and_take(zone, order)
    }

    /// Alternately look at what is left to initialise in `zone`, take a block, and
    /// initialise more of the zone, until a block is found or the zone was seen with
    /// nothing left to initialise before a take that failed.
    fn grow_and_take(&self, zone: &Zone<R>, order: u32) -> Result<Option<(u64, bool)>, ChunkError> {
        let started = self.config.clock.map(|now| now());
        let mut grew = false;
        let result = loop {
            // Observe first, then take. Acquire: pairs with the Release decrement in
            // `init_chunk`, which follows that chunk's splice; so when this sees
            // zero, the take below sees every page that was ever spliced here.
            let left = zone.uninit.load(Acquire);
            if let Some(pfn) = zone.take(&self.memmap, order) {
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
    /// inside the backing, neither initialises nor waits: `Reentrant`.
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
            match self.init_chunk(index, InitCause::Grow) {
                Ok(Some(_)) => {
                    zone.grow_cursor.store(index + 1, Relaxed);
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

    /// Whether the calling context is inside a call of the backing (known only
    /// with a [`Config::context`]). Only for the paths that would wait.
    pub(crate) fn reentrant(&self) -> bool {
        self.config
            .context
            .is_some_and(|context| self.in_backing.contains(context()))
    }

    /// Whether chunk `index` holds usable pages of `zone`.
    fn chunk_has_usable(&self, index: usize, zone: &Zone<R>) -> bool {
        let (s, e) = self.memmap.chunk_pfns(index);
        let s = Pfn(s).max(zone.span.start_pfn);
        let e = Pfn(e).min(zone.span.end_pfn);
        s < e
            && self
                .layout
                .present_runs(s..e)
                .any(|r| !r.reserved && r.node.index() == zone.node as usize && r.zone == zone.kind)
    }
}

/// `taken` clipped to `[start, end)`: an empty range at `start` or `end` when
/// they do not meet.
fn clamp(taken: &core::ops::Range<u64>, start: u64, end: u64) -> (u64, u64) {
    let t0 = taken.start.clamp(start, end);
    (t0, taken.end.clamp(t0, end))
}
