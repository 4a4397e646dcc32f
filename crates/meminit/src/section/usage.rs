//! Per chunk, one word of use: how many of the chunk's pages are off the zones'
//! free lists (allocated, in a CPU cache, or away for free page reporting), and
//! which mobility class the chunk serves.
//!
//! The word lives in the chunk's [`SectionSlot`](super::SectionSlot), beside the
//! claim states, so that give-back skips a chunk in use with one load and no
//! descriptor. It is only a counter and a tag: this module does not know which
//! lists a chunk's blocks are on nor when a block moves (that is the buddy
//! lists'), and it takes no lock. Every change is made under the lock of a
//! zone whose blocks enter or leave its free lists. A chunk whose usable pages
//! all lie in one zone is changed under that zone's lock alone, so a plain load
//! and store do (no locked instruction on the paths that refill and drain CPU
//! caches); a chunk whose pages lie in two zones is marked *shared* when it is
//! initialised, and changed with a read-modify-write, under either lock, that
//! keeps both zones' changes.

use core::sync::atomic::Ordering::Relaxed;

use super::Sections;
use crate::types::MobilityClass;

/// Bits of the count of pages off the lists.
const PAGES_BITS: u32 = 29;
const PAGES_MASK: u32 = (1 << PAGES_BITS) - 1;
/// The bit above the count: the chunk has usable pages of two zones.
const SHARED: u32 = 1 << PAGES_BITS;
/// The class, in the two bits above that.
const CLASS_SHIFT: u32 = PAGES_BITS + 1;

/// The most pages a chunk may hold, so that its count fits in its word.
pub(crate) const MAX_CHUNK_PAGES: u64 = 1 << PAGES_BITS;

/// One chunk's word of use: a snapshot. Bits 0–28: pages off the lists; bit 29:
/// shared by two zones; bits 30–31: the class (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkUse(u32);

impl ChunkUse {
    /// A chunk with every page on the free lists, of no class.
    pub const FREE: ChunkUse = ChunkUse(0);

    /// Pages of the chunk off the zones' free lists: allocated, in a CPU cache,
    /// or away for free page reporting.
    #[inline]
    pub const fn pages(self) -> u64 {
        (self.0 & PAGES_MASK) as u64
    }

    /// The class the chunk serves, whose free lists its free blocks are on;
    /// `None` while no page of it is allocated or cached (its free blocks are on
    /// the lists of wholly free chunks), even if some are away for reporting.
    #[inline]
    pub const fn class(self) -> Option<MobilityClass> {
        match self.0 >> CLASS_SHIFT {
            1 => Some(MobilityClass::Unmovable),
            2 => Some(MobilityClass::Movable),
            _ => None,
        }
    }

    /// Whether the chunk has usable pages of two zones (each zone's lock then
    /// covers only its own pages of it).
    #[inline]
    pub const fn is_shared(self) -> bool {
        self.0 & SHARED != 0
    }

    /// This word with `pages` and `class` instead.
    #[inline]
    const fn with(self, pages: u64, class: Option<MobilityClass>) -> ChunkUse {
        let tag = match class {
            None => 0,
            Some(c) => c as u32 + 1,
        };
        ChunkUse((pages as u32 & PAGES_MASK) | (self.0 & SHARED) | tag << CLASS_SHIFT)
    }
}

impl Sections<'_> {
    /// The word of use of chunk `chunk` (`FREE` for a chunk without a slot).
    ///
    /// Relaxed: without the zone lock this is a hint (give-back's skip of a
    /// chunk in use, re-checked under the lock); under it, the lock orders every
    /// change made under the same lock, and a change under the other zone's lock
    /// (a chunk of two zones) only moves the count of that zone's pages.
    #[inline]
    pub fn chunk_use(&self, chunk: usize) -> ChunkUse {
        match self.use_word(chunk) {
            Some(word) => ChunkUse(word.load(Relaxed)),
            None => ChunkUse::FREE,
        }
    }

    /// Counts `pages` more of chunk `chunk` off the lists; a chunk of no class
    /// becomes `class`'s when one is given (an allocation's take; free page
    /// reporting's isolation gives none). Under the zone lock. Returns the word
    /// before and after.
    #[inline]
    pub fn chunk_take(
        &self,
        chunk: usize,
        pages: u64,
        class: Option<MobilityClass>,
    ) -> (ChunkUse, ChunkUse) {
        self.update(chunk, |old| {
            old.with(old.pages() + pages, old.class().or(class))
        })
    }

    /// Counts `pages` of chunk `chunk` back on the lists; at zero the chunk has no
    /// class any more. Under the zone lock. Returns the word before and after.
    #[inline]
    pub fn chunk_return(&self, chunk: usize, pages: u64) -> (ChunkUse, ChunkUse) {
        self.update(chunk, |old| {
            // Saturating: a count gone wrong must not spill into the class bits;
            // the consistency check reports it.
            let left = old.pages().saturating_sub(pages);
            old.with(left, if left == 0 { None } else { old.class() })
        })
    }

    #[inline]
    fn update(&self, chunk: usize, f: impl Fn(ChunkUse) -> ChunkUse) -> (ChunkUse, ChunkUse) {
        let Some(word) = self.use_word(chunk) else {
            return (ChunkUse::FREE, ChunkUse::FREE);
        };
        // Relaxed: the zone lock held by the caller orders this against every
        // other change from that zone (see the module documentation).
        let mut old = word.load(Relaxed);
        if old & SHARED == 0 {
            // One zone's chunk: only holders of its lock write the word, so
            // this store loses nothing. Relaxed: ordered by that lock; readers
            // without it (give-back's skip) re-check under it.
            let new = f(ChunkUse(old));
            word.store(new.0, Relaxed);
            return (ChunkUse(old), new);
        }
        // A shared chunk: the other zone's changes come under the other lock,
        // each a read-modify-write on the same word, so neither is lost.
        loop {
            let new = f(ChunkUse(old)).0;
            match word.compare_exchange_weak(old, new, Relaxed, Relaxed) {
                Ok(_) => return (ChunkUse(old), ChunkUse(new)),
                Err(now) => old = now,
            }
        }
    }

    /// Marks chunk `chunk` shared by two zones: by its initialiser, before any
    /// of its blocks is on a list.
    pub(crate) fn mark_chunk_shared(&self, chunk: usize) {
        if let Some(word) = self.use_word(chunk) {
            // Relaxed: the chunk's blocks reach the lists (under a zone lock,
            // whose release publishes this) only after it.
            word.fetch_or(SHARED, Relaxed);
        }
    }

    #[inline]
    fn use_word(&self, chunk: usize) -> Option<&crate::sync::AtomicU32> {
        let slot = self.slot(chunk >> self.chunks_shift)?;
        slot.uses.get(chunk & ((1 << self.chunks_shift) - 1))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::section::SectionSlot;

    #[test]
    fn a_chunk_takes_a_class_with_its_first_page_and_loses_it_with_its_last() {
        let slots: [SectionSlot; 1] = Default::default();
        let s = Sections::new(&slots, 0, 1, 1, [(0, 2)].into_iter()).unwrap();
        assert_eq!(s.chunk_use(0), ChunkUse::FREE);
        // Isolation counts pages without a class.
        let (_, now) = s.chunk_take(0, 512, None);
        assert_eq!((now.pages(), now.class()), (512, None));
        let (old, now) = s.chunk_take(0, 1, Some(MobilityClass::Movable));
        assert_eq!(old.class(), None);
        assert_eq!(
            (now.pages(), now.class()),
            (513, Some(MobilityClass::Movable))
        );
        // A second class does not change the first.
        let (_, now) = s.chunk_take(0, 2, Some(MobilityClass::Unmovable));
        assert_eq!(now.class(), Some(MobilityClass::Movable));
        assert_eq!(s.chunk_return(0, 3).1.class(), Some(MobilityClass::Movable));
        assert_eq!(s.chunk_return(0, 512).1, ChunkUse::FREE);
        // The neighbour is untouched, and a chunk past the slots is free.
        assert_eq!(s.chunk_use(1), ChunkUse::FREE);
        assert_eq!(s.chunk_take(64, 1, None).1, ChunkUse::FREE);
        let big = MAX_CHUNK_PAGES - 1;
        assert_eq!(s.chunk_take(1, big, None).1.pages(), big);
        // A shared chunk keeps the mark through every change.
        s.mark_chunk_shared(0);
        let (_, now) = s.chunk_take(0, 4, Some(MobilityClass::Unmovable));
        assert!(now.is_shared());
        assert_eq!(
            (now.pages(), now.class()),
            (4, Some(MobilityClass::Unmovable))
        );
        let (_, now) = s.chunk_return(0, 4);
        assert!(now.is_shared() && now.pages() == 0 && now.class().is_none());
        assert!(!s.chunk_use(1).is_shared());
    }
}
