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

use crate::types::DESCRIPTOR_SIZE;
use crate::types::{MobilityClass, NodeId, ZoneType, ZONE_TYPES};

/// No pfn: the end of a free list.
pub(crate) const NO_PFN: u64 = u64::MAX;

/// The zone index stored in descriptors of pages that belong to no zone (holes).
pub(crate) const NO_ZONE: u32 = u32::MAX;

/// Number of words in a descriptor that belong to the embedder.
pub const USER_WORDS: usize = 5;

/// Bytes of a descriptor that belong to the embedder: the room a [`PageMeta`]
/// type has.
pub const USER_BYTES: usize = USER_WORDS * 8;

/// The embedder's own per-page data, kept in the part of each descriptor that the
/// allocator does not use (Linux's `struct page` fields for the page cache, slab,
/// refcount and mapping; Asterinas's frame metadata): a refcount, a mapping, LRU
/// links, a slab pointer, as the kernel decides. Read it with [`Page::meta`].
///
/// The allocator zeroes it whenever it initialises the page's chunk (at first
/// use, and again after the chunk was given back) and never touches it
/// otherwise. It is the embedder's while the page is allocated: once freed, the
/// page may be given back and zeroed on its next initialisation.
///
/// ```
/// use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
/// use meminit::PageMeta;
///
/// /// What a small kernel keeps per page.
/// #[derive(Debug)]
/// #[repr(C)]
/// struct KernelPage {
///     refcount: AtomicU32,
///     flags: AtomicU32,
///     mapping: AtomicU64,
///     lru: [AtomicU64; 2],
/// }
///
/// // SAFETY: only atomic integers: all zeroes is a valid value, as is any bit
/// // pattern, and every access is atomic; 32 bytes, 8-byte aligned.
/// unsafe impl PageMeta for KernelPage {}
/// ```
///
/// A type larger than [`USER_BYTES`] or aligned to more than 8 bytes is refused
/// when `Page::meta` is compiled:
///
/// ```compile_fail
/// # use core::sync::atomic::AtomicU64;
/// # use meminit::{Page, PageMeta};
/// struct TooBig([AtomicU64; 6]);
/// unsafe impl PageMeta for TooBig {}
/// fn look(page: &Page) -> &TooBig { page.meta::<TooBig>() }
/// let look: fn(&Page) -> &TooBig = look;
/// std::hint::black_box(look);
/// ```
///
/// # Safety
///
/// Every byte of the type is part of an atomic integer (`AtomicU8` to
/// `AtomicU64`, or arrays and `#[repr(C)]` structs of them with no padding
/// requirement beyond theirs): so any bit pattern, all zeroes in particular, is a
/// valid value, and every access, through this type or through
/// [`Page::user_word`], is atomic. Views of one page through two such types are
/// then merely confusing, never undefined behaviour, provided accesses of
/// different sizes to the same bytes do not race (Rust's rule for mixed-size
/// atomics; the allocator's zeroing happens before the page is handed out).
pub unsafe trait PageMeta: Sync + Sized {}

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
// The layout that `Page::words` spells out word by word.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Page, state) == 0 && offset_of!(Page, zone) == 4);
    assert!(offset_of!(Page, next) == 8 && offset_of!(Page, prev) == 16);
    assert!(offset_of!(Page, user) == 24 && 24 + USER_BYTES == 64);
};

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
    /// First page of a free block of this order held off the free lists: in a
    /// CPU's cache, or away while free page reporting hands its memory to the
    /// host. Free (it counts as free), but on no zone's free list, so never merged
    /// with its buddy, and a free of it is a double free, until it goes back.
    Cached {
        /// The block's order.
        order: u32,
    },
}

impl PageState {
    /// For a walk over blocks: the pages from this descriptor to the next
    /// block boundary, reading it as a walk meets it (a block's head: the
    /// block; a reserved page or a tail met on the way: one page).
    #[inline]
    pub(crate) fn pages_to_next(self) -> u64 {
        match self {
            PageState::Free { order }
            | PageState::Allocated { order }
            | PageState::Cached { order } => 1 << order,
            PageState::Reserved | PageState::Tail => 1,
        }
    }
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

/// Flag in the state word of a free block's head: the block's memory was handed
/// to the host by free page reporting and not used since.
const FLAG_REPORTED: u32 = 1 << 16;
/// Flag in the state word of a free block's head: a give-back pass saw the block
/// free; if the next pass still finds the flag, the block stayed free in between.
const FLAG_AGED: u32 = 1 << 17;
/// Bits 18–19 of the state word. On a free block's head: the free list it is on
/// (0 and 1: its chunk's class, [`MobilityClass`] as a number; 2: the lists of
/// wholly free chunks), so that unlinking it needs no other look-up. On an
/// allocated block's head: the class it was allocated for, so that a free puts
/// it in the CPU cache of that class without reading anything else.
const LIST_SHIFT: u32 = 18;
const LIST_MASK: u32 = 3 << LIST_SHIFT;

/// Flag in the state word of a `Cached` head: the block is held by a compaction
/// pass (a free block of the chunk it empties, or a block it moved out), not by
/// a CPU cache or free page reporting. The reported and aged flags are kept.
const FLAG_COMPACTING: u32 = 1 << 20;

/// The state word of a block's head, read once: its state, and the class it was
/// allocated for (meaningful for an allocated head only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadWord(u32);

impl HeadWord {
    /// The state.
    #[inline]
    pub(crate) fn state(self) -> PageState {
        decode(self.0)
    }

    /// The class an allocated head was allocated for (its list bits are 0 or
    /// 1: only the lower one is read).
    #[inline]
    pub(crate) fn class(self) -> MobilityClass {
        if self.0 & 1 << LIST_SHIFT == 0 {
            MobilityClass::Unmovable
        } else {
            MobilityClass::Movable
        }
    }
}

#[inline]
fn decode(word: u32) -> PageState {
    let order = (word >> 8) & 0xff;
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
    /// A descriptor in `state` for a page of zone `zone_index` (or [`NO_ZONE`]):
    /// what the memmap's writer stores as [`Page::words`].
    #[cfg(test)]
    pub(crate) const fn new(state: PageState, zone_index: u32) -> Page {
        Page {
            state: AtomicU32::new(encode(state)),
            zone: AtomicU32::new(zone_index),
            next: AtomicU64::new(NO_PFN),
            prev: AtomicU64::new(NO_PFN),
            user: [const { AtomicU64::new(0) }; USER_WORDS],
        }
    }

    /// The 64 bytes of [`Page::new`]`(state, zone_index)` as eight native-endian
    /// words, in memory order: the template the memmap's writer stores, whole
    /// descriptors at a time, for every page of a run. Only the first word depends
    /// on the run (state and zone); the free-list links are [`NO_PFN`] and the
    /// embedder's words zero.
    #[inline]
    pub(crate) const fn words(state: PageState, zone_index: u32) -> [u64; 8] {
        let s = encode(state).to_ne_bytes();
        let z = zone_index.to_ne_bytes();
        let first = u64::from_ne_bytes([s[0], s[1], s[2], s[3], z[0], z[1], z[2], z[3]]);
        [first, NO_PFN, NO_PFN, 0, 0, 0, 0, 0]
    }

    /// The page's state.
    #[inline]
    pub fn state(&self) -> PageState {
        decode(self.state.load(Relaxed))
    }

    /// Sets the state, clearing the flags: any change of a block's state means it
    /// was used or merged, so it is neither reported nor aged any more.
    #[inline]
    pub(crate) fn set_state(&self, state: PageState) {
        self.state.store(encode(state), Relaxed);
    }

    /// Sets the state of a free block's head, whether its memory is reported,
    /// and the free list (`0..=2`, see [`LIST_SHIFT`]) it goes on.
    #[inline]
    pub(crate) fn set_free(&self, order: u32, reported: bool, list: usize) {
        let flag = if reported { FLAG_REPORTED } else { 0 };
        let list = (list as u32) << LIST_SHIFT & LIST_MASK;
        self.state
            .store(encode(PageState::Free { order }) | flag | list, Relaxed);
    }

    /// The free list the free block this page heads is on (`0..=2`).
    #[inline]
    pub(crate) fn list(&self) -> usize {
        ((self.state.load(Relaxed) & LIST_MASK) >> LIST_SHIFT) as usize
    }

    /// Makes this page the head of a block of `order` allocated for `class`.
    #[inline]
    pub(crate) fn set_allocated(&self, order: u32, class: MobilityClass) {
        let class = (class as u32) << LIST_SHIFT;
        self.state
            .store(encode(PageState::Allocated { order }) | class, Relaxed);
    }

    /// The state word, read once (the free path reads the state and the class
    /// from it).
    #[inline]
    pub(crate) fn head_word(&self) -> HeadWord {
        HeadWord(self.state.load(Relaxed))
    }

    /// For the head of an allocated block: the class it was allocated for
    /// ([`AllocFlags::MOVABLE`](crate::AllocFlags::MOVABLE) or not). `None` for
    /// any other page.
    #[inline]
    pub fn mobility(&self) -> Option<MobilityClass> {
        let word = self.head_word();
        matches!(word.state(), PageState::Allocated { .. }).then(|| word.class())
    }

    /// Makes this page the head of a block of `order` held by a compaction pass
    /// (`Cached`, so never merged nor freed), keeping whether its memory was
    /// `reported` and whether it was `aged`. Under the zone lock.
    #[inline]
    pub(crate) fn set_compacting(&self, order: u32, reported: bool, aged: bool) {
        let flags = if reported { FLAG_REPORTED } else { 0 } | if aged { FLAG_AGED } else { 0 };
        self.state.store(
            encode(PageState::Cached { order }) | FLAG_COMPACTING | flags,
            Relaxed,
        );
    }

    /// Whether this page heads a block held by a compaction pass.
    #[inline]
    pub(crate) fn is_compacting(&self) -> bool {
        self.state.load(Relaxed) & FLAG_COMPACTING != 0
    }

    /// Whether the free block this page heads was reported to the host.
    #[inline]
    pub(crate) fn is_reported(&self) -> bool {
        self.state.load(Relaxed) & FLAG_REPORTED != 0
    }

    /// Whether a give-back pass marked the free block this page heads, and it
    /// has not changed state since.
    #[inline]
    pub(crate) fn is_aged(&self) -> bool {
        self.state.load(Relaxed) & FLAG_AGED != 0
    }

    /// Marks the free block this page heads as seen free by a give-back pass,
    /// keeping its state and other flags. Under the zone lock.
    #[inline]
    pub(crate) fn mark_aged(&self) {
        // Relaxed: the zone lock orders every change of a listed block's state.
        self.state.fetch_or(FLAG_AGED, Relaxed);
    }

    /// Rewrites every field as a fresh descriptor would have it, with atomic
    /// stores: for a chunk initialised again after it was given back, whose
    /// descriptors a stale reference may still touch.
    #[inline]
    pub(crate) fn reset(&self, state: PageState, zone_index: u32) {
        // Relaxed throughout: the chunk is not readable (not `Ready`) while this
        // runs; its publication orders these stores for readers.
        self.state.store(encode(state), Relaxed);
        self.zone.store(zone_index, Relaxed);
        self.next.store(NO_PFN, Relaxed);
        self.prev.store(NO_PFN, Relaxed);
        for word in &self.user {
            word.store(0, Relaxed);
        }
    }

    /// Moves the state from `Allocated { order }`, allocated for `class` (the
    /// class the free read from the head), to `to` if it is that, atomically;
    /// otherwise returns the state found. Every free goes through this, so of two
    /// frees of one block racing on different CPUs (under different locks)
    /// exactly one wins.
    #[inline]
    pub(crate) fn release(
        &self,
        order: u32,
        class: MobilityClass,
        to: PageState,
    ) -> Result<(), PageState> {
        let from = encode(PageState::Allocated { order }) | (class as u32) << LIST_SHIFT;
        // Relaxed: the compare-and-swap only decides who owns the block; the lists
        // the winner then links it on are ordered by their own locks.
        self.state
            .compare_exchange(from, encode(to), Relaxed, Relaxed)
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

    /// Word `i` reserved for the embedder, or `None` for `i` from [`USER_WORDS`]
    /// on. The allocator zeroes it when the chunk is initialised and never
    /// touches it otherwise.
    pub fn user_word(&self, i: usize) -> Option<&AtomicU64> {
        self.user.get(i)
    }

    /// The embedder's per-page data, typed (see [`PageMeta`]): zeroes until the
    /// embedder writes it.
    #[inline]
    pub fn meta<M: PageMeta>(&self) -> &M {
        const {
            assert!(
                core::mem::size_of::<M>() <= USER_BYTES,
                "a PageMeta type must fit in USER_BYTES"
            );
            assert!(
                core::mem::align_of::<M>() <= core::mem::align_of::<AtomicU64>(),
                "a PageMeta type may be aligned to 8 bytes at most"
            );
        };
        // SAFETY: `user` is USER_BYTES of atomics, 8-byte aligned, inside this
        // descriptor, which lives as long as `&self`; `M` fits and is no more
        // aligned (checked above at compile time). `PageMeta` promises every byte
        // of `M` is an atomic integer valid for any bit pattern, so the bytes there
        // (zeroes, or what atomic stores through `user_word` or another view
        // left) make a valid `M`, and sharing it is sound since all access is
        // atomic.
        unsafe { &*self.user.as_ptr().cast::<M>() }
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

    #[test]
    fn the_words_are_the_bytes_of_a_new_descriptor() {
        for (s, z) in [
            (PageState::Reserved, NO_ZONE),
            (PageState::Tail, zone_index(NodeId(3), ZoneType::Normal)),
            (PageState::Free { order: 10 }, 0),
        ] {
            let page = Page::new(s, z);
            // SAFETY: `Page` is 64 bytes of integers with no padding (checked at
            // compile time above), so its bytes may be read as eight words.
            let bytes: [u64; 8] = unsafe { core::mem::transmute(page) };
            assert_eq!(bytes, Page::words(s, z));
        }
    }

    #[test]
    fn flags_do_not_change_the_state_and_a_new_state_clears_them() {
        let p = Page::new(PageState::Tail, zone_index(NodeId(0), ZoneType::Normal));
        p.set_free(10, true, 2);
        p.mark_aged();
        assert_eq!(p.state(), PageState::Free { order: 10 });
        assert!(p.is_reported() && p.is_aged());
        assert_eq!(p.list(), 2);
        p.set_state(PageState::Allocated { order: 10 });
        assert!(!p.is_reported() && !p.is_aged());
        assert_eq!(p.mobility(), Some(MobilityClass::Unmovable));
        p.set_free(3, false, 1);
        assert!(!p.is_reported());
        assert_eq!((p.state(), p.list()), (PageState::Free { order: 3 }, 1));
        assert_eq!(p.mobility(), None);
    }

    #[test]
    fn an_allocated_head_keeps_its_class_and_a_free_must_name_it() {
        let p = Page::new(PageState::Tail, zone_index(NodeId(0), ZoneType::Normal));
        p.set_allocated(2, MobilityClass::Movable);
        let word = p.head_word();
        assert_eq!(word.state(), PageState::Allocated { order: 2 });
        assert_eq!(word.class(), MobilityClass::Movable);
        assert_eq!(p.mobility(), Some(MobilityClass::Movable));
        // The wrong class (a reallocation since the read) fails the exchange.
        let wrong = p.release(2, MobilityClass::Unmovable, PageState::Tail);
        assert_eq!(wrong, Err(PageState::Allocated { order: 2 }));
        assert_eq!(
            p.release(2, MobilityClass::Movable, PageState::Tail),
            Ok(())
        );
        assert_eq!(p.state(), PageState::Tail);
    }
}
