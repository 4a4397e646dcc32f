//! `workload=spike:SIZE`: a load spike and what is left of it afterwards. SIZE is
//! allocated page by page (through the boot CPU's page cache) and every page
//! written; at the peak it is all freed, and the free memory is reported to the
//! host through the balloon, which discards it. Markers on the console
//! (`MEMINIT-MARK boot|peak|released`) let whoever runs the guest measure it at
//! each of the three points; with `hold=serial` the guest waits at each for a
//! byte on the serial line, so it is measured at rest.
//!
//! It owns the spike's pages while they are held (they are chained through their
//! own first words, so holding any number costs no memory beside them) and the
//! figures it reports. It allocates, frees and reports only through the callers'
//! paths: what is free and may be reported is the allocator's to say.

use core::fmt;

use meminit::{Constraint, Pfn, ReportError, ReportStats};

use crate::balloon::{self, Balloon};
use crate::free_report::BalloonReporter;
use crate::port::Serial;
use crate::println;

/// What the spike did and what it reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpikeFigures {
    /// Bytes asked for.
    pub bytes: u64,
    /// Pages allocated and written (all of them unless an allocation failed).
    pub pages: u64,
    /// Bytes and ranges reported to the host, and reporting calls made.
    pub reported_bytes: u64,
    pub reported_blocks: u64,
    pub report_calls: u64,
    /// Chunks the allocator gave back to uninitialised, and memmap released.
    pub chunks_given_back: u64,
    pub memmap_bytes_released: u64,
    /// Bytes of that memmap handed to the host (`memmap=chunk`).
    pub memmap_reported_bytes: u64,
    /// Idle-time passes of the allocator's reporting made.
    pub passes: u32,
    /// The balloon, where one was found.
    pub balloon: Option<crate::pci::Function>,
    /// Why reporting failed or could not start.
    pub error: Option<balloon::Error>,
    /// Whether a pass of the allocator's reporting failed.
    pub report_failed: bool,
    /// Whether the first page reported reads as zeros afterwards (the host
    /// discarded it); `None` when nothing was reported.
    pub reported_zeroed: Option<bool>,
}

impl SpikeFigures {
    /// Whether the spike went as it should: every page allocated, and where a
    /// balloon is there, reported without error and discarded by the host.
    pub fn ok(&self) -> bool {
        let pages = self.bytes.div_ceil(4096);
        let reporting_ok = match (self.balloon, self.error) {
            _ if self.report_failed => false,
            (_, Some(balloon::Error::NoDevice)) => true,
            (_, Some(_)) => false,
            (Some(_), None) => self.reported_zeroed != Some(false),
            (None, None) => true,
        };
        self.pages == pages && reporting_ok
    }
}

/// A marker on the console, and with `hold` a wait (at most a minute) for a byte
/// that says the host has measured.
pub fn mark(name: &str, hold: bool, tsc_hz: u64) {
    println!("MEMINIT-MARK {name}");
    if hold && !Serial::wait_for_byte(tsc_hz.saturating_mul(60)) {
        println!("meminit guest: no byte came in 60 s after the {name} marker; going on");
    }
}

/// How the spike reaches the allocator and the console.
pub struct Paths<'a> {
    /// Allocates a block of an order, in a zone, on a node (the boot CPU's path).
    pub alloc: &'a mut dyn FnMut(u32, Constraint, usize) -> Option<Pfn>,
    /// Frees one page allocated by `alloc`.
    pub free: &'a mut dyn FnMut(Pfn),
    /// Empties every CPU's page cache into its zone.
    pub drain: &'a dyn Fn(),
    /// Shows progress: steps done, of all.
    pub tick: &'a mut dyn FnMut(u64, u64),
    /// One idle-time pass of the allocator (`Allocator::report_free`): reports
    /// free memory to the balloon where there is one, and gives chunks back.
    pub report: &'a dyn Fn(Option<&mut BalloonReporter<'_>>) -> Result<ReportStats, ReportError>,
}

/// Idle-time passes after the release: the allocator gives a chunk back once it
/// has stayed free across two of them, as Linux reports a couple of seconds after
/// memory is freed.
const PASSES: u32 = 2;

/// Runs a spike of `bytes` spread over `nodes`.
pub fn run(bytes: u64, nodes: usize, hold: bool, tsc_hz: u64, paths: Paths<'_>) -> SpikeFigures {
    let Paths {
        alloc,
        free,
        drain,
        tick,
        report,
    } = paths;
    let mut figures = SpikeFigures {
        bytes,
        ..SpikeFigures::default()
    };
    let mut balloon = match Balloon::start(tsc_hz) {
        Ok(b) => {
            figures.balloon = Some(b.function());
            Some(b)
        }
        Err(e) => {
            println!("meminit guest: note: free memory will not be reported: {e}");
            figures.error = Some(e);
            None
        }
    };
    mark("boot", hold, tsc_hz);

    let pages = bytes.div_ceil(4096);
    let mut head = None;
    for i in 0..pages {
        tick(i, pages);
        let Some(pfn) = alloc(0, Constraint::Any, i as usize % nodes.max(1)) else {
            continue;
        };
        write_page(pfn);
        set_link(pfn, head);
        head = Some(pfn);
        figures.pages += 1;
    }
    mark("peak", hold, tsc_hz);

    while let Some(pfn) = head {
        head = link(pfn);
        free(pfn);
    }
    // Pages in the page caches are not merged: return them to their zones.
    drain();
    let mut reporter = balloon.as_mut().map(BalloonReporter::new);
    for _ in 0..PASSES {
        match report(reporter.as_mut()) {
            Ok(stats) => {
                figures.passes += 1;
                figures.chunks_given_back += stats.chunks_given_back;
                figures.memmap_bytes_released += stats.memmap_bytes_released;
            }
            Err(e) => {
                let why = reporter.as_ref().and_then(|r| r.error);
                match why {
                    Some(b) => println!("meminit guest: reporting free memory failed: {b}"),
                    None => println!("meminit guest: reporting free memory failed: {e}"),
                }
                figures.error = why;
                figures.report_failed = true;
                break;
            }
        }
    }
    if let Some(r) = reporter {
        figures.reported_bytes = r.bytes;
        figures.reported_blocks = r.blocks;
        figures.report_calls = r.calls;
        if !figures.report_failed {
            figures.reported_zeroed = r.first.map(is_zero);
        }
    }
    // The memmap of the chunks given back (`memmap=chunk`) goes to the host too.
    if let (Some(b), false) = (balloon.as_mut(), figures.report_failed) {
        match crate::paging::report_released_memmap(&mut |ranges| b.report(ranges)) {
            Ok(bytes) => figures.memmap_reported_bytes = bytes,
            Err(e) => {
                println!("meminit guest: reporting the memmap given back failed: {e}");
                figures.error = Some(e);
                figures.report_failed = true;
            }
        }
    }
    println!("meminit guest: spike: {figures}");
    mark("released", hold, tsc_hz);
    figures
}

impl fmt::Display for SpikeFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pages written and freed; {} bytes reported in {} ranges; {} chunks given back, {} bytes of memmap released ({} reported), in {} passes",
            self.pages,
            self.reported_bytes,
            self.reported_blocks,
            self.chunks_given_back,
            self.memmap_bytes_released,
            self.memmap_reported_bytes,
            self.passes
        )?;
        match self.reported_zeroed {
            Some(true) => write!(f, "; the host discarded them (they read as zeros)"),
            Some(false) => write!(
                f,
                "; the host did NOT discard them (they kept their content)"
            ),
            None => Ok(()),
        }
    }
}

/// Writes one byte in every cache line of the page, as a workload would.
fn write_page(pfn: Pfn) {
    let page = pfn.addr() as *mut u8;
    for offset in (0..4096).step_by(64) {
        // SAFETY: the page was just allocated to us and RAM is identity-mapped.
        unsafe { page.add(offset).write_volatile(0xa5) };
    }
}

/// Chains `pfn` to `next` through its first word.
fn set_link(pfn: Pfn, next: Option<Pfn>) {
    // SAFETY: the page is allocated to the spike and identity-mapped; its first
    // word is the spike's to use.
    unsafe { (pfn.addr() as *mut u64).write_volatile(next.map_or(u64::MAX, |p| p.0)) };
}

/// The page chained after `pfn`.
fn link(pfn: Pfn) -> Option<Pfn> {
    // SAFETY: the page is still allocated to the spike (it is read before it is
    // freed) and identity-mapped.
    let next = unsafe { (pfn.addr() as *const u64).read_volatile() };
    (next != u64::MAX).then_some(Pfn(next))
}

/// Whether the page reads as zeros at the words the spike wrote (its first word
/// and a byte in each cache line).
fn is_zero(pfn: Pfn) -> bool {
    let page = pfn.addr() as *const u8;
    (0..4096).step_by(64).all(|offset| {
        // SAFETY: the page is free (just reported) and nothing allocates on this
        // CPU or any other meanwhile; RAM is identity-mapped, and reading a free
        // page changes nothing.
        unsafe { page.add(offset).read_volatile() == 0 }
    }) && {
        // SAFETY: as above.
        unsafe { (pfn.addr() as *const u64).read_volatile() == 0 }
    }
}
