//! The atomics of the section-claim protocol, swapped for loom's under `--cfg loom`,
//! and the one way the crate waits: [`Backoff`].
//!
//! Only [`crate::section`] uses these (its claim words, and the per-chunk use
//! words that give-back reads): it is the protocol the loom models explore.
//! Everything else uses `core::sync::atomic` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

/// One step of a busy wait: a pause instruction, or a yield to loom's scheduler.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Re-checks a wait makes with [`spin_hint`] alone before it calls the
/// embedder's [`Config::wait`](crate::Config::wait) between re-checks: about a
/// microsecond of pause instructions, enough for a chunk's splice or a
/// neighbour's compare-and-swap, far less than a populate or a report.
pub(crate) const WAIT_SPINS: u32 = 128;

/// A wait between re-checks of a condition another context will change: a
/// bounded spin, then the embedder's hook (or, without one, the spin for ever).
/// It never decides anything: the caller re-checks after every [`pause`](Self::pause).
pub(crate) struct Backoff {
    spins: u32,
    relax: Option<fn()>,
}

impl Backoff {
    /// A wait that calls `relax` once [`WAIT_SPINS`] spins went by.
    #[inline]
    pub(crate) const fn new(relax: Option<fn()>) -> Self {
        Backoff { spins: 0, relax }
    }

    /// One step between two re-checks.
    #[inline]
    pub(crate) fn pause(&mut self) {
        match self.relax {
            Some(relax) if self.spins >= WAIT_SPINS => relax(),
            _ => {
                self.spins = self.spins.saturating_add(1);
                spin_hint();
            }
        }
    }
}
