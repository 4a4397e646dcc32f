//! No callback ever waits on itself: every callback the allocator makes (the
//! backing's `populate`, `accept`, `depopulate` and `zero`, a [`FreeReporter`]'s
//! `report`, in free page reporting and in give-back) × every public call that
//! can wait, made from inside it on the same context × every strategy × both
//! memmap granularities. Each call must return, served or with a typed
//! `Reentrant` error, and the allocator's invariants must hold afterwards.
//!
//! The machine is built so that each callback runs where a call back would
//! have to wait: the zone the callback concerns has no initialised free
//! memory left but what the callback's caller holds (its chunk being
//! initialised, retired or reported), and the other zone is all allocated.
//! Every case runs on its own thread under a watchdog: a hang fails the test.

mod common;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::{leaked_double, Double, Doubled, Phase};
use meminit::{
    AllocError, AllocFlags, AllocRequest, ChunkError, Config, Constraint, CpuId, FreeReporter,
    Granularity, Layout, LookupError, NoReporter, NodeId, Pfn, RangeKind, ReportError, Strategy,
};

const MIB: u64 = 1 << 20;
/// The first pfn of the zone the callbacks concern (DMA32, from 16 MiB).
const TARGET: u64 = (16 * MIB) >> 12;
/// How long a case may take before it counts as hung.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The callback that calls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Callback {
    Populate,
    Accept,
    Depopulate,
    Zero,
    /// A reporter's `report` in free page reporting: its batch is off the lists.
    Report,
    /// A reporter's `report` for a chunk being given back (`Initialising`).
    ReportGiveBack,
}

/// The public call made from inside the callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Alloc,
    AllocOnCpu,
    Free,
    PageOrInit,
    Worker,
    GiveBack,
    ReportFree,
    Drain,
}

const CALLS: [Call; 8] = [
    Call::Alloc,
    Call::AllocOnCpu,
    Call::Free,
    Call::PageOrInit,
    Call::Worker,
    Call::GiveBack,
    Call::ReportFree,
    Call::Drain,
];

/// A small id per thread: the embedder's "current context" on a host.
fn thread_context() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, SeqCst));
    ID.with(|id| *id)
}

type A = Doubled<'static>;

/// One case's trap: the allocator calls back, once, from the chosen callback,
/// and what the call back returned is kept.
struct Trap {
    callback: Callback,
    call: Call,
    allocator: &'static A,
    /// Set just before the call that should make the callback fire.
    armed: AtomicBool,
    /// What the call back returned, as text, and whether that is allowed.
    outcome: Mutex<Option<(String, bool)>>,
    /// Blocks the test holds: (pfn, order).
    held: Mutex<Vec<(Pfn, u32)>>,
}

impl Trap {
    /// Fires the call back if armed and `pfn` is in the target zone.
    fn fire(&self, which: Callback, pfn: Pfn) {
        if which != self.callback || pfn.0 < TARGET || !self.armed.swap(false, SeqCst) {
            return;
        }
        let outcome = call_back(self.allocator, self.call, pfn, &self.held);
        *self.outcome.lock().unwrap() = Some(outcome);
    }
}

/// The reporter: fires for a batch of free blocks (`Report`) or for a chunk
/// being given back (`ReportGiveBack`), told apart by the chunk's state.
struct HookReporter(&'static Trap);

impl FreeReporter for HookReporter {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        let pfn = ranges[0].start;
        let which = match self.0.allocator.page(pfn) {
            Err(LookupError::Initialising { .. }) => Callback::ReportGiveBack,
            _ => Callback::Report,
        };
        self.0.fire(which, pfn);
        Ok(())
    }
}

/// Makes `call` from inside a callback about `pfn`; returns what it returned and
/// whether that is allowed: served, or a `Reentrant` error.
fn call_back(a: &A, call: Call, pfn: Pfn, held: &Mutex<Vec<(Pfn, u32)>>) -> (String, bool) {
    let keep = |r: &Result<Pfn, AllocError>| {
        if let Ok(p) = r {
            held.lock().unwrap().push((*p, 0));
        }
    };
    match call {
        Call::Alloc => {
            let r = a.alloc(AllocRequest::order(0));
            keep(&r);
            let ok = matches!(r, Ok(_) | Err(AllocError::Reentrant { .. }));
            (format!("{r:?}"), ok)
        }
        Call::AllocOnCpu => {
            let r = a.alloc(AllocRequest::order(0).on(CpuId(0)));
            keep(&r);
            let ok = matches!(r, Ok(_) | Err(AllocError::Reentrant { .. }));
            (format!("{r:?}"), ok)
        }
        Call::Free => {
            // The DMA zone's block, which the test holds.
            let (block, order) = held.lock().unwrap().remove(0);
            let r = a.free(block);
            (format!("{r:?}"), r == Ok(order))
        }
        Call::PageOrInit => {
            let r = a.page_or_init(pfn).map(|_| ());
            let ok = matches!(r, Ok(()) | Err(LookupError::Reentrant { .. }));
            (format!("{r:?}"), ok)
        }
        Call::Worker => {
            let r = a.run_deferred_worker(NodeId(0));
            let ok = matches!(r.error, None | Some(ChunkError::Reentrant { .. }));
            (format!("{r:?}"), ok)
        }
        Call::GiveBack => (format!("{:?}", a.give_back()), true),
        Call::ReportFree => {
            let r = a.report_free(&mut NoReporter);
            (format!("{r:?}"), r.is_ok())
        }
        Call::Drain => {
            let r = (a.drain(None).unwrap_or(0), a.drain(Some(CpuId(0))));
            (format!("{r:?}"), r.1.is_ok())
        }
    }
}

/// 4 MiB of DMA (one chunk, in section 0) and 4 MiB of DMA32 (one chunk, in
/// section 2), in 8 MiB sections, so that a section has room for two chunks
/// and the two granularities differ. With `hole`, the DMA32 chunk misses its
/// first page: its free blocks are then partly below the reporting order, and
/// give-back reports them itself.
fn layout(hole: bool) -> Layout {
    let start = if hole { 16 * MIB + 4096 } else { 16 * MIB };
    common::layout(
        8 * MIB,
        &[
            (4 * MIB, 8 * MIB, RangeKind::Usable, NodeId(0)),
            (start, 20 * MIB, RangeKind::Usable, NodeId(0)),
        ],
    )
}

/// A leaked allocator (the backing calls it back, so it must be `'static`) over
/// the shared double, which releases the memmap it is asked to depopulate and
/// can zero, with the case's trap set as its hook.
fn machine(
    callback: Callback,
    call: Call,
    strategy: Strategy,
    granularity: Granularity,
) -> &'static Trap {
    let layout = layout(callback == Callback::ReportGiveBack);
    let config = Config {
        context: Some(thread_context),
        give_back: true,
        give_back_reserve: 0,
        ..Config::new(strategy)
    };
    let double = Double::new().granularity(granularity).releasing().zeroing();
    let allocator = leaked_double(&layout, config, double);
    let trap: &'static Trap = Box::leak(Box::new(Trap {
        callback,
        call,
        allocator,
        armed: AtomicBool::new(false),
        outcome: Mutex::new(None),
        held: Mutex::new(Vec::new()),
    }));
    allocator.backing().set_hook(move |phase, piece| {
        let which = match phase {
            Phase::Populate => Callback::Populate,
            Phase::Accept => Callback::Accept,
            Phase::Depopulate => Callback::Depopulate,
            Phase::Zero => Callback::Zero,
        };
        trap.fire(which, piece.start);
    });
    trap
}

/// One case: sets the machine up, makes the callback fire with the call back
/// inside it, then checks what came back and the invariants.
fn case(callback: Callback, call: Call, strategy: Strategy, granularity: Granularity) {
    let b = machine(callback, call, strategy, granularity);
    let a = b.allocator;
    let first = if callback == Callback::ReportGiveBack {
        TARGET + 1
    } else {
        TARGET
    };
    // The DMA zone, all allocated: nothing to fall back on.
    let dma = a
        .alloc(AllocRequest::order(10).within(Constraint::Dma))
        .expect("the DMA chunk");
    b.held.lock().unwrap().push((dma, 10));
    let arm = || b.armed.store(true, SeqCst);
    match callback {
        Callback::Populate | Callback::Accept => {
            if strategy == Strategy::Eager {
                // Give the initialised chunk back, to be initialised again.
                a.give_back();
                assert_eq!(a.give_back().chunks_given_back, 1);
            }
            arm();
            let p = a.alloc(AllocRequest::order(0).on(CpuId(0)));
            if let Ok(p) = p {
                b.held.lock().unwrap().push((p, 0));
            }
        }
        Callback::Depopulate => {
            a.page_or_init(Pfn(first)).expect("the target chunk");
            a.give_back();
            arm();
            assert_eq!(a.give_back().chunks_given_back, 1);
        }
        Callback::Zero => {
            a.page_or_init(Pfn(first)).expect("the target chunk");
            arm();
            let flags = AllocFlags::ZEROED;
            let (p, _) = a
                .alloc_traced(AllocRequest::order(0).on(CpuId(0)).flags(flags))
                .expect("a zeroed page");
            b.held.lock().unwrap().push((p, 0));
        }
        Callback::Report => {
            a.page_or_init(Pfn(first)).expect("the target chunk");
            arm();
            a.report_free(&mut HookReporter(b)).expect("reported");
        }
        Callback::ReportGiveBack => {
            a.page_or_init(Pfn(first)).expect("the target chunk");
            a.give_back();
            arm();
            let stats = a.report_free(&mut HookReporter(b)).expect("reported");
            assert_eq!(stats.chunks_given_back, 1, "{stats:?}");
        }
    }
    let what = format!("{callback:?} × {call:?} × {strategy:?} × {granularity:?}");
    let outcome = b.outcome.lock().unwrap().take();
    let Some((said, ok)) = outcome else {
        panic!("{what}: the callback never fired");
    };
    assert!(ok, "{what}: the call back returned {said}");
    check_invariants(b, &what);
}

/// Frees everything held, then checks: counts add up per zone; once all is
/// initialised every free page can be allocated exactly once; nothing is left
/// unmerged.
fn check_invariants(trap: &Trap, what: &str) {
    let a = trap.allocator;
    for (p, _) in trap.held.lock().unwrap().drain(..) {
        a.free(p)
            .unwrap_or_else(|e| panic!("{what}: free {p}: {e}"));
    }
    a.drain(None).unwrap_or(0);
    for z in a.zones() {
        assert_eq!(
            z.free + z.uninitialised + z.reserved,
            z.present,
            "{what}: {z:?}"
        );
    }
    for pfn in (0..a.layout().end_pfn().0).step_by(1024) {
        let _ = a.page_or_init(Pfn(pfn));
    }
    assert!(a.stats().fully_initialised, "{what}");
    let free: u64 = a.zones().map(|z| z.free).sum();
    let mut seen = HashSet::new();
    while let Ok(p) = a.alloc(AllocRequest::order(0)) {
        assert!(seen.insert(p), "{what}: {p} handed out twice");
    }
    assert_eq!(seen.len() as u64, free, "{what}");
    for p in seen {
        a.free(p).unwrap();
    }
    a.drain(None).unwrap_or(0);
    assert_eq!(a.unmerged_free_blocks(), 0, "{what}");
}

/// Runs every case of `cases` on its own thread; fails, naming them, if any
/// panics or has not returned within the watchdog's time.
fn run(cases: Vec<(Callback, Call, Strategy, Granularity)>) {
    let deadline = Instant::now() + WATCHDOG;
    let waits: Vec<_> = cases
        .into_iter()
        .map(|(callback, call, strategy, granularity)| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| case(callback, call, strategy, granularity));
                let _ = tx.send(r.is_ok());
            });
            (
                format!("{callback:?} × {call:?} × {strategy:?} × {granularity:?}"),
                rx,
            )
        })
        .collect();
    let mut failed = Vec::new();
    for (what, rx) in waits {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(true) => {}
            Ok(false) => failed.push(format!("{what}: failed")),
            Err(_) => failed.push(format!("{what}: hung")),
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Every call × strategy × granularity for `callback`.
fn matrix(callback: Callback) {
    let mut cases = Vec::new();
    for call in CALLS {
        for strategy in Strategy::ALL {
            for granularity in [Granularity::Section, Granularity::Chunk] {
                cases.push((callback, call, strategy, granularity));
            }
        }
    }
    run(cases);
}

// --- The two hangs, first on their own -----------------------------------------

/// Issue #15 item 6: a `depopulate` that allocates. The section's memmap word
/// says `Populating` (or, chunk by chunk, the chunk says `Initialising`) while
/// `depopulate` runs; growing into it waited for the caller's own retirement.
#[test]
fn a_depopulate_that_allocates_returns() {
    let mut cases = Vec::new();
    for strategy in Strategy::ALL {
        for granularity in [Granularity::Section, Granularity::Chunk] {
            for call in [Call::Alloc, Call::PageOrInit] {
                cases.push((Callback::Depopulate, call, strategy, granularity));
            }
        }
    }
    run(cases);
}

/// Issue #17 item 4: a reporter that allocates, when only its own batch is left:
/// the allocation waited for the batch to come back.
#[test]
fn a_reporter_that_allocates_returns() {
    let cases = Strategy::ALL
        .into_iter()
        .map(|s| (Callback::Report, Call::Alloc, s, Granularity::Section))
        .collect();
    run(cases);
}

/// A reporter that allocates while give-back reports a chunk it holds
/// (`Initialising`): growing waited for that chunk.
#[test]
fn a_reporter_during_give_back_that_allocates_returns() {
    let cases = Strategy::ALL
        .into_iter()
        .map(|s| {
            (
                Callback::ReportGiveBack,
                Call::Alloc,
                s,
                Granularity::Section,
            )
        })
        .collect();
    run(cases);
}

// --- The whole matrix ---------------------------------------------------------

#[test]
fn populate_calls_back() {
    matrix(Callback::Populate);
}

#[test]
fn accept_calls_back() {
    matrix(Callback::Accept);
}

#[test]
fn depopulate_calls_back() {
    matrix(Callback::Depopulate);
}

#[test]
fn zero_calls_back() {
    matrix(Callback::Zero);
}

#[test]
fn report_calls_back() {
    matrix(Callback::Report);
}

#[test]
fn report_in_give_back_calls_back() {
    matrix(Callback::ReportGiveBack);
}
