//! What an allocation asks for beyond its order and zones: its flags, and which
//! path served it.
//!
//! Plain values; the paths that read them are in the sibling modules.

use crate::types::MobilityClass;

/// What an allocation may do, beyond taking a free block (Linux's GFP flags, the
/// few that a page allocator itself decides).
///
/// Combine with `|`: `AllocFlags::NO_GROW | AllocFlags::THIS_NODE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocFlags(u8);

impl AllocFlags {
    /// Nothing special: may initialise memory (grow), fall back to other nodes,
    /// and hands out memory as it is.
    pub const NONE: AllocFlags = AllocFlags(0);
    /// May not grow: never initialises a chunk, never calls the backing, never
    /// waits for a chunk someone else initialises nor for blocks away being
    /// reported. What an allocation in interrupt context needs (Linux's
    /// `GFP_ATOMIC`): it takes only free blocks (draining CPU caches if it must)
    /// and fails with [`AllocError::WouldGrow`](crate::AllocError::WouldGrow) where only growing would serve.
    pub const NO_GROW: AllocFlags = AllocFlags(1);
    /// Only the preferred node's zones (Linux's `__GFP_THISNODE`): no fall-back
    /// to other nodes.
    pub const THIS_NODE: AllocFlags = AllocFlags(2);
    /// The block's memory is zeroed before it is returned, by
    /// [`MemmapBacking::zero`](crate::MemmapBacking::zero) (the crate has no mapping of the memory itself).
    pub const ZEROED: AllocFlags = AllocFlags(4);
    /// The memory is movable or short-lived ([`MobilityClass::Movable`], Linux's
    /// `__GFP_MOVABLE`): user data, page cache, anything the embedder can move or
    /// will soon free. Without it an allocation is [`MobilityClass::Unmovable`].
    /// The allocator keeps the classes in different chunks, so that chunks of
    /// freed movable memory become wholly free and can be given back; a wrong
    /// hint costs only that.
    pub const MOVABLE: AllocFlags = AllocFlags(8);

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: AllocFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The mobility class these flags ask for.
    #[inline]
    pub const fn class(self) -> MobilityClass {
        if self.contains(AllocFlags::MOVABLE) {
            MobilityClass::Movable
        } else {
            MobilityClass::Unmovable
        }
    }
}

impl core::ops::BitOr for AllocFlags {
    type Output = AllocFlags;

    fn bitor(self, other: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 | other.0)
    }
}

/// How an allocation was served (see [`Allocator::alloc_traced`](crate::Allocator::alloc_traced)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocPath {
    /// From the free lists of the first zone in the zone list.
    Fast,
    /// From the free lists of a later zone, without initialising anything.
    Fallback,
    /// After initialising at least one chunk (the grow path).
    Grew,
}
