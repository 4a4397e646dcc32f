//! A backing that fails on command: a section whose memmap cannot be populated
//! must not stop growth from the zone's other sections, nor the fall-back to lower
//! zones, and the failure is reported only when nothing else can serve. A
//! deferred worker goes on past a failing chunk, retries it, and reports it.

#![cfg(not(miri))]

mod common;

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::Mutex;

use common::Lent;
use meminit::{
    AllocError, Allocator, BackingError, ChunkError, Config, Constraint, CpuId, Layout,
    LayoutBuilder, MemmapBacking, MemmapPiece, NodeId, Page, PageSource, Populated, RangeKind,
    SliceBacking, Strategy, ZoneType, WORKER_RETRIES,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// [`SliceBacking`], except for the sections in `failing`, and for the next
/// `fail_next[s]` calls for section `s`.
struct Failing<'m> {
    inner: SliceBacking<'m>,
    failing: Mutex<HashSet<usize>>,
    fail_next: Mutex<HashMap<usize, u32>>,
    /// Calls of `populate`, per section.
    calls: Mutex<HashMap<usize, u32>>,
}

// SAFETY: every promise is `SliceBacking`'s, to which this delegates; it only
// refuses some calls, which the trait allows.
unsafe impl MemmapBacking for Failing<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        self.inner.descriptors()
    }

    fn populate(
        &self,
        section: MemmapPiece,
        layout: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(section.section)
            .or_default() += 1;
        let transient = match self.fail_next.lock().unwrap().get_mut(&section.section) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        if transient || self.failing.lock().unwrap().contains(&section.section) {
            return Err(BackingError {
                section: section.section,
                reason: "injected failure",
            });
        }
        self.inner.populate(section, layout, pages)
    }
}

type Alloc<'a> = Allocator<'a, Failing<'a>, parking_lot::RawMutex>;

fn with_failing(layout: &Layout, failing: &[usize], f: impl FnOnce(&Alloc<'_>)) {
    with_failing_as(layout, failing, &[], Strategy::OnDemand, f)
}

/// An allocator of `strategy` whose backing always fails `failing`, and fails
/// section `s` the first `n` times for each `(s, n)` of `transient`.
fn with_failing_as(
    layout: &Layout,
    failing: &[usize],
    transient: &[(usize, u32)],
    strategy: Strategy,
    f: impl FnOnce(&Alloc<'_>),
) {
    let mut lent = Lent::for_layout(layout);
    let backing = Failing {
        inner: SliceBacking::new(&mut lent.memmap),
        failing: Mutex::new(failing.iter().copied().collect()),
        fail_next: Mutex::new(transient.iter().copied().collect()),
        calls: Mutex::new(HashMap::new()),
    };
    let a = Allocator::new(
        layout.clone(),
        backing,
        &lent.slots,
        &lent.cpus,
        Config::new(strategy),
    )
    .unwrap();
    f(&a);
}

fn calls(a: &Alloc<'_>, section: usize) -> u32 {
    a.backing()
        .calls
        .lock()
        .unwrap()
        .get(&section)
        .copied()
        .unwrap_or(0)
}

/// 16..48 MiB in 4 MiB sections (one chunk each): sections 4 to 11.
fn eight_sections() -> Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(16 * MIB, 48 * MIB, RangeKind::Usable, NodeId(0));
    b.build().unwrap()
}

#[test]
fn a_worker_goes_on_past_a_failing_chunk_and_reports_it() {
    let l = eight_sections();
    with_failing_as(&l, &[5, 9], &[], Strategy::Deferred, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        // Every other chunk is done; the two failing ones are reported, each
        // tried once in the pass and WORKER_RETRIES times after it.
        assert_eq!(report.chunks, 6, "{report:?}");
        assert_eq!(report.pages, 6 * 1024);
        assert_eq!(report.failed, 2);
        assert!(
            matches!(
                report.error,
                Some(ChunkError::Backing(BackingError { section: 5 | 9, .. }))
            ),
            "{report:?}"
        );
        assert_eq!(calls(a, 5), 1 + WORKER_RETRIES);
        assert_eq!(calls(a, 9), 1 + WORKER_RETRIES);
        assert_eq!(a.init_stats().chunks_done, 6);
        assert!(!a.is_fully_initialised());
        // They stay uninitialised: once the backing recovers, growth takes them.
        a.backing().failing.lock().unwrap().clear();
        let mut n = 0;
        while a.alloc(0, Constraint::Any, NodeId(0)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 8 * 1024);
        assert!(a.is_fully_initialised());
    });
}

#[test]
fn a_worker_retries_a_chunk_that_fails_for_a_moment() {
    let l = eight_sections();
    // Section 6 fails WORKER_RETRIES times, then works: the last retry gets it.
    with_failing_as(&l, &[], &[(6, WORKER_RETRIES)], Strategy::Deferred, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!(report.chunks, 8, "{report:?}");
        assert_eq!(report.failed, 0);
        assert_eq!(report.error, None);
        assert_eq!(calls(a, 6), 1 + WORKER_RETRIES);
        assert!(a.is_fully_initialised());
    });
    // One failure more than the worker tries: reported; the next worker call (the
    // node's cursor is spent) leaves it to growth or a look-up, which succeed.
    let transient = [(6, WORKER_RETRIES + 1)];
    with_failing_as(&l, &[], &transient, Strategy::Deferred, |a| {
        let report = a.run_deferred_worker(NodeId(0));
        assert_eq!((report.chunks, report.failed), (7, 1), "{report:?}");
        assert_eq!(a.run_deferred_worker(NodeId(0)), Default::default());
        let p = a.page_or_init(meminit::Pfn(6 * 1024)).unwrap();
        assert!(p.zone().is_some());
        assert!(a.is_fully_initialised());
    });
}

#[test]
fn workers_on_threads_with_failures_finish_everything_else() {
    let l = eight_sections();
    with_failing_as(&l, &[4, 7, 11], &[], Strategy::Deferred, |a| {
        let reports: Vec<_> = std::thread::scope(|s| {
            let h: Vec<_> = (0..4)
                .map(|_| s.spawn(|| a.run_deferred_worker(NodeId(0))))
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let done: u64 = reports.iter().map(|r| r.chunks).sum();
        let failed: u64 = reports.iter().map(|r| r.failed).sum();
        assert_eq!((done, failed), (5, 3), "{reports:?}");
        for s in [4, 7, 11] {
            assert_eq!(calls(a, s), 1 + WORKER_RETRIES);
        }
        assert_eq!(a.init_stats().chunks_done, 5);
    });
}

#[test]
fn a_failing_section_does_not_block_its_zone() {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(16 * MIB, 32 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    // Section 4 is the zone's first: it never populates.
    with_failing(&l, &[4], |a| {
        let p = a.alloc_on(CpuId(0), 0, Constraint::Any, NodeId(0)).unwrap();
        assert!(p.addr() >= 20 * MIB);
        let mut n = 1;
        let err = loop {
            match a.alloc(0, Constraint::Any, NodeId(0)) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        // Three sections served; the fourth's memory remains, unreachable: the
        // caller hears why, not "out of memory".
        assert_eq!(n, 3 * 1024);
        assert!(
            matches!(err, AllocError::Backing(BackingError { section: 4, .. })),
            "{err}"
        );
        // Once the backing recovers, the section serves.
        a.backing().failing.lock().unwrap().clear();
        let p = a.alloc(0, Constraint::Any, NodeId(0)).unwrap();
        assert!(p.addr() < 20 * MIB);
    });
}

#[test]
fn a_failing_zone_falls_back_to_the_next() {
    let mut b = LayoutBuilder::new();
    b.section_size(128 * MIB)
        .add(MIB, 256 * MIB, RangeKind::Usable, NodeId(0))
        .add(4 * GIB, 4 * GIB + 256 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    // Both sections of the Normal zone fail.
    with_failing(&l, &[32, 33], |a| {
        let p = a.alloc_on(CpuId(1), 3, Constraint::Any, NodeId(0)).unwrap();
        assert_eq!(
            a.page(p).unwrap().zone(),
            Some((NodeId(0), ZoneType::Dma32))
        );
        let z = a.zone_stats_of(NodeId(0), ZoneType::Normal).unwrap();
        assert_eq!(z.uninitialised, z.managed);
    });
}
