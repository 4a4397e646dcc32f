//! Per-section initialisation state and the claim protocol.
//!
//! Every section moves once through `Uninit → Initialising → Ready`; sections with no
//! present page are `Absent` and stay so. Whoever wins the compare-and-swap out of
//! `Uninit` (the boot path, a deferred worker, an allocation growing its zone, a
//! descriptor look-up) holds a [`Claim`], the only proof that it may write the
//! section's descriptors; everyone else sees `Initialising` or `Ready` and waits or
//! goes elsewhere. A claim becomes `Ready` with [`Claim::publish`] once every
//! descriptor is written, and is counted done with [`Published::finish`] once its
//! free pages are on their zones' lists; the last finish flips the off switch
//! ([`Sections::all_initialised`]).
//!
//! This module owns the states and their memory orderings. It knows nothing of
//! descriptors, zones or the layout, and it takes no lock.

use crate::sync::{spin_hint, AtomicBool, AtomicU8, AtomicUsize};
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Where a section is in its initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SectionState {
    /// No present page: no descriptors, no memmap, ever.
    Absent = 0,
    /// Present pages, descriptors not written yet.
    Uninit = 1,
    /// Claimed: its owner is populating the memmap and writing descriptors.
    Initialising = 2,
    /// Every descriptor is written and may be read.
    Ready = 3,
}

impl SectionState {
    #[inline]
    fn from_u8(v: u8) -> SectionState {
        match v {
            1 => SectionState::Uninit,
            2 => SectionState::Initialising,
            3 => SectionState::Ready,
            _ => SectionState::Absent,
        }
    }
}

/// The state word of one section. The embedder provides a slice of these, one per
/// section ([`crate::Layout::section_count`]); the allocator owns their contents.
pub struct SectionSlot {
    state: AtomicU8,
}

impl SectionSlot {
    /// A fresh slot.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SectionSlot {
            state: AtomicU8::new(SectionState::Absent as u8),
        }
    }

    /// A fresh slot.
    #[cfg(loom)]
    pub fn new() -> Self {
        SectionSlot {
            state: AtomicU8::new(SectionState::Absent as u8),
        }
    }
}

impl SectionSlot {
    /// Sets the state through exclusive access: no other thread can see the slot.
    fn set_unshared(&mut self, state: SectionState) {
        #[cfg(not(loom))]
        {
            *self.state.get_mut() = state as u8;
        }
        #[cfg(loom)]
        self.state.with_mut(|v| *v = state as u8);
    }

    fn get_unshared(&mut self) -> SectionState {
        #[cfg(not(loom))]
        let v = *self.state.get_mut();
        #[cfg(loom)]
        let v = self.state.with_mut(|v| *v);
        SectionState::from_u8(v)
    }
}

impl Default for SectionSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The state of every section, and how many are not finished yet.
pub struct Sections<'a> {
    slots: &'a [SectionSlot],
    /// Sections with present pages: fixed at start-up.
    present: usize,
    /// Sections with present pages that are not yet finished.
    unfinished: AtomicUsize,
    /// Set once `unfinished` reaches zero: growth is off for good.
    all_initialised: AtomicBool,
}

impl<'a> Sections<'a> {
    /// Takes `slots` (at least `count` of them), marks every section `Absent`, then
    /// the sections that `present` spans (ranges `[first, end)` of section
    /// indices) `Uninit`. The cost is one byte write per section, done as a plain
    /// fill (the slots are not shared yet), plus one per present range: nothing
    /// is looked up per section. Returns `None` if `slots` is too short.
    pub fn new(
        slots: &'a mut [SectionSlot],
        count: usize,
        present: impl Iterator<Item = (usize, usize)>,
    ) -> Option<Self> {
        let slots = slots.get_mut(..count)?;
        for slot in slots.iter_mut() {
            slot.set_unshared(SectionState::Absent);
        }
        let mut unfinished = 0;
        for (first, end) in present {
            for slot in &mut slots[first..end] {
                if slot.get_unshared() == SectionState::Absent {
                    slot.set_unshared(SectionState::Uninit);
                    unfinished += 1;
                }
            }
        }
        Some(Sections {
            slots,
            present: unfinished,
            unfinished: AtomicUsize::new(unfinished),
            all_initialised: AtomicBool::new(unfinished == 0),
        })
    }

    /// Sections with present pages (not `Absent`).
    pub fn present(&self) -> usize {
        self.present
    }

    /// The state of section `index` (`Absent` past the end).
    ///
    /// Acquire: pairs with the Release in [`Claim::publish`], so a caller that sees
    /// `Ready` also sees every descriptor the claimant wrote.
    #[inline]
    pub fn state(&self, index: usize) -> SectionState {
        match self.slots.get(index) {
            Some(slot) => SectionState::from_u8(slot.state.load(Acquire)),
            None => SectionState::Absent,
        }
    }

    /// Tries to take section `index` out of `Uninit`. On failure returns the state
    /// found: someone else owns or finished it, or it has no memory.
    pub fn claim(&self, index: usize) -> Result<Claim<'_, 'a>, SectionState> {
        let slot = self.slots.get(index).ok_or(SectionState::Absent)?;
        // Acquire on success pairs with the Release in `Claim::drop`, when an earlier
        // claimant gave the section back after a failure; on failure it pairs with
        // `publish`, so a caller told `Ready` may read the descriptors.
        match slot.state.compare_exchange(
            SectionState::Uninit as u8,
            SectionState::Initialising as u8,
            Acquire,
            Acquire,
        ) {
            Ok(_) => Ok(Claim {
                sections: self,
                index,
                published: false,
            }),
            Err(found) => Err(SectionState::from_u8(found)),
        }
    }

    /// Waits while section `index` is `Initialising`, and returns the state it left
    /// that for (`Ready`, or `Uninit` if its claimant gave it back).
    pub fn wait_while_initialising(&self, index: usize) -> SectionState {
        loop {
            match self.state(index) {
                SectionState::Initialising => spin_hint(),
                other => return other,
            }
        }
    }

    /// Sections with present pages not yet finished.
    pub fn unfinished(&self) -> usize {
        // Relaxed: a statistic; decisions use `all_initialised`.
        self.unfinished.load(Relaxed)
    }

    /// The off switch: true once every section is initialised and its pages are on
    /// the free lists. Never goes back to false.
    ///
    /// Acquire: pairs with the Release in [`Published::finish`] of the last section.
    #[inline]
    pub fn all_initialised(&self) -> bool {
        self.all_initialised.load(Acquire)
    }

    /// Whether `claim` was taken from this table.
    pub(crate) fn owns(&self, claim: &Claim<'_, '_>) -> bool {
        core::ptr::eq(
            self as *const Self as *const u8,
            claim.sections as *const Sections<'_> as *const u8,
        )
    }
}

/// Exclusive ownership of one section in `Initialising`. Dropping it without
/// [`publish`](Claim::publish) gives the section back (`Uninit`) for another try.
pub struct Claim<'s, 'a> {
    sections: &'s Sections<'a>,
    index: usize,
    published: bool,
}

impl<'s, 'a> Claim<'s, 'a> {
    /// The claimed section.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Marks the section `Ready`: its descriptors may be read from now on.
    ///
    /// Release: pairs with the Acquire of [`Sections::state`] and of a failed
    /// [`Sections::claim`]; everything written before this is visible to them.
    pub fn publish(mut self) -> Published<'s, 'a> {
        self.published = true;
        self.sections.slots[self.index]
            .state
            .store(SectionState::Ready as u8, Release);
        Published {
            sections: self.sections,
        }
    }
}

impl Drop for Claim<'_, '_> {
    fn drop(&mut self) {
        if !self.published {
            // Release: pairs with the Acquire of the next successful claim.
            self.sections.slots[self.index]
                .state
                .store(SectionState::Uninit as u8, Release);
        }
    }
}

/// A section that is `Ready` but whose pages may not all be on free lists yet.
#[must_use = "a published section must be finished once its pages are on the free lists"]
pub struct Published<'s, 'a> {
    sections: &'s Sections<'a>,
}

impl Published<'_, '_> {
    /// Counts the section done. Returns true if it was the last one, in which case
    /// the off switch is now set.
    pub fn finish(self) -> bool {
        // AcqRel: the Release half orders this section's splices before the count
        // drops; the Acquire half lets the last finisher see every earlier one.
        if self.sections.unfinished.fetch_sub(1, AcqRel) == 1 {
            // Release: pairs with the Acquire in `all_initialised`.
            self.sections.all_initialised.store(true, Release);
            true
        } else {
            false
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn claim_is_exclusive_and_publish_is_final() {
        let mut slots: [SectionSlot; 3] = Default::default();
        let s = Sections::new(&mut slots, 3, [(0, 1), (2, 3)].into_iter()).unwrap();
        assert_eq!(s.state(1), SectionState::Absent);
        assert_eq!(s.unfinished(), 2);
        let c = s.claim(0).unwrap();
        assert_eq!(s.claim(0).err(), Some(SectionState::Initialising));
        assert!(!c.publish().finish());
        assert_eq!(s.claim(0).err(), Some(SectionState::Ready));
        assert_eq!(s.claim(1).err(), Some(SectionState::Absent));
        assert!(!s.all_initialised());
        assert!(s.claim(2).unwrap().publish().finish());
        assert!(s.all_initialised());
    }

    #[test]
    fn dropped_claim_gives_the_section_back() {
        let mut slots: [SectionSlot; 1] = Default::default();
        let s = Sections::new(&mut slots, 1, [(0, 1)].into_iter()).unwrap();
        drop(s.claim(0).unwrap());
        assert_eq!(s.state(0), SectionState::Uninit);
        assert!(s.claim(0).is_ok());
    }

    #[test]
    fn too_few_slots() {
        let mut slots: [SectionSlot; 1] = Default::default();
        assert!(Sections::new(&mut slots, 2, [(0, 2)].into_iter()).is_none());
    }
}
