//! Free page reporting: the allocator's reporting hook, wired to the balloon.
//!
//! It owns the adapter between what the allocator reports (ranges of pfns it has
//! isolated while they are reported) and what the balloon takes (guest-physical
//! byte ranges), and the counts of what was reported. It does not choose what is
//! free (the allocator does) and does not touch the device (the balloon does).
//!
//! Until the crate's hook (`meminit::FreeReporter`, `Allocator::report_free`)
//! is there, [`FreeReporter`] stands in for its trait with the same shape, and
//! [`SpikeRuns`] for `report_free`: it reports the whole pageblocks of the spike
//! the workload has just freed, which nothing allocates while they are reported
//! (the boot CPU runs the workload alone).

use core::fmt;
use core::ops::Range;

use meminit::Pfn;

use crate::balloon::{self, Balloon};

/// Pages in a pageblock: the smallest piece reported, as Linux reports.
pub const PAGEBLOCK_PAGES: u64 = 512;

/// Why a report failed (the stand-in for `meminit::ReportError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportError(pub balloon::Error);

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whoever learns of free memory (the stand-in for `meminit::FreeReporter`).
pub trait FreeReporter {
    /// Reports `ranges` of free pages, which no one uses until this returns.
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError>;
}

/// Reports free memory to the host through the balloon, and counts it.
pub struct BalloonReporter<'a> {
    balloon: &'a mut Balloon,
    /// Bytes reported.
    pub bytes: u64,
    /// Ranges (blocks) reported.
    pub blocks: u64,
    /// Calls to [`FreeReporter::report`].
    pub calls: u64,
}

impl<'a> BalloonReporter<'a> {
    pub fn new(balloon: &'a mut Balloon) -> Self {
        BalloonReporter {
            balloon,
            bytes: 0,
            blocks: 0,
            calls: 0,
        }
    }
}

impl FreeReporter for BalloonReporter<'_> {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        self.calls += 1;
        let mut bytes = [(0u64, 0u64); 64];
        for chunk in ranges.chunks(bytes.len()) {
            let mut n = 0;
            for r in chunk.iter().filter(|r| r.end.0 > r.start.0) {
                bytes[n] = (r.start.addr(), (r.end.0 - r.start.0) * 4096);
                n += 1;
            }
            self.balloon.report(&bytes[..n]).map_err(ReportError)?;
            for &(_, b) in &bytes[..n] {
                self.bytes += b;
                self.blocks += 1;
            }
        }
        Ok(())
    }
}

/// Pfns the spike's bitmap covers: 64 GiB of memory, in 2 MiB of bits (in the
/// kernel image's zeroed data, resident on the host only where touched).
const BITMAP_PFNS: u64 = 1 << 24;

/// One bit per pfn freed by the spike.
static FREED: spin::Mutex<[u64; (BITMAP_PFNS / 64) as usize]> =
    spin::Mutex::new([0; (BITMAP_PFNS / 64) as usize]);

/// The pages the spike freed, one bit each, and the whole pageblocks among them
/// reported together afterwards.
pub struct SpikeRuns {
    bits: spin::MutexGuard<'static, [u64; (BITMAP_PFNS / 64) as usize]>,
    low: u64,
    high: u64,
    /// Pages freed that the bitmap does not cover, left unreported.
    pub dropped: u64,
}

impl SpikeRuns {
    /// The bitmap, empty; `None` if it is in use.
    pub fn new() -> Option<Self> {
        let mut bits = FREED.try_lock()?;
        bits.fill(0);
        Some(SpikeRuns {
            bits,
            low: u64::MAX,
            high: 0,
            dropped: 0,
        })
    }

    /// Notes that `pfn` was freed.
    pub fn freed(&mut self, pfn: Pfn) {
        if pfn.0 >= BITMAP_PFNS {
            self.dropped += 1;
            return;
        }
        self.bits[(pfn.0 / 64) as usize] |= 1 << (pfn.0 % 64);
        self.low = self.low.min(pfn.0);
        self.high = self.high.max(pfn.0 + 1);
    }

    fn whole_pageblock(&self, first: u64) -> bool {
        let word = (first / 64) as usize;
        self.bits[word..word + (PAGEBLOCK_PAGES / 64) as usize]
            .iter()
            .all(|&w| w == u64::MAX)
    }

    /// Reports the whole pageblocks freed, as ranges of consecutive ones, in
    /// groups of 64, to `reporter`; the first pfn reported, if any.
    pub fn report(&mut self, reporter: &mut impl FreeReporter) -> Result<Option<Pfn>, ReportError> {
        let mut group = [const { Pfn(0)..Pfn(0) }; 64];
        let mut n = 0;
        let mut first = None;
        let mut block = self.low.next_multiple_of(PAGEBLOCK_PAGES);
        while block + PAGEBLOCK_PAGES <= self.high {
            if self.whole_pageblock(block) {
                first.get_or_insert(Pfn(block));
                let end = Pfn(block + PAGEBLOCK_PAGES);
                if n > 0 && group[n - 1].end.0 == block {
                    group[n - 1].end = end;
                } else {
                    if n == group.len() {
                        reporter.report(&group[..n])?;
                        n = 0;
                    }
                    group[n] = Pfn(block)..end;
                    n += 1;
                }
            }
            block += PAGEBLOCK_PAGES;
        }
        if n > 0 {
            reporter.report(&group[..n])?;
        }
        Ok(first)
    }
}
