//! What a caller asks for: an [`AllocRequest`] (order, CPU, zones, node, flags)
//! and a [`FreeRequest`] (pfn, CPU, the order the caller expects), and which path
//! served an allocation.
//!
//! Plain values, built with `const` methods so that a kernel can keep a request
//! in a constant; the paths that read them are in the sibling modules.

use crate::types::{Constraint, CpuId, NodeId, Pfn};

/// One allocation: a block of 2^order pages, and where it may come from.
///
/// Built from the order, then narrowed:
///
/// ```
/// use meminit::{AllocFlags, AllocRequest, Constraint, CpuId, NodeId};
/// // An order-0 page on CPU 3, from node 1 or any other, any zone.
/// let page = AllocRequest::order(0).on(CpuId(3)).node(NodeId(1));
/// // A 2 MiB block below 4 GiB from interrupt context, through no CPU cache.
/// let dma = AllocRequest::order(9)
///     .within(Constraint::Dma32)
///     .flags(AllocFlags::NO_GROW);
/// # let _ = (page, dma);
/// ```
///
/// The defaults: no CPU cache (the zones directly: for early boot, before
/// per-CPU data exists), [`Constraint::Any`], node 0 preferred with fall-back to
/// the others, [`AllocFlags::NONE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocRequest {
    /// log2 of the pages asked for.
    pub order: u32,
    /// The calling CPU, whose cache serves the cached orders; `None`: the zones.
    pub cpu: Option<CpuId>,
    /// The zones the block may come from.
    pub constraint: Constraint,
    /// The preferred node.
    pub node: NodeId,
    /// What the allocation may do beyond taking a free block.
    pub flags: AllocFlags,
}

impl AllocRequest {
    /// A block of 2^`order` pages, with the defaults.
    pub const fn order(order: u32) -> Self {
        AllocRequest {
            order,
            cpu: None,
            constraint: Constraint::Any,
            node: NodeId(0),
            flags: AllocFlags::NONE,
        }
    }

    /// Through `cpu`'s cache (see the crate documentation for what `cpu` must be).
    pub const fn on(self, cpu: CpuId) -> Self {
        AllocRequest {
            cpu: Some(cpu),
            ..self
        }
    }

    /// Through `cpu`'s cache when given, else the zones directly.
    pub const fn on_cpu(self, cpu: Option<CpuId>) -> Self {
        AllocRequest { cpu, ..self }
    }

    /// Within the zones `constraint` allows.
    pub const fn within(self, constraint: Constraint) -> Self {
        AllocRequest { constraint, ..self }
    }

    /// Preferring `node`.
    pub const fn node(self, node: NodeId) -> Self {
        AllocRequest { node, ..self }
    }

    /// With `flags` (replacing any set before).
    pub const fn flags(self, flags: AllocFlags) -> Self {
        AllocRequest { flags, ..self }
    }
}

/// One free: the block whose head is `pfn`.
///
/// A [`Pfn`] converts into one, so `allocator.free(pfn)` frees through the zones
/// and reads the order from the block's head descriptor. Name the calling CPU to
/// free into its cache, and the order to have it checked against the descriptor
/// first ([`crate::FreeError::WrongOrder`]):
///
/// ```
/// use meminit::{CpuId, FreeRequest, Pfn};
/// let free = FreeRequest::pfn(Pfn(0x1000)).on(CpuId(1)).order(3);
/// # let _ = free;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FreeRequest {
    /// The block's first page.
    pub pfn: Pfn,
    /// The calling CPU, whose cache takes the cached orders; `None`: the zones.
    pub cpu: Option<CpuId>,
    /// The order the caller allocated with, checked against the descriptor;
    /// `None`: read from it.
    pub order: Option<u32>,
}

impl FreeRequest {
    /// The block at `pfn`, through the zones, its order read from its head.
    pub const fn pfn(pfn: Pfn) -> Self {
        FreeRequest {
            pfn,
            cpu: None,
            order: None,
        }
    }

    /// Into `cpu`'s cache.
    pub const fn on(self, cpu: CpuId) -> Self {
        FreeRequest {
            cpu: Some(cpu),
            ..self
        }
    }

    /// Into `cpu`'s cache when given, else the zones directly.
    pub const fn on_cpu(self, cpu: Option<CpuId>) -> Self {
        FreeRequest { cpu, ..self }
    }

    /// Checked first: the block must have been allocated with `order`.
    pub const fn order(self, order: u32) -> Self {
        FreeRequest {
            order: Some(order),
            ..self
        }
    }
}

impl From<Pfn> for FreeRequest {
    fn from(pfn: Pfn) -> Self {
        FreeRequest::pfn(pfn)
    }
}

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
