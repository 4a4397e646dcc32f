//! Start-up choices: the strategy, the chunk size, give-back and its reserve, and
//! the embedder's clock, context and wait functions.
//!
//! Plain values, checked against a layout once at start-up; nothing here runs
//! after that.

use core::str::FromStr;

use crate::error::InitError;
use crate::layout::Layout;
use crate::section::MAX_CHUNKS_PER_SECTION;
use crate::types::{MAX_ORDER, PAGE_SHIFT, PAGE_SIZE};

/// When descriptors are initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Every chunk at start-up, on the calling thread.
    Eager,
    /// Nothing at start-up; the rest by [`Allocator::run_deferred_worker`](crate::Allocator::run_deferred_worker) in
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
    /// [`MAX_CHUNKS_PER_SECTION`] chunks per section, and at most 2^29 pages
    /// (2 TiB: a chunk's count of pages in use must fit its word).
    pub chunk_size: u64,
    /// Whether [`Allocator::give_back`](crate::Allocator::give_back) and [`Allocator::report_free`](crate::Allocator::report_free) return
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
    /// from inside any callback (the backing's `populate`, `accept`, `depopulate`
    /// or `zero`, a [`FreeReporter`](crate::FreeReporter)'s `report`) on the same
    /// context is told apart from a wait on another CPU: it is served only from
    /// initialised free memory, and where it would initialise a chunk or wait
    /// (for a chunk, a section's memmap, or blocks out for reporting) it fails
    /// ([`crate::AllocError::Reentrant`], [`crate::LookupError::Reentrant`],
    /// [`ChunkError::Reentrant`](crate::ChunkError::Reentrant)) instead of waiting,
    /// perhaps forever, for what its own caller holds. It is called around
    /// callbacks and on the paths that initialise or wait, never on the fast
    /// path. `None`: no such check (a callback that calls back may then hang).
    pub context: Option<fn() -> u64>,
    /// How to wait once a short spin is over. Where an allocation, a look-up or
    /// a worker waits for another context (its initialisation of a chunk, a
    /// section's populate, a give-back's retirement, blocks out for free page
    /// reporting, a place among the contexts inside callbacks), it re-checks
    /// with a pause instruction a hundred-odd times, then calls this between
    /// re-checks: a `pause` loop or `hlt` until the next interrupt in a kernel,
    /// [`std::thread::yield_now`](https://doc.rust-lang.org/std/thread/fn.yield_now.html)
    /// or a sleep of tens of microseconds on a host. It may sleep, but must not
    /// call the allocator; it decides nothing (the condition is re-checked after
    /// it returns). It is never called on the fast path, nor with a lock of the
    /// allocator held. `None`: spin (a waiter then burns its CPU for as long as
    /// a populate or a report takes).
    pub wait: Option<fn()>,
    /// How long memory stays free before [`crate::Allocator::tick`] gives it
    /// back, at most, in nanoseconds (passes run every half of it; see the
    /// `tick` docs). Default [`DEFAULT_GIVE_BACK_DELAY_NS`]: one second.
    pub give_back_delay_ns: u64,
    /// The most bytes of a chunk of movable memory in use for
    /// [`Allocator::compact`](crate::Allocator::compact) to move its blocks out
    /// (so that it goes back on a later give-back pass). 0: no chunk is
    /// compacted. Default [`DEFAULT_COMPACT_MAX_USED`]: a quarter of a default
    /// chunk.
    pub compact_max_used: u64,
}

/// The default [`Config::compact_max_used`]: 1 MiB, a quarter of a default chunk.
pub const DEFAULT_COMPACT_MAX_USED: u64 = DEFAULT_CHUNK_SIZE / 4;

/// The default [`Config::give_back_delay_ns`]: one second (Linux's free page
/// reporting waits two before it starts).
pub const DEFAULT_GIVE_BACK_DELAY_NS: u64 = 1_000_000_000;

/// The default [`Config::give_back_reserve`]: four default chunks per zone.
pub const DEFAULT_GIVE_BACK_RESERVE: u64 = 4 * DEFAULT_CHUNK_SIZE;

impl Config {
    /// `strategy`, with no clock, context or wait hook, the default chunk size,
    /// and give-back on for [`Strategy::OnDemand`] only, keeping
    /// [`DEFAULT_GIVE_BACK_RESERVE`].
    pub const fn new(strategy: Strategy) -> Self {
        Config {
            strategy,
            clock: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            give_back: matches!(strategy, Strategy::OnDemand),
            give_back_reserve: DEFAULT_GIVE_BACK_RESERVE,
            context: None,
            wait: None,
            give_back_delay_ns: DEFAULT_GIVE_BACK_DELAY_NS,
            compact_max_used: DEFAULT_COMPACT_MAX_USED,
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
            || chunk / PAGE_SIZE > crate::section::MAX_CHUNK_PAGES
        {
            return Err(InitError::BadChunkSize { chunk, section });
        }
        Ok(chunk.trailing_zeros() - PAGE_SHIFT)
    }
}
