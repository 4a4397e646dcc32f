//! # meminit: a physical page allocator whose memmap is initialised lazily
//!
//! A kernel's page allocator needs a descriptor for every page frame (Linux's
//! `struct page`: 64 bytes per 4 KiB page, 1/64 of memory). Writing them is the
//! slowest part of bringing memory up on a large machine, and in a small virtual
//! machine they are dead weight its host keeps resident. meminit writes almost
//! nothing at start-up and initialises descriptors, a section (128 MiB) at a time,
//! when they are needed:
//!
//! - [`Strategy::Eager`]: every section at start-up, like a kernel without deferred
//!   initialisation.
//! - [`Strategy::Deferred`]: nothing at start-up; the embedder runs
//!   [`Allocator::run_deferred_worker`] on as many threads or CPUs per node as it
//!   has, and they split the sections between them without a lock.
//! - [`Strategy::OnDemand`]: nothing at start-up and nothing in the background. The
//!   memmap, and the memory under it, exist only where memory is used.
//!
//! Under every strategy an allocation that finds its zone empty while uninitialised
//! memory remains there initialises another section of that zone and retries (the
//! *grow path*), so no allocation fails for lack of initialised memory. Once every
//! section is done, one flag switches growth off; the fast path never had a check.
//!
//! ## Embedding
//!
//! You provide three things:
//! 1. the memory map, as a [`LayoutBuilder`] of byte ranges (usable, reserved or
//!    other, each on a NUMA node), validated into a [`Layout`];
//! 2. a [`MemmapBacking`]: the virtual range of the descriptor array, indexed by pfn,
//!    and a `populate` that makes one section's part of it accessible when first
//!    needed (a kernel maps a 2 MiB page there; [`SliceBacking`] covers memory that
//!    is already mapped);
//! 3. a slice of [`SectionSlot`]s, one per section ([`Layout::section_count`]), and a
//!    lock type for the zones (any [`lock_api::RawMutex`]: a spin lock in a kernel).
//!
//! ```
//! use meminit::{Allocator, Config, Constraint, CpuCache, CpuId, LayoutBuilder, Page,
//!               RangeKind, SectionSlot, SliceBacking, Strategy};
//!
//! // 64 MiB of RAM on one node, in 4 MiB sections to keep the example small.
//! let mut map = LayoutBuilder::new();
//! map.section_size(4 << 20)
//!    .add(0x1000, 0x9f000, RangeKind::Usable, 0)
//!    .add(0x100000, 64 << 20, RangeKind::Usable, 0);
//! let layout = map.build()?;
//!
//! // The descriptor array and the section states: in a kernel, a virtual range
//! // mapped on demand and a static or boot-allocated slice.
//! let mut memmap = Box::<[Page]>::new_uninit_slice(layout.memmap_descriptors() as usize);
//! let mut slots: Vec<SectionSlot> = (0..layout.section_count()).map(|_| SectionSlot::new()).collect();
//!
//! // One page cache per CPU (a kernel's per-CPU area, or a static array).
//! let cpus: [CpuCache<parking_lot::RawMutex>; 2] = [CpuCache::new(), CpuCache::new()];
//!
//! let allocator: Allocator<'_, _, parking_lot::RawMutex> = Allocator::new(
//!     layout,
//!     SliceBacking::new(&mut memmap),
//!     &mut slots,
//!     &cpus,
//!     Config::new(Strategy::OnDemand),
//! )?;
//! assert_eq!(allocator.memmap_populated_bytes(), 0);
//!
//! // The first allocation initialises one section of its zone, and no more.
//! let block = allocator.alloc(3, Constraint::Any, 0)?;
//! assert_eq!(allocator.memmap_populated_bytes(), 1024 * 64);
//! allocator.free(block, 3)?;
//! assert!(allocator.free(block, 3).is_err()); // a double free is refused
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With [`Strategy::Deferred`], start workers after `new` returns:
//!
//! ```ignore
//! std::thread::scope(|s| {
//!     for (node, _) in allocator.layout().nodes() {
//!         for _ in 0..threads_per_node {
//!             s.spawn(|| allocator.run_deferred_worker(node));
//!         }
//!     }
//! });
//! ```
//!
//! ## Guarantees
//!
//! - A section is initialised exactly once, by whoever claims it first (start-up, a
//!   worker, the grow path, [`Allocator::page_or_init`]); the others wait or move on.
//!   No zone lock is held while descriptors are written.
//! - A descriptor is never read before it is written: [`Allocator::page`] says
//!   [`LookupError::Uninitialised`] rather than return one. Holes and reserved pages
//!   get reserved descriptors.
//! - Per zone, free + allocated + uninitialised + reserved = present whenever no
//!   operation is in flight, and [`ZoneStats::available`] counts uninitialised pages
//!   as available.
//! - A double free, a free with the wrong order, of a reserved or never-initialised
//!   page, or outside the map is a [`FreeError`], with nothing changed.
//!
//! ## Modules
//!
//! The unsafe code lives in [`memmap`] (the descriptor array and its backing) and
//! relies on the claim protocol of [`section`]; zones, the buddy lists and the
//! strategies are safe code over them.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

mod allocator;
mod buddy;
pub mod init;
pub mod layout;
pub mod memmap;
pub mod page;
mod pcp;
mod percpu;
pub mod section;
mod sync;
mod zone;

pub use allocator::{AllocError, AllocPath, Allocator, Constraint, FreeError};
pub use init::{Config, InitError, InitStats, Strategy, WorkerReport};
pub use layout::{
    Layout, LayoutBuilder, LayoutError, MemoryRange, Pfn, RangeKind, ZoneType, MAX_NODES,
    MAX_ORDER, PAGEBLOCK_ORDER, PAGE_SIZE,
};
pub use memmap::{BackingError, LookupError, MemmapBacking, Populated, SectionPfns, SliceBacking};
pub use page::{Page, PageState};
pub use pcp::{CpuCache, CpuId, CACHED_ORDERS, CACHE_BATCH, CACHE_HIGH};
pub use section::{SectionSlot, SectionState};
pub use zone::ZoneStats;
