//! When memory goes back: one entry point, [`Allocator::tick`], that the
//! embedder calls from its idle loop or a timer, and that paces free page
//! reporting and give-back with a delay and hysteresis.
//!
//! - **Delay.** A pass runs at most every half [`Config::give_back_delay_ns`]. A
//!   chunk goes back on the second pass that finds it wholly free (the first marks
//!   it; see [`super::giveback`]), so memory that stays free goes back between
//!   half the delay and the delay after it was freed (Linux's free page reporting
//!   starts two seconds after the free and then drains for tens of seconds).
//!   Free blocks of a pageblock or more are reported on the first pass after
//!   they are freed.
//! - **Idle CPU caches.** A pass first drains every CPU cache that allocated
//!   and freed nothing since the pass before (its stocks look the same), as
//!   Linux lets an idle CPU's per-CPU lists decay: what a CPU keeps for its
//!   next allocations would otherwise pin its chunks for as long as the CPU
//!   sleeps. A busy cache is left alone.
//! - **Hysteresis.** A zone that had to grow again (initialise chunks) within
//!   [`HOLD_DELAYS`] delays after it last gave chunks back is following a
//!   workload that frees and allocates again: its give-back is held for that
//!   long, so the same chunks are not given back and initialised over and over.
//!   Reporting goes on (it costs the guest nothing but a later fault).
//!
//! Only one caller runs a pass at a time: the others return at once. This module
//! is pacing over the passes of `giveback`; it walks no list and writes no
//! descriptor itself.
//!
//! [`Config::give_back_delay_ns`]: crate::Config::give_back_delay_ns

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lock_api::RawMutex;

use super::giveback::{FreeReporter, ReportError, ReportStats};
use super::Allocator;
use crate::memmap::MemmapBacking;
use crate::types::{MAX_NODES, ZONE_TYPES};

/// How many give-back delays a zone that grew again soon after giving chunks
/// back keeps them: both the window that counts as "soon" and the hold.
pub const HOLD_DELAYS: u64 = 4;

/// No time yet.
const NEVER: u64 = u64::MAX;

/// The pacing state: when the last pass ran, and per zone what it needs for
/// hysteresis. All `Relaxed`: a pass is claimed with one compare-and-swap on
/// `last_pass`, and every other field is read and written only by the pass that
/// claimed it (or counted by the grow path, where only the count matters).
pub(crate) struct Pacing {
    last_pass: AtomicU64,
    /// Per zone: chunks the grow path initialised so far.
    grows: [AtomicU64; MAX_NODES * ZONE_TYPES],
    /// Per zone: `grows` as the last pass saw it.
    seen_grows: [AtomicU64; MAX_NODES * ZONE_TYPES],
    /// Per zone: when it last gave a chunk back, or `NEVER`.
    gave_back_at: [AtomicU64; MAX_NODES * ZONE_TYPES],
    /// Per zone: give-back is held until this time (0: not held).
    held_until: [AtomicU64; MAX_NODES * ZONE_TYPES],
}

impl Pacing {
    pub(crate) const fn new() -> Self {
        Pacing {
            last_pass: AtomicU64::new(NEVER),
            grows: [const { AtomicU64::new(0) }; MAX_NODES * ZONE_TYPES],
            seen_grows: [const { AtomicU64::new(0) }; MAX_NODES * ZONE_TYPES],
            gave_back_at: [const { AtomicU64::new(NEVER) }; MAX_NODES * ZONE_TYPES],
            held_until: [const { AtomicU64::new(0) }; MAX_NODES * ZONE_TYPES],
        }
    }

    /// The grow path initialised a chunk of zone `index`.
    #[inline]
    pub(crate) fn grew(&self, index: usize) {
        if let Some(count) = self.grows.get(index) {
            // Relaxed: a count read by the next pass; nothing is ordered by it.
            count.fetch_add(1, Relaxed);
        }
    }
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// The idle-time policy: call it from an idle loop or a timer with the
    /// current time in nanoseconds (any monotonic origin). When half
    /// [`Config::give_back_delay_ns`](crate::Config::give_back_delay_ns) has
    /// passed since the last pass, it runs one: reports free blocks not reported
    /// yet to `reporter` ([`NoReporter`](crate::NoReporter) on bare metal), and
    /// gives back (with [`Config::give_back`](crate::Config::give_back)) the
    /// chunks that stayed free since the previous pass, except in zones held by
    /// hysteresis (see the module docs). Returns `None` when no pass was due or
    /// another caller is running it; a reporter's error ends the pass, as in
    /// [`report_free`](Self::report_free).
    pub fn tick(
        &self,
        now: u64,
        reporter: &mut impl FreeReporter,
    ) -> Result<Option<ReportStats>, ReportError> {
        let delay = self.config.give_back_delay_ns;
        let pacing = &self.pacing;
        let last = pacing.last_pass.load(Relaxed);
        if last != NEVER && now.saturating_sub(last) < delay / 2 {
            return Ok(None);
        }
        // Relaxed: the exchange only elects the caller that runs this pass.
        if pacing
            .last_pass
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        let mut stats = ReportStats::default();
        for cache in self.cpus {
            if !cache.unchanged_since_last_pass() {
                continue;
            }
            // `try_lock`: a cache whose lock is held is in use, not idle, and
            // a pass run from an interrupt on that cache's own CPU must not
            // wait for the code it interrupted.
            if let Some(mut guard) = cache.try_lock() {
                stats.idle_caches_drained += 1;
                stats.idle_cache_pages += self.drain_cache(&mut guard);
            }
        }
        // Batches in depots pin their chunks: they merge first.
        self.flush_depots();
        for zone in self.zones.iter().filter(|z| z.is_populated()) {
            self.report_zone(zone, reporter, &mut stats)?;
        }
        if !self.config.give_back {
            return Ok(Some(stats));
        }
        let window = delay.saturating_mul(HOLD_DELAYS);
        for (index, zone) in self.zones.iter().enumerate() {
            if !zone.is_populated() {
                continue;
            }
            let grows = pacing.grows[index].load(Relaxed);
            let grew = pacing.seen_grows[index].swap(grows, Relaxed) != grows;
            let gave_back_at = pacing.gave_back_at[index].load(Relaxed);
            if grew && gave_back_at != NEVER && now.saturating_sub(gave_back_at) < window {
                pacing.held_until[index].store(now.saturating_add(window), Relaxed);
            }
            if now < pacing.held_until[index].load(Relaxed) {
                stats.zones_held += 1;
                continue;
            }
            let before = stats.chunks_given_back;
            self.give_back_zone(zone, reporter, &mut stats)?;
            if stats.chunks_given_back > before {
                pacing.gave_back_at[index].store(now, Relaxed);
            }
        }
        Ok(Some(stats))
    }
}
