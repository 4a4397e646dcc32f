//! Free page reporting: the allocator's hook (`meminit::FreeReporter`), wired to
//! the balloon.
//!
//! It owns the adapter between what the allocator reports (ranges of pfns it has
//! isolated while they are reported) and what the balloon takes (guest-physical
//! byte ranges), and the counts of what was reported. It does not choose what is
//! free (the allocator does, in `Allocator::report_free`) and does not touch the
//! device (the balloon does).

use core::ops::Range;

use meminit::{FreeReporter, Pfn, ReportError, REPORT_BATCH};

use crate::balloon::{self, Balloon};

/// Reports free memory to the host through the balloon, and counts it.
pub struct BalloonReporter<'a> {
    balloon: &'a mut Balloon,
    /// Bytes reported.
    pub bytes: u64,
    /// Ranges (blocks) reported.
    pub blocks: u64,
    /// Calls the allocator made.
    pub calls: u64,
    /// The first pfn reported, to check afterwards that the host discarded it.
    pub first: Option<Pfn>,
    /// The balloon's own account of the last failure (the allocator's error
    /// carries a fixed reason only).
    pub error: Option<balloon::Error>,
}

impl<'a> BalloonReporter<'a> {
    pub fn new(balloon: &'a mut Balloon) -> Self {
        BalloonReporter {
            balloon,
            bytes: 0,
            blocks: 0,
            calls: 0,
            first: None,
            error: None,
        }
    }
}

impl BalloonReporter<'_> {
    /// The balloon, for what the allocator does not report itself (the memmap
    /// given back).
    pub fn balloon_mut(&mut self) -> &mut Balloon {
        self.balloon
    }
}

impl FreeReporter for BalloonReporter<'_> {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        self.calls += 1;
        let mut bytes = [(0u64, 0u64); REPORT_BATCH];
        for chunk in ranges.chunks(bytes.len()) {
            let mut n = 0;
            for r in chunk.iter().filter(|r| r.end.0 > r.start.0) {
                bytes[n] = (r.start.addr(), (r.end.0 - r.start.0) * 4096);
                n += 1;
            }
            if let Err(e) = self.balloon.report(&bytes[..n]) {
                self.error = Some(e);
                return Err(ReportError {
                    reason:
                        "the virtio-balloon did not take the report (the guest's console says why)",
                });
            }
            for &(addr, b) in &bytes[..n] {
                self.first.get_or_insert(Pfn(addr / 4096));
                self.bytes += b;
                self.blocks += 1;
            }
        }
        Ok(())
    }
}
