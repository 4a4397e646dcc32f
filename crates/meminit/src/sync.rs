//! The atomics of the section-claim protocol, swapped for loom's under `--cfg loom`.
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
