//! Deterministic interleavings of an allocation with another thread's growth.
//!
//! The zone lock is the embedder's type, so a test lock can do what preemption
//! does: stop a thread right after it unlocks. Thread A allocates from a zone that
//! has nothing on its free lists yet; it is stopped after its n-th unlock, for every
//! n; while it is stopped, another thread initialises all of A's zone, so that A,
//! when it resumes, finds nothing left to initialise. The allocation must still
//! succeed: memory is free, and `OutOfMemory` would be a lie.

#![cfg(not(miri))]

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use common::Lent;
use lock_api::{GuardSend, RawMutex};
use meminit::NodeId;
use meminit::{
    AllocRequest, Allocator, Config, Constraint, CpuId, Layout, LayoutBuilder, LookupError, Pfn,
    RangeKind, SliceBacking, Strategy,
};

const MIB: u64 = 1 << 20;

thread_local! {
    /// Unlocks left before this thread stops; 0: never stops.
    static STOP_AFTER: Cell<usize> = const { Cell::new(0) };
}

/// Where the stopped thread is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gate {
    Open,
    Stopped,
    Resumed,
}

static GATE: Mutex<Gate> = Mutex::new(Gate::Open);
/// The gate is one for the whole binary: tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());
static GATE_CHANGED: Condvar = Condvar::new();

/// A spin lock that stops its thread after the armed number of unlocks, until the
/// test resumes it: the window preemption opens between two steps of an
/// allocation.
struct StoppingLock {
    locked: AtomicBool,
}

// SAFETY: a test-and-set lock: `try_lock` succeeds for one caller until `unlock`;
// Acquire on taking it pairs with the Release of `unlock`.
unsafe impl RawMutex for StoppingLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = StoppingLock {
        locked: AtomicBool::new(false),
    };
    type GuardMarker = GuardSend;

    fn lock(&self) {
        while !self.try_lock() {
            std::thread::yield_now();
        }
    }

    fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
        let left = STOP_AFTER.get();
        if left == 0 {
            return;
        }
        STOP_AFTER.set(left - 1);
        if left == 1 {
            let mut gate = GATE.lock().unwrap();
            *gate = Gate::Stopped;
            GATE_CHANGED.notify_all();
            while *gate != Gate::Resumed {
                gate = GATE_CHANGED.wait(gate).unwrap();
            }
        }
    }
}

type Alloc<'a> = Allocator<'a, SliceBacking<'a>, StoppingLock>;

fn with_allocator(layout: &Layout, f: impl FnOnce(&Alloc<'_>)) {
    let mut lent = Lent::<StoppingLock>::for_layout(layout);
    let a = Allocator::new(
        layout.clone(),
        SliceBacking::new(&mut lent.memmap),
        &lent.slots,
        &lent.cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    f(&a);
}

/// Initialises every section of `[start, end)` that no one has claimed, without
/// waiting for a section a stopped thread may hold.
fn initialise(a: &Alloc<'_>, start: u64, end: u64) {
    let section = a.layout().section_pages();
    for first in (start..end).step_by(section as usize) {
        if let Err(LookupError::Uninitialised { .. }) = a.page(Pfn(first)) {
            a.page_or_init(Pfn(first)).unwrap();
        }
    }
}

/// Runs `alloc` on a thread stopped after its `n`-th unlock, initialises
/// `[start, end)` while it is stopped, resumes it and returns what `alloc` got.
/// Returns `None` if the allocation finished in fewer than `n` unlocks.
fn interleave<T: Send>(
    a: &Alloc<'_>,
    n: usize,
    alloc: impl FnOnce() -> T + Send,
    (start, end): (u64, u64),
) -> Option<T> {
    *GATE.lock().unwrap() = Gate::Open;
    std::thread::scope(|s| {
        let allocating = s.spawn(move || {
            STOP_AFTER.set(n);
            let out = alloc();
            let stopped = STOP_AFTER.get() == 0;
            STOP_AFTER.set(0);
            (out, stopped)
        });
        let mut gate = GATE.lock().unwrap();
        loop {
            if *gate == Gate::Stopped {
                drop(gate);
                initialise(a, start, end);
                let mut gate = GATE.lock().unwrap();
                *gate = Gate::Resumed;
                GATE_CHANGED.notify_all();
                break;
            }
            if allocating.is_finished() {
                break;
            }
            gate = GATE_CHANGED
                .wait_timeout(gate, Duration::from_millis(10))
                .unwrap()
                .0;
        }
        let (out, stopped) = allocating.join().unwrap();
        stopped.then_some(out)
    })
}

/// One zone (DMA32 only): the window between a failed take and the look at the
/// off switch, and every later one.
#[test]
fn allocation_succeeds_when_another_thread_finishes_the_zone_meanwhile() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(16 * MIB, 40 * MIB, RangeKind::Usable, NodeId(0));
    let layout = b.build().unwrap();
    let whole = (0, layout.end_pfn().0);
    for with_cache in [false, true] {
        let mut n = 1;
        loop {
            let mut done = false;
            with_allocator(&layout, |a| {
                let got = interleave(
                    a,
                    n,
                    || {
                        if with_cache {
                            a.alloc(AllocRequest::order(0).on(CpuId(0)))
                        } else {
                            a.alloc(AllocRequest::order(0))
                        }
                    },
                    whole,
                );
                match got {
                    Some(r) => {
                        r.unwrap_or_else(|e| {
                            panic!("stopped after unlock {n} (cache: {with_cache}): {e}")
                        });
                    }
                    None => done = true,
                }
            });
            if done {
                break;
            }
            n += 1;
        }
        assert!(n > 1, "the allocation never took a lock");
    }
}

/// Two zones: the other thread finishes the DMA zone only, so the off switch stays
/// off and the allocation sees its own zone's count of uninitialised pages drop to
/// zero instead.
#[test]
fn allocation_succeeds_when_its_zone_alone_is_finished_meanwhile() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(MIB, 16 * MIB, RangeKind::Usable, NodeId(0))
        .add(16 * MIB, 32 * MIB, RangeKind::Usable, NodeId(0));
    let layout = b.build().unwrap();
    let dma = (0, (16 * MIB) >> 12);
    let mut n = 1;
    loop {
        let mut done = false;
        with_allocator(&layout, |a| {
            match interleave(
                a,
                n,
                || a.alloc(AllocRequest::order(0).within(Constraint::Dma)),
                dma,
            ) {
                Some(r) => {
                    r.unwrap_or_else(|e| panic!("stopped after unlock {n}: {e}"));
                    assert!(!a.stats().fully_initialised);
                }
                None => done = true,
            }
        });
        if done {
            break;
        }
        n += 1;
    }
    assert!(n > 2, "the allocation never reached its slow path");
}
