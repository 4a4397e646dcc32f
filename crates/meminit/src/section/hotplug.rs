//! Hot-plug's side of the section states: chunks that become present after
//! start-up (`Absent → Uninit`) and leave again (`Uninit → Absent`, or a given
//! back chunk's `Initialising → Absent` through [`super::Retiring::into_absent`]),
//! and the flag that keeps two adds or removes from running at once.
//!
//! Only hot-plug moves a chunk out of `Absent`, and only while it holds the flag,
//! so a plug checks and sets whole sections' words without a race on the chunks
//! it adds; every other transition is a compare-and-swap out of `Uninit` or
//! `Ready`, which a plug never touches. Which chunks may go, and the zones'
//! counters, are the caller's.

use core::ops::Range;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::{shift_of, ChunkState, Sections};

/// The two-bit pairs of chunks `[from, to)` of one section's word (`to` at most
/// the chunks per section), with `pattern` (0b01 for `Uninit`) in each.
fn pairs(from: usize, to: usize, pattern: u64) -> u64 {
    let below = |chunks: usize| match shift_of(chunks) {
        64.. => u64::MAX,
        bits => (1u64 << bits) - 1,
    };
    (pattern * 0x5555_5555_5555_5555) & below(to) & !below(from)
}

/// Proof that the caller is the one add or remove of memory in flight; gives the
/// flag back when dropped.
pub(crate) struct HotplugGuard<'s, 'a> {
    sections: &'s Sections<'a>,
}

impl Drop for HotplugGuard<'_, '_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire of the next `begin_hotplug`, which then
        // sees every chunk state this one left.
        self.sections.hotplug_busy.store(0, Release);
    }
}

impl<'a> Sections<'a> {
    /// Takes the hot-plug flag, or `None` if another add or remove holds it.
    pub(crate) fn begin_hotplug(&self) -> Option<HotplugGuard<'_, 'a>> {
        // Acquire: pairs with the Release in `HotplugGuard::drop`.
        self.hotplug_busy
            .compare_exchange(0, 1, Acquire, Relaxed)
            .ok()
            .map(|_| HotplugGuard { sections: self })
    }

    /// For each section that chunks `chunks` touch, its number and the chunks
    /// of it in the range, as `[from, to)` within the section.
    fn by_section(&self, chunks: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let per = 1usize << self.chunks_shift;
        let mut chunk = chunks.start;
        core::iter::from_fn(move || {
            if chunk >= chunks.end {
                return None;
            }
            let section = chunk >> self.chunks_shift;
            let upto = chunks.end.min((section + 1) * per);
            let item = (section, chunk % per, (upto - 1) % per + 1);
            chunk = upto;
            Some(item)
        })
    }

    /// The first chunk of `chunks` that is not `Absent` (a chunk past the slots
    /// counts as `Absent`).
    pub(crate) fn first_not_absent(&self, chunks: Range<usize>) -> Option<usize> {
        chunks
            .into_iter()
            .find(|&c| self.state(c) != ChunkState::Absent)
    }

    /// Makes chunks `chunks`, all `Absent` (the caller checked, holding `_guard`),
    /// present and `Uninit`, a word per section. Returns false, changing nothing,
    /// if a section of them has no slot.
    ///
    /// The counts come first: a grower that sees one of these chunks `Uninit`
    /// (Acquire, in `claim` and `state`, pairing with the Release below) sees the
    /// off switch off and the chunks counted, so its finish never counts below
    /// zero.
    pub(crate) fn plug(&self, chunks: Range<usize>, _guard: &HotplugGuard<'_, 'a>) -> bool {
        if self
            .by_section(chunks.clone())
            .any(|(section, _, _)| self.slot(section).is_none())
        {
            return false;
        }
        let n = chunks.len();
        // Relaxed: published by the Release of the words below.
        self.unfinished.fetch_add(n, Relaxed);
        self.present.fetch_add(n, Relaxed);
        for (section, from, to) in self.by_section(chunks) {
            if let Some(slot) = self.slot(section) {
                // Absent (00) to Uninit (01). Release: see above.
                slot.chunks.fetch_or(pairs(from, to, 1), Release);
            }
        }
        true
    }

    /// Makes every chunk of `chunks` that is `Uninit` now `Absent`, a
    /// compare-and-swap per section, so that no claim can take it any more; the
    /// others are left as they are. Calls `each` with every chunk made `Absent`,
    /// and returns their count.
    pub(crate) fn unplug_uninit(&self, chunks: Range<usize>, mut each: impl FnMut(usize)) -> usize {
        let per = 1usize << self.chunks_shift;
        let mut count = 0;
        for (section, from, to) in self.by_section(chunks) {
            let Some(slot) = self.slot(section) else {
                continue;
            };
            // Acquire: pairs with the Release of a give-back's `Retiring` drop,
            // the last change of a chunk found `Uninit`. A claim racing us either
            // wins (the chunk is `Initialising` and stays) or fails on the word
            // this exchange changed.
            let mut word = slot.chunks.load(Acquire);
            let cleared = loop {
                // Pairs whose state is exactly Uninit (01): low bit set, high clear.
                let uninit = word & !(word >> 1) & pairs(from, to, 1);
                if uninit == 0 {
                    break 0;
                }
                match slot
                    .chunks
                    .compare_exchange_weak(word, word & !uninit, AcqRel, Acquire)
                {
                    Ok(_) => break uninit,
                    Err(now) => word = now,
                }
            };
            let mut bits = cleared;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize / 2;
                each(section * per + i);
                bits &= bits - 1;
                count += 1;
            }
        }
        self.forget_chunks(count);
        count
    }

    /// Counts `n` chunks that became `Absent` out of the unfinished and the
    /// present ones.
    pub(crate) fn forget_chunks(&self, n: usize) {
        if n == 0 {
            return;
        }
        // AcqRel, as in `Published::finish`: if these were the last unfinished
        // chunks, the off switch is set now, after their words changed.
        self.unfinished.fetch_sub(n, AcqRel);
        // Relaxed: a statistic.
        self.present.fetch_sub(n, Relaxed);
    }
}
