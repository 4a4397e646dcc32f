//! Which contexts are inside a call of the backing (`populate` or `accept`), so
//! that a call from one of them back into the allocator fails instead of waiting
//! for the chunk its own caller holds.
//!
//! The embedder names contexts with [`crate::Config::context`] (a CPU number with
//! preemption off, or a thread id). The claimant of a chunk records its context
//! here for the length of its backing calls; the slow paths that would initialise
//! or wait for a chunk look their caller up. The fast path never looks.
//!
//! This module owns the table and its memory orderings. It takes no lock, never
//! waits, and knows nothing of chunks or of the backing.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Contexts that can be inside backing calls at once: one per CPU of a 64-CPU
/// machine. One more waits for a place before it calls the backing. It cannot
/// wait forever: those recorded are inside the backing, and anything they ask of
/// the allocator fails rather than waits for the chunk the waiting one holds.
pub const MAX_BACKING_CONTEXTS: usize = 64;

/// The contexts inside a backing call: `context + 1` in a slot, 0 for a free one.
pub(crate) struct InBacking {
    slots: [AtomicU64; MAX_BACKING_CONTEXTS],
}

impl InBacking {
    pub(crate) const fn new() -> Self {
        InBacking {
            slots: [const { AtomicU64::new(0) }; MAX_BACKING_CONTEXTS],
        }
    }

    /// Records that `context` is inside a backing call until the guard drops,
    /// waiting for a free place if every one is taken. `u64::MAX` is not
    /// recorded.
    pub(crate) fn enter(&self, context: u64) -> Entered<'_> {
        loop {
            if let Some(entered) = self.try_enter(context) {
                return entered;
            }
            crate::sync::spin_hint();
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

    /// Whether `context` is inside a backing call. Only meaningful for the
    /// calling context itself: the answer about another may be stale.
    pub(crate) fn contains(&self, context: u64) -> bool {
        let mark = context.wrapping_add(1);
        // Relaxed: this context's own `enter` and `Entered::drop` come before this
        // load in program order, so it sees its own mark exactly while it is
        // inside; a slot freed by it and taken by another holds the other's mark.
        mark != 0 && self.slots.iter().any(|s| s.load(Relaxed) == mark)
    }
}

/// A context recorded inside a backing call; dropping it takes the record out.
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
        let a = t.enter(7);
        let b = t.enter(9);
        assert!(t.contains(7) && t.contains(9) && !t.contains(8));
        drop(a);
        assert!(!t.contains(7) && t.contains(9));
        drop(b);
        assert!(!t.contains(9));
        // u64::MAX cannot be recorded: never taken for inside.
        let _c = t.enter(u64::MAX);
        assert!(!t.contains(u64::MAX));
    }

    #[test]
    fn a_full_table_makes_the_next_context_wait_for_a_place() {
        let t = InBacking::new();
        let mut held: Vec<_> = (0..MAX_BACKING_CONTEXTS as u64)
            .map(|c| t.enter(c))
            .collect();
        assert!(t.try_enter(1000).is_none());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _inside = t.enter(1000);
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
}
