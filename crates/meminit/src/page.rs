//! The 64-byte page descriptor (Linux's `struct page`).
//!
//! This module owns the descriptor's layout and the encoding of its state word. It
//! does not know where descriptors live (that is [`crate::memmap`]) nor which lists
//! they are on (that is the private `buddy` module).
//!
//! Every field is an atomic accessed with `Relaxed` ordering: descriptors are
//! published by the section state (a `Release` store when a section becomes ready,
//! paired with the `Acquire` load of any look-up) and, once published, are changed
//! only under their zone's lock, whose acquire and release order everything else.
//! The atomics make a misbehaving caller's racy read a stale value rather than
//! undefined behaviour; on x86-64 a relaxed load or store is a plain `mov`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::layout::{NodeId, ZoneType, ZONE_TYPES};

/// No pfn: the end of a free list.
pub(crate) const NO_PFN: u64 = u64::MAX;

/// The zone index stored in descriptors of pages that belong to no zone (holes).
pub(crate) const NO_ZONE: u32 = u32::MAX;

/// Bytes per descriptor.
pub const DESCRIPTOR_SIZE: u64 = 64;

/// Number of words in a descriptor that belong to the embedder.
pub const USER_WORDS: usize = 5;

/// The page descriptor. One per page frame, 64 bytes, cache-line aligned.
#[repr(C, align(64))]
pub struct Page {
    /// [`PageState`] encoded by [`encode`].
    state: AtomicU32,
    /// Global zone index (`node * 3 + zone type`), or [`NO_ZONE`].
    zone: AtomicU32,
    /// Next pfn on the free list, while the page heads a free block.
    pub(crate) next: AtomicU64,
    /// Previous pfn on the free list, while the page heads a free block.
    pub(crate) prev: AtomicU64,
    /// Words the allocator never touches after initialisation (zeroed then): the
    /// embedder's, for a slab pointer, a mapping count, an owner.
    user: [AtomicU64; USER_WORDS],
}

const _: () = assert!(core::mem::size_of::<Page>() as u64 == DESCRIPTOR_SIZE);
const _: () = assert!(core::mem::align_of::<Page>() == 64);

/// What a descriptor says about its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Never handed out: a hole, a reserved range, or memory holding the memmap.
    Reserved,
    /// Inside a block (free or allocated) but not its first page.
    Tail,
    /// First page of a free block of this order, on its zone's free list.
    Free {
        /// The block's order.
        order: u32,
    },
    /// First page of an allocated block of this order.
    Allocated {
        /// The block's order.
        order: u32,
    },
    /// First page of a free block of this order held in a CPU's page cache: free,
    /// but on no zone's free list, so never merged with its buddy until the cache
    /// gives it back.
    Cached {
        /// The block's order.
        order: u32,
    },
}

const KIND_RESERVED: u32 = 1;
const KIND_TAIL: u32 = 2;
const KIND_FREE: u32 = 3;
const KIND_ALLOCATED: u32 = 4;
const KIND_CACHED: u32 = 5;

#[inline]
const fn encode(state: PageState) -> u32 {
    match state {
        PageState::Reserved => KIND_RESERVED,
        PageState::Tail => KIND_TAIL,
        PageState::Free { order } => KIND_FREE | order << 8,
        PageState::Allocated { order } => KIND_ALLOCATED | order << 8,
        PageState::Cached { order } => KIND_CACHED | order << 8,
    }
}

#[inline]
fn decode(word: u32) -> PageState {
    let order = word >> 8;
    match word & 0xff {
        KIND_TAIL => PageState::Tail,
        KIND_FREE => PageState::Free { order },
        KIND_ALLOCATED => PageState::Allocated { order },
        KIND_CACHED => PageState::Cached { order },
        // Only `encode` writes this word; anything else would be a bug in this crate.
        _ => PageState::Reserved,
    }
}

/// Packs a node and zone type into the index stored in a descriptor.
pub(crate) const fn zone_index(node: NodeId, zone: ZoneType) -> u32 {
    node.0 * ZONE_TYPES as u32 + zone as u32
}

impl Page {
    /// A descriptor in `state` for a page of zone `zone_index` (or [`NO_ZONE`]).
    #[inline]
    pub(crate) const fn new(state: PageState, zone_index: u32) -> Page {
        Page {
            state: AtomicU32::new(encode(state)),
            zone: AtomicU32::new(zone_index),
            next: AtomicU64::new(NO_PFN),
            prev: AtomicU64::new(NO_PFN),
            user: [const { AtomicU64::new(0) }; USER_WORDS],
        }
    }

    /// The page's state.
    #[inline]
    pub fn state(&self) -> PageState {
        decode(self.state.load(Relaxed))
    }

    #[inline]
    pub(crate) fn set_state(&self, state: PageState) {
        self.state.store(encode(state), Relaxed);
    }

    /// Moves the state from `from` to `to` if it is `from`, atomically; otherwise
    /// returns the state found. Every free goes through this, so of two frees of
    /// one block racing on different CPUs (under different locks) exactly one wins.
    #[inline]
    pub(crate) fn transition(&self, from: PageState, to: PageState) -> Result<(), PageState> {
        // Relaxed: the compare-and-swap only decides who owns the block; the lists
        // the winner then links it on are ordered by their own locks.
        self.state
            .compare_exchange(encode(from), encode(to), Relaxed, Relaxed)
            .map(|_| ())
            .map_err(decode)
    }

    /// The node and zone the page belongs to, or `None` for a page in a hole.
    #[inline]
    pub fn zone(&self) -> Option<(NodeId, ZoneType)> {
        match self.zone.load(Relaxed) {
            NO_ZONE => None,
            z => Some((
                NodeId(z / ZONE_TYPES as u32),
                ZoneType::from_index((z % ZONE_TYPES as u32) as usize),
            )),
        }
    }

    #[inline]
    pub(crate) fn zone_index(&self) -> u32 {
        self.zone.load(Relaxed)
    }

    /// Word `i` reserved for the embedder, or `None` if `i` is not below
    /// [`USER_WORDS`]. The allocator zeroes it when the section is initialised and
    /// never touches it again.
    pub fn user_word(&self, i: usize) -> Option<&AtomicU64> {
        self.user.get(i)
    }
}

impl core::fmt::Debug for Page {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Page")
            .field("state", &self.state())
            .field("zone", &self.zone())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        for s in [
            PageState::Reserved,
            PageState::Tail,
            PageState::Free { order: 0 },
            PageState::Free { order: 10 },
            PageState::Allocated { order: 3 },
            PageState::Cached { order: 9 },
        ] {
            let p = Page::new(s, zone_index(NodeId(2), ZoneType::Dma32));
            assert_eq!(p.state(), s);
            assert_eq!(p.zone(), Some((NodeId(2), ZoneType::Dma32)));
        }
        assert_eq!(Page::new(PageState::Reserved, NO_ZONE).zone(), None);
    }
}
