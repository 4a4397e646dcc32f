//! The errors of the allocator's entry points: allocation, free, start-up and the
//! initialisation of a chunk.
//!
//! Each says what was wrong and where (which order, pfn, node, chunk or slot), once,
//! in its `Display`. The errors of the layers below live with them ([`LayoutError`]
//! with the layout, [`BackingError`] and [`LookupError`] with the memmap) and are
//! wrapped here, never restated. This module decides nothing.

use core::fmt;

use crate::layout::LayoutError;
use crate::memmap::{BackingError, LookupError};
use crate::section::MAX_CHUNKS_PER_SECTION;
use crate::types::{Constraint, CpuId, NodeId, Pfn, MAX_ORDER, PAGE_SIZE};

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Orders above [`MAX_ORDER`] are not served.
    OrderTooLarge {
        /// The order asked for.
        order: u32,
    },
    /// The preferred node is not in the layout.
    UnknownNode {
        /// The node asked for.
        node: NodeId,
    },
    /// The CPU has no cache: its id is not below the number of caches lent.
    UnknownCpu {
        /// The CPU named.
        cpu: CpuId,
        /// Caches lent at start-up.
        cpus: usize,
    },
    /// Every eligible zone is initialised and has no free block of the order.
    OutOfMemory {
        /// The order asked for.
        order: u32,
        /// The constraint.
        constraint: Constraint,
    },
    /// Memory remained, but the backing could not populate the memmap for it (or,
    /// with [`AllocFlags::ZEROED`](crate::AllocFlags::ZEROED), could not zero the block).
    Backing(BackingError),
    /// With [`AllocFlags::NO_GROW`](crate::AllocFlags::NO_GROW): no eligible zone has a free block of the
    /// order, though memory remains uninitialised; an allocation that may grow
    /// would be served.
    WouldGrow {
        /// The order asked for.
        order: u32,
    },
    /// The allocation was made from inside a callback (the backing's
    /// `populate`, `accept`, `depopulate` or `zero`, a reporter's `report`, on
    /// the same [`Config::context`](crate::Config::context)), and no eligible
    /// zone had a free block: serving it would have meant initialising a chunk,
    /// or waiting for one, for a section's memmap or for blocks out for
    /// reporting, perhaps what the caller's own stack holds.
    Reentrant {
        /// The order asked for.
        order: u32,
    },
}

impl core::error::Error for AllocError {}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::OrderTooLarge { order } => {
                write!(f, "order {order} is above the maximum order {MAX_ORDER}")
            }
            AllocError::UnknownNode { node } => write!(f, "{node} is not in the layout"),
            AllocError::UnknownCpu { cpu, cpus } => {
                write!(f, "{cpu} has no CPU cache: {cpus} were lent at start-up")
            }
            AllocError::OutOfMemory { order, constraint } => write!(
                f,
                "out of memory: no free block of order {order} in any zone allowed by {constraint:?}"
            ),
            AllocError::Backing(e) => e.fmt(f),
            AllocError::WouldGrow { order } => write!(
                f,
                "no free block of order {order} without initialising memory, which this allocation may not do (NO_GROW)"
            ),
            AllocError::Reentrant { order } => write!(
                f,
                "an allocation of order {order} from inside a callback of the allocator (its backing or reporter) found no free block, and may not initialise memory or wait there"
            ),
        }
    }
}

/// A free the allocator refused: the descriptor says the caller is wrong. Nothing
/// was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The order is above [`MAX_ORDER`].
    OrderTooLarge {
        /// The order given.
        order: u32,
    },
    /// The CPU has no cache: its id is not below the number of caches lent.
    UnknownCpu {
        /// The CPU named.
        cpu: CpuId,
        /// Caches lent at start-up.
        cpus: usize,
    },
    /// The page's descriptor cannot be read: outside present memory, or never
    /// initialised (so never allocated).
    Lookup(LookupError),
    /// The page is reserved (a hole, a reserved range, the memmap): never allocated.
    Reserved {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The page heads a free block, on a free list or in a CPU's cache: a double
    /// free.
    DoubleFree {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The page lies inside a block, not at its head: a double free of a block that
    /// has since merged, or a pfn that was never returned by `alloc`.
    NotBlockHead {
        /// The pfn given.
        pfn: Pfn,
    },
    /// The block was allocated with another order than the one a
    /// [`FreeRequest`](crate::FreeRequest) gave.
    WrongOrder {
        /// The pfn given.
        pfn: Pfn,
        /// The order it was allocated with.
        allocated: u32,
        /// The order given.
        given: u32,
    },
}

impl core::error::Error for FreeError {}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::OrderTooLarge { order } => {
                write!(
                    f,
                    "free of order {order}, above the maximum order {MAX_ORDER}"
                )
            }
            FreeError::UnknownCpu { cpu, cpus } => {
                write!(f, "{cpu} has no CPU cache: {cpus} were lent at start-up")
            }
            FreeError::Lookup(e) => write!(f, "free of a page that was never allocated: {e}"),
            FreeError::Reserved { pfn } => write!(f, "free of reserved page {pfn}"),
            FreeError::DoubleFree { pfn } => write!(f, "double free of {pfn}"),
            FreeError::NotBlockHead { pfn } => write!(
                f,
                "free of {pfn}, which is inside a block, not at its head (double free?)"
            ),
            FreeError::WrongOrder {
                pfn,
                allocated,
                given,
            } => write!(
                f,
                "free of {pfn} with order {given}, but it was allocated with order {allocated}"
            ),
        }
    }
}

/// Why a chunk could not be initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The backing could not populate the memmap under it, or accept its memory.
    Backing(BackingError),
    /// Asked from inside a callback (the backing's or a reporter's), on the same
    /// [`Config::context`](crate::Config::context): initialising there could wait
    /// for what the caller's own stack holds.
    Reentrant {
        /// The chunk.
        chunk: usize,
    },
}

impl core::error::Error for ChunkError {}

impl core::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ChunkError::Backing(e) => e.fmt(f),
            ChunkError::Reentrant { chunk } => write!(
                f,
                "chunk {chunk} cannot be initialised from inside a callback of the allocator (its backing or reporter)"
            ),
        }
    }
}

/// Why the allocator could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The section-state slice is shorter than [`Layout::section_count`](crate::Layout::section_count).
    TooFewSlots {
        /// Slots needed.
        needed: usize,
        /// Slots given.
        given: usize,
    },
    /// [`Config::chunk_size`](crate::Config::chunk_size) is not a power of two from one max-order block to a
    /// section, or divides a section into more than [`MAX_CHUNKS_PER_SECTION`].
    BadChunkSize {
        /// The chunk size asked for, in bytes.
        chunk: u64,
        /// The layout's section size, in bytes.
        section: u64,
    },
    /// A section slot is owned by another live allocator: slots must be fresh
    /// ([`SectionSlot::new`](crate::SectionSlot::new)) or given back by dropping the allocator that had them.
    SlotsInUse {
        /// The first slot found in use.
        index: usize,
    },
    /// [`MemmapBacking::descriptors`](crate::MemmapBacking::descriptors) is not 64-byte aligned, as its contract
    /// requires.
    MisalignedMemmap,
    /// Eager start-up could not populate the memmap.
    Backing(BackingError),
    /// The memory map given to [`Allocator::build_in_place`](crate::Allocator::build_in_place) is not valid.
    Layout(LayoutError),
    /// The function that makes the backing once the layout is known
    /// ([`Allocator::build_in_place`](crate::Allocator::build_in_place)) could not.
    BackingUnavailable {
        /// Why, in the backing's words.
        reason: &'static str,
    },
    /// The [`AllocatorCell`](crate::AllocatorCell) holds an allocator already,
    /// or another caller is starting one in it.
    AlreadyStarted,
}

impl core::error::Error for InitError {}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::TooFewSlots { needed, given } => write!(
                f,
                "the layout has {needed} sections but only {given} section slots were given"
            ),
            InitError::SlotsInUse { index } => write!(
                f,
                "section slot {index} is in use by another allocator: lend fresh slots, or drop that allocator first"
            ),
            InitError::MisalignedMemmap => f.write_str(
                "the backing's descriptor array (MemmapBacking::descriptors) is not 64-byte aligned",
            ),
            InitError::BadChunkSize { chunk, section } => write!(
                f,
                "chunk size {chunk:#x} must be a power of two from {MAX_BLOCK:#x} (one max-order block) up to the section size {section:#x}, and at least 1/{MAX_CHUNKS_PER_SECTION} of it"
            ),
            InitError::Backing(e) => e.fmt(f),
            InitError::Layout(e) => write!(f, "the memory map is not valid: {e}"),
            InitError::BackingUnavailable { reason } => {
                write!(f, "the memmap backing could not be made: {reason}")
            }
            InitError::AlreadyStarted => {
                f.write_str("the allocator cell holds an allocator already, or one is starting in it")
            }
        }
    }
}

/// Bytes in one max-order block: the smallest chunk.
const MAX_BLOCK: u64 = PAGE_SIZE << MAX_ORDER;
