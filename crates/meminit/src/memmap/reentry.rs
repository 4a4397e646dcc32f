//! Which contexts are inside a callback of the allocator (the backing's
//! `populate`, `accept`, `depopulate` or `zero`, a reporter's `report`), so that
//! a call from one of them back into the allocator never waits for what its own
//! caller holds: a chunk being initialised or given back, a section's memmap
//! being populated or released, blocks out for reporting.
//!
//! The embedder names contexts with [`crate::Config::context`] (a CPU number with
//! preemption off, or a thread id). The allocator records the calling context
//! here for the length of every callback; the slow paths that would initialise
//! or wait look their caller up, and refuse. The fast path never looks.
//!
//! This module owns the table and its memory orderings. It takes no lock and
//! knows nothing of chunks or of the backing; it waits only for a free place,
//! and only for a context that is not inside already.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Contexts that can be inside callbacks at once: one per CPU of a 64-CPU
/// machine. One more waits for a place before it calls back. It cannot wait
/// forever: those recorded are inside callbacks, where anything they ask of the
/// allocator fails rather than waits, and a callback that calls back into a
/// callback (a `depopulate` that gives back, say) needs no second place.
pub const MAX_BACKING_CONTEXTS: usize = 64;

/// The contexts inside a callback: `context + 1` in a slot, 0 for a free one.
pub(crate) struct InBacking {
    slots: [AtomicU64; MAX_BACKING_CONTEXTS],
}

impl InBacking {
    pub(crate) const fn new() -> Self {
        InBacking {
            slots: [const { AtomicU64::new(0) }; MAX_BACKING_CONTEXTS],
        }
    }

    /// Records that `context` is inside a callback until the guard drops,
    /// waiting for a free place if every one is taken (spinning a while, then
    /// calling `wait` between looks). A context inside already is not recorded
    /// twice: its outer record covers the inner call, and it never waits for a
    /// place. `u64::MAX` is not recorded.
    pub(crate) fn enter(&self, context: u64, wait: Option<fn()>) -> Entered<'_> {
        if self.contains(context) {
            return Entered {
                table: self,
                slot: None,
            };
        }
        let mut backoff = crate::sync::Backoff::new(wait);
        loop {
            if let Some(entered) = self.try_enter(context) {
                return entered;
            }
            backoff.pause();
        }
    }

    /// [`enter`](Self::enter), or `None` if every place is taken.
    fn try_enter(&self, context: u64) -> Option<Entered<'_>> {
        let mark = context.wrapping_add(1);
        if mark == 0 {
            return Some(Entered {
                table: self,
                slot: None,
            });
        }
        for (i, slot) in self.slots.iter().enumerate() {
            // Relaxed: only `context` itself ever looks for `mark` (in
            // `contains`, later on the same context, so program order makes this
            // store visible to it); other contexts only need the exchange to be
            // atomic, so that two never share a slot.
            if slot.compare_exchange(0, mark, Relaxed, Relaxed).is_ok() {
                return Some(Entered {
                    table: self,
                    slot: Some(i),
                });
            }
        }
        None
    }

    /// Whether `context` is inside a callback. Only meaningful for the
    /// calling context itself: the answer about another may be stale.
    pub(crate) fn contains(&self, context: u64) -> bool {
        let mark = context.wrapping_add(1);
        // Relaxed: this context's own `enter` and `Entered::drop` come before this
        // load in program order, so it sees its own mark exactly while it is
        // inside; a slot freed by it and taken by another holds the other's mark.
        mark != 0 && self.slots.iter().any(|s| s.load(Relaxed) == mark)
    }
}

/// A context recorded inside a callback; dropping it takes the record out.
pub(crate) struct Entered<'t> {
    table: &'t InBacking,
    slot: Option<usize>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // Relaxed: see `InBacking::contains`: the only reader that cares is
            // this same context, after this store in program order.
            self.table.slots[i].store(0, Relaxed);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_inside_only_while_entered() {
        let t = InBacking::new();
        assert!(!t.contains(7));
        let a = t.enter(7, None);
        let b = t.enter(9, None);
        assert!(t.contains(7) && t.contains(9) && !t.contains(8));
        drop(a);
        assert!(!t.contains(7) && t.contains(9));
        drop(b);
        assert!(!t.contains(9));
        // u64::MAX cannot be recorded: never taken for inside.
        let _c = t.enter(u64::MAX, None);
        assert!(!t.contains(u64::MAX));
    }

    #[test]
    fn a_full_table_makes_the_next_context_wait_for_a_place() {
        let t = InBacking::new();
        let mut held: Vec<_> = (0..MAX_BACKING_CONTEXTS as u64)
            .map(|c| t.enter(c, None))
            .collect();
        assert!(t.try_enter(1000).is_none());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _inside = t.enter(1000, Some(std::thread::yield_now));
                t.contains(1000)
            });
            held.pop();
            assert!(waiter.join().unwrap());
        });
        assert!(!t.contains(1000));
        assert!(t.contains(0));
        drop(held);
        assert!(!t.contains(0));
    }

    #[test]
    fn a_context_inside_enters_again_without_a_place() {
        let t = InBacking::new();
        let mut held: Vec<_> = (0..MAX_BACKING_CONTEXTS as u64)
            .map(|c| t.enter(c, None))
            .collect();
        // Every place is taken, one of them by context 5: a callback of 5 that
        // calls back into another callback is inside already, and goes on.
        let nested = t.enter(5, None);
        assert!(t.contains(5));
        drop(nested);
        assert!(t.contains(5), "the outer record stays");
        held.clear();
        assert!(!t.contains(5));
    }
}
