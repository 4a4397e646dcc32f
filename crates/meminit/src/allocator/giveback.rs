//! Memory follows use down: giving chunks back, and free page reporting.
//!
//! Two idle-time passes, both run by the embedder (from an idle loop or a timer,
//! every second or so, as Linux's page reporting runs a couple of seconds after
//! free memory accumulates):
//!
//! - **Free page reporting** ([`Allocator::report_free`]) hands the host the
//!   memory of free blocks of at least the pageblock order that it has not been
//!   given yet, through the embedder's [`FreeReporter`] (a virtio-balloon
//!   reporting queue in a guest; `MADV_DONTNEED` in the simulator). While a batch
//!   is out, its blocks are off the free lists (no one can allocate memory the
//!   host is discarding); then they go back, marked reported, behind the others
//!   on their lists. When reported memory is used again the backing hears of it
//!   ([`MemmapBacking::reuse_reported`]).
//! - **Give-back** ([`Allocator::give_back`], and as part of `report_free`) returns
//!   to *uninitialised* every chunk all of whose usable pages stayed free on the
//!   free lists since the previous pass, beyond a reserve of initialised free
//!   memory per zone ([`Config::give_back_reserve`]). Its blocks leave the lists,
//!   its pages count as uninitialised (so still as available), the off switch
//!   turns off, and the backing may release the chunk's memmap (or the section's,
//!   once all of its chunks are given back): [`MemmapBacking::depopulate`]. The
//!   next allocation that needs it initialises it again.
//!
//! The policy against thrashing is in two parts: a chunk goes back only after it
//! stayed free across two passes (the first marks its blocks; any allocation,
//! split or merge since clears the mark), and each zone keeps its reserve.
//! Pages in CPU caches, blocks not merged, chunks shared by two zones, and
//! chunks holding any allocated page are never given back. Every pass first
//! flushes the zones' depots (whole batches of free blocks that CPU caches
//! exchange, off the lists), so that the chunks they pin can go back once the
//! traffic that filled them stops.
//!
//! A chunk in use is passed over with one load: its word of use (kept by the
//! buddy lists, in the section slot) counts the pages of it off the free lists,
//! and only a chunk whose count is zero is looked at under the lock. Mobility
//! classes keep that count at zero for the chunks of freed movable memory (see
//! [`crate::AllocFlags::MOVABLE`]).
//!
//! This module is policy over the buddy lists and the section states: it takes
//! zone locks, never writes a descriptor outside one, and has no `unsafe`.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::Ordering::Relaxed;

use lock_api::RawMutex;

use crate::allocator::Allocator;
use crate::memmap::MemmapBacking;
use crate::page::zone_index;
use crate::section::{ChunkState, Retiring};
use crate::types::{NodeId, Pfn, PAGEBLOCK_ORDER, PAGE_SHIFT};
use crate::zone::Zone;

/// The smallest block free page reporting hands to the host: a pageblock (2 MiB),
/// as Linux's `page_reporting_order` by default.
pub const REPORT_ORDER: u32 = PAGEBLOCK_ORDER;

/// Ranges handed to a [`FreeReporter`] in one call, at most (a virtio queue's
/// worth: Linux's `PAGE_REPORTING_CAPACITY` is 32).
pub const REPORT_BATCH: usize = 32;

/// Where free memory is reported: the embedder's channel to its host.
pub trait FreeReporter {
    /// Hands `ranges` of free memory to the host, which may discard their
    /// contents (reads after that see zeroes, or whatever the host provides),
    /// and returns once the host has them. No allocator lock is held; the
    /// ranges are off the free lists until this returns, so it must not wait for
    /// an allocation of them. It runs on the context of the caller of
    /// [`Allocator::report_free`]: with [`Config::context`](crate::Config::context),
    /// an allocation it makes is served from initialised free memory or fails
    /// with [`AllocError::Reentrant`](crate::AllocError::Reentrant), never waits
    /// for this batch. An error puts them back unreported and ends the pass.
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError>;
}

/// A reporter that reports nothing and always succeeds: for
/// [`Allocator::give_back`] alone, on a machine with no host to hand memory to.
pub struct NoReporter;

impl FreeReporter for NoReporter {
    fn report(&mut self, _: &[Range<Pfn>]) -> Result<(), ReportError> {
        Ok(())
    }
}

/// Why a [`FreeReporter`] could not hand memory to its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportError {
    /// What went wrong, in the reporter's words.
    pub reason: &'static str,
}

impl core::error::Error for ReportError {}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "free page reporting failed: {}", self.reason)
    }
}

/// What one idle-time pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportStats {
    /// Free blocks reported.
    pub blocks: u64,
    /// Pages in them.
    pub pages: u64,
    /// Chunks given back to uninitialised.
    pub chunks_given_back: u64,
    /// Usable pages in them.
    pub pages_given_back: u64,
    /// Of those, pages reported to the host as the chunks went back.
    pub pages_given_back_reported: u64,
    /// Bytes of memmap the backing released.
    pub memmap_bytes_released: u64,
    /// Chunks found free but not yet for two passes: marked, to go next time.
    pub chunks_marked: u64,
    /// Zones whose give-back [`Allocator::tick`] held back: they grew again
    /// soon after giving chunks back.
    pub zones_held: u64,
    /// CPU caches [`Allocator::tick`] drained because they did nothing since
    /// its previous pass, and the pages they held.
    pub idle_caches_drained: u64,
    /// Pages in those caches.
    pub idle_cache_pages: u64,
}

/// A batch of ranges for a reporter.
struct Batch {
    ranges: [Range<Pfn>; REPORT_BATCH],
    len: usize,
}

impl Batch {
    const fn new() -> Self {
        Batch {
            ranges: [const { Pfn(0)..Pfn(0) }; REPORT_BATCH],
            len: 0,
        }
    }

    /// Adds `range`, reporting the batch first if it is full.
    fn add(
        &mut self,
        range: Range<u64>,
        reporter: &mut impl FreeReporter,
    ) -> Result<(), ReportError> {
        if self.len == REPORT_BATCH {
            self.flush(reporter)?;
        }
        self.ranges[self.len] = Pfn(range.start)..Pfn(range.end);
        self.len += 1;
        Ok(())
    }

    fn flush(&mut self, reporter: &mut impl FreeReporter) -> Result<(), ReportError> {
        if self.len > 0 {
            reporter.report(&self.ranges[..self.len])?;
        }
        self.len = 0;
        Ok(())
    }
}

/// What the give-back pass decided for one chunk, under its zone's lock.
enum Verdict<'s, 'a> {
    /// Not every usable page is free, or the reserve would be broken.
    Keep,
    /// Free, but not across two passes: marked now.
    Marked,
    /// Off the lists and `Initialising`: `usable` pages, all of them reported to
    /// the host already if `all_reported`.
    Retired {
        retiring: Retiring<'s, 'a>,
        usable: u64,
        all_reported: bool,
    },
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// One idle-time pass: reports every free block of at least [`REPORT_ORDER`]
    /// not reported yet to `reporter`, then (with [`Config::give_back`]) gives
    /// back the chunks that stayed free since the previous pass, reporting what
    /// of their memory had not been, and marks those newly free for the next.
    /// Returns what it did; a reporter's error ends the pass, with everything
    /// put back as it was.
    ///
    /// Costs a look at every chunk's state and word of use (one section slot, no
    /// descriptor), and a short zone lock per wholly free chunk and per batch of
    /// [`REPORT_BATCH`] blocks.
    ///
    /// [`Config::give_back`]: crate::Config::give_back
    pub fn report_free(
        &self,
        reporter: &mut impl FreeReporter,
    ) -> Result<ReportStats, ReportError> {
        let mut stats = ReportStats::default();
        // Batches in depots pin their chunks: they merge first.
        self.flush_depots();
        for zone in self.zones.iter().filter(|z| z.is_populated()) {
            self.report_zone(zone, reporter, &mut stats)?;
        }
        if self.config.give_back {
            for zone in self.zones.iter().filter(|z| z.is_populated()) {
                self.give_back_zone(zone, reporter, &mut stats)?;
            }
        }
        Ok(stats)
    }

    /// [`report_free`](Self::report_free) with nothing to report to: gives back
    /// (with [`Config::give_back`]) the chunks that stayed free since the previous
    /// pass and marks the newly free ones. For a kernel on bare metal, where only
    /// the memmap can be released.
    ///
    /// [`Config::give_back`]: crate::Config::give_back
    pub fn give_back(&self) -> ReportStats {
        let mut stats = ReportStats::default();
        if self.config.give_back {
            // Batches in depots pin their chunks: they merge first.
            self.flush_depots();
            for zone in self.zones.iter().filter(|z| z.is_populated()) {
                // `NoReporter` never fails.
                let _ = self.give_back_zone(zone, &mut NoReporter, &mut stats);
            }
        }
        stats
    }

    /// Reports `zone`'s unreported free blocks, a batch at a time.
    pub(super) fn report_zone(
        &self,
        zone: &Zone<R>,
        reporter: &mut impl FreeReporter,
        stats: &mut ReportStats,
    ) -> Result<(), ReportError> {
        let index = zone_index(NodeId(zone.node as u32), zone.kind);
        loop {
            let mut blocks = [(0u64, 0u32, false); REPORT_BATCH];
            let (n, pages) = zone.with_free(|area| {
                // An allocation waits for the blocks away: none more until it
                // has looked. Relaxed: raised under this lock (`ReportWait`).
                if zone.report_waiters.load(Relaxed) > 0 {
                    return (0, 0);
                }
                let n = area.isolate_unreported(&self.memmap, REPORT_ORDER, &mut blocks);
                let pages: u64 = blocks[..n].iter().map(|&(_, o, _)| 1u64 << o).sum();
                // Relaxed: changed under the zone lock; read as a snapshot.
                zone.isolated.fetch_add(pages, Relaxed);
                (n, pages)
            });
            if n == 0 {
                return Ok(());
            }
            let mut batch = Batch::new();
            for &(pfn, order, _) in &blocks[..n] {
                batch.ranges[batch.len] = Pfn(pfn)..Pfn(pfn + (1 << order));
                batch.len += 1;
            }
            let result = self.in_callback(|| reporter.report(&batch.ranges[..n]));
            zone.with_free(|area| {
                for &(pfn, order, aged) in &blocks[..n] {
                    let reported = result.is_ok();
                    area.put_back(&self.memmap, pfn, order, index, reported, aged);
                }
                // Relaxed: as above.
                zone.isolated.fetch_sub(pages, Relaxed);
            });
            result?;
            stats.blocks += n as u64;
            stats.pages += pages;
        }
    }

    /// Gives back `zone`'s chunks that stayed free since the last pass, keeping
    /// the zone's reserve, and marks the newly free ones.
    pub(super) fn give_back_zone(
        &self,
        zone: &Zone<R>,
        reporter: &mut impl FreeReporter,
        stats: &mut ReportStats,
    ) -> Result<(), ReportError> {
        let sections = self.memmap.sections();
        let (first, end) = zone.chunks(self.memmap.chunk_shift());
        let reserve = self.config.give_back_reserve >> PAGE_SHIFT;
        // From the top down: growth starts at the bottom of a zone, where boot
        // allocations sit, so the reserve that stays initialised is kept in the
        // sections whose memmap boot needs anyway, not in a section the spike alone
        // populated.
        for chunk in (first..end).rev() {
            // A chunk with any page off the lists is passed over with this load.
            if sections.chunk_use(chunk).pages() != 0 || sections.state(chunk) != ChunkState::Ready
            {
                continue;
            }
            match self.retire_if_free(zone, chunk, reserve) {
                Verdict::Keep => {}
                Verdict::Marked => stats.chunks_marked += 1,
                Verdict::Retired {
                    retiring,
                    usable,
                    all_reported,
                } => {
                    // Report while the chunk is still `Initialising`: once it is
                    // `Uninit`, a grower may claim it and use the memory.
                    let reported = match all_reported {
                        true => Ok(0),
                        false => self.in_callback(|| self.report_chunk(chunk, reporter)),
                    };
                    // Given back whether or not the host took its memory: the
                    // chunk is accepted again when it is next initialised.
                    stats.chunks_given_back += 1;
                    stats.pages_given_back += usable;
                    stats.memmap_bytes_released +=
                        self.in_callback(|| self.memmap.depopulate(retiring));
                    self.counters.given_back.fetch_add(1, Relaxed);
                    stats.pages_given_back_reported += reported?;
                }
            }
        }
        Ok(())
    }

    /// Under `zone`'s lock: whether chunk `chunk`'s usable pages are all free
    /// on `zone`'s lists, and if so, mark it or take it off them and retire it.
    fn retire_if_free(&self, zone: &Zone<R>, chunk: usize, reserve: u64) -> Verdict<'_, '_> {
        let index = zone_index(NodeId(zone.node as u32), zone.kind);
        let (start, end) = self.memmap.chunk_pfns(chunk);
        let sections = self.memmap.sections();
        // Usable pages of the chunk, all of which must be this zone's.
        let mut usable = 0;
        for run in self
            .layout
            .memory_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved)
        {
            if run.node != NodeId(zone.node as u32) || run.zone != zone.kind {
                return Verdict::Keep;
            }
            usable += run.pages();
        }
        let taken = self.memmap.taken_in(chunk);
        let taken_pages = taken.end - taken.start;
        zone.with_free(|area| {
            // Re-checked under the lock: only give-back leaves `Ready`, under it;
            // and the count changes only under the lock of a zone the chunk
            // holds pages of, this one alone.
            if sections.state(chunk) != ChunkState::Ready || sections.chunk_use(chunk).pages() != 0
            {
                return Verdict::Keep;
            }
            let Some(found) = area.chunk_free(&self.memmap, start, end, index) else {
                return Verdict::Keep;
            };
            if found.free + taken_pages != usable || area.pages() < found.free + reserve {
                return Verdict::Keep;
            }
            if !found.aged {
                area.mark_chunk_aged(&self.memmap, start, end);
                return Verdict::Marked;
            }
            // The inverse of `init_run`'s counting, before the blocks leave the
            // lists. Relaxed: under the zone lock, which an allocation that finds
            // the blocks gone takes before it reads these counts again.
            zone.uninit.fetch_add(usable, Relaxed);
            zone.memmap_pages.fetch_sub(taken_pages, Relaxed);
            // The blocks' list neighbours may be in this chunk: unlink them while
            // its descriptors are still readable, then retire it.
            area.remove_chunk(&self.memmap, start, end);
            let Some(retiring) = sections.retire(chunk) else {
                // Only give-back leaves `Ready`, and only under this lock.
                panic!("chunk {chunk} left Ready under its zone lock");
            };
            Verdict::Retired {
                retiring,
                usable,
                all_reported: found.reported,
            }
        })
    }

    /// Reports the usable memory of a retiring chunk (less what holds memmap).
    /// Returns the pages reported.
    fn report_chunk(
        &self,
        chunk: usize,
        reporter: &mut impl FreeReporter,
    ) -> Result<u64, ReportError> {
        let (start, end) = self.memmap.chunk_pfns(chunk);
        let taken = self.memmap.taken_in(chunk);
        let mut batch = Batch::new();
        let mut pages = 0;
        for run in self
            .layout
            .memory_runs(Pfn(start)..Pfn(end))
            .filter(|r| !r.reserved)
        {
            let (run_start, run_end) = (run.start.0, run.end.0);
            let t0 = taken.start.clamp(run_start, run_end);
            let t1 = taken.end.clamp(t0, run_end);
            for part in [run_start..t0, t1..run_end] {
                if !part.is_empty() {
                    pages += part.end - part.start;
                    batch.add(part, reporter)?;
                }
            }
        }
        batch.flush(reporter)?;
        Ok(pages)
    }
}
