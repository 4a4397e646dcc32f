//! Start-up in place: an [`Allocator`] built field by field in memory the caller
//! provides (a `static`, a per-CPU area, a boot-time allocation), so that bring-up
//! needs a small stack.
//!
//! An `Allocator` is about 67 KB and a `Layout` about 11 KB (see the crate docs,
//! "Stack", for the measured stack of each path). Returned by value, each is
//! built on the stack and then copied, more than once in a debug build. Here no
//! value larger than one zone is made on the stack: the layout is validated
//! straight into its place in the allocator ([`LayoutBuilder::build_into`]) or
//! copied there byte for byte, and each zone, zone list and counter is written
//! into its own place, each step in a function of its own so that unoptimised
//! their frames do not add up. [`Allocator::new`] is this, into a local that it
//! then returns.
//!
//! This module owns the allocator's only `unsafe` code (the descriptor array's is in
//! [`crate::memmap`], the per-page data view in `page`): writing a partly
//! initialised `Allocator` through a raw pointer. It decides
//! nothing about what the fields hold (the same helpers as ever compute them) and
//! initialises no memory.

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use core::sync::atomic::AtomicUsize;

use lock_api::RawMutex;

use super::stats::{InitCause, InitCounters};
use super::{Allocator, ZoneList, CONSTRAINTS};
use crate::config::{Config, Strategy};
use crate::cpu_cache::CpuCache;
use crate::error::{ChunkError, InitError};
use crate::layout::{Layout, LayoutBuilder, EMPTY_LAYOUT};
use crate::memmap::reentry::InBacking;
use crate::memmap::{BackingError, InitPass, Memmap, MemmapBacking};
use crate::section::{SectionSlot, Sections, SlotsError};
use crate::types::Constraint;
use crate::types::{NodeId, Pfn, ZoneType, ZONE_TYPES};
use crate::zone::Zone;

// A layout is copied into place byte for byte: that is its clone only while it
// owns nothing and has nothing to drop (it holds integers and arrays of them).
const _: () = assert!(!core::mem::needs_drop::<Layout>());

/// Where a layout comes from for [`Allocator::start_in_place`].
enum Map<'m> {
    Built(&'m Layout),
    Builder(&'m LayoutBuilder),
}

impl<'a, B: MemmapBacking, R: RawMutex> Allocator<'a, B, R> {
    /// [`Allocator::new`], built in `slot` instead of on the stack; returns the
    /// allocator there. `layout` is copied into it. Bring-up this way needs a few
    /// KiB of stack (see the crate docs, "Stack"), not the size of the allocator.
    ///
    /// The slot owns the allocator from then on, and never drops it (a kernel's
    /// never is): to drop it, `slot.assume_init_drop()`. On error nothing is left
    /// in the slot to drop, and `backing` has been dropped.
    pub fn init_in_place<'s>(
        slot: &'s mut MaybeUninit<Self>,
        layout: &Layout,
        backing: B,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<&'s mut Self, InitError> {
        Self::start_in_place(
            slot,
            Map::Built(layout),
            |_| Ok(backing),
            slots,
            cpus,
            config,
        )
    }

    /// [`init_in_place`](Self::init_in_place), validating `map` straight into
    /// the allocator's own layout, so that no [`Layout`] is ever on the stack
    /// either: the whole of bring-up, from memory map to first allocation, in
    /// 16 KiB of stack. A map that does not validate is [`InitError::Layout`].
    ///
    /// `backing` makes the backing once the layout is known, so that it can
    /// learn where the memmap starts ([`Layout::memmap_start`]) and how many
    /// descriptors it spans ([`Layout::memmap_descriptors`]) before any is
    /// needed; if it cannot, it says why, and start-up fails with
    /// [`InitError::BackingUnavailable`].
    pub fn build_in_place<'s>(
        slot: &'s mut MaybeUninit<Self>,
        map: &LayoutBuilder,
        backing: impl FnOnce(&Layout) -> Result<B, &'static str>,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<&'s mut Self, InitError> {
        Self::start_in_place(slot, Map::Builder(map), backing, slots, cpus, config)
    }

    /// Start-up, written into `slot` field by field.
    ///
    /// Each step is a function of its own, kept out of line: unoptimised, a
    /// frame holds a slot for every temporary its function makes, so one
    /// function doing all of this would need the sum of their frames (about
    /// 7 KiB at opt-level 0) where the steps, run one after another, need the
    /// largest of them.
    fn start_in_place<'s>(
        slot: &'s mut MaybeUninit<Self>,
        map: Map<'_>,
        backing: impl FnOnce(&Layout) -> Result<B, &'static str>,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<&'s mut Self, InitError> {
        let this = slot.as_mut_ptr();
        // SAFETY: `this` points to memory valid for an `Allocator`, exclusively
        // ours through `slot`, and nothing has written its layout yet.
        let layout = unsafe { Self::write_layout(this, map) }?;
        let chunk_shift = config.chunk_shift(layout)?;
        // SAFETY: as above; the layout is written and the memmap not yet.
        unsafe { Self::write_memmap(this, layout, backing, slots, config.wait, chunk_shift) }?;
        for cache in cpus {
            // Whatever a reused cache held belongs to a previous allocator.
            cache.reset();
        }
        // SAFETY: as above; the layout is written, the zones not yet.
        unsafe { Self::write_zones(this, layout, chunk_shift) };
        // SAFETY: as above; the layout and the zones are written, the zone
        // lists not yet.
        unsafe { Self::write_zonelists(this, layout) };
        // SAFETY: as above; the remaining fields are not written yet.
        unsafe { Self::write_rest(this, cpus, config) };
        // SAFETY: every field of `*this` is written (layout, memmap, zones, zone
        // lists, and the rest above), so the whole is initialised.
        let allocator = unsafe { slot.assume_init_mut() };
        if let Err(e) = allocator.boot() {
            // SAFETY: the allocator is whole (above) and no reference to it
            // outlives this call: drop it, leaving the slot as the caller gave it.
            unsafe { slot.assume_init_drop() };
            return Err(e);
        }
        // SAFETY: whole, and not dropped (the branch above returned).
        Ok(unsafe { slot.assume_init_mut() })
    }

    /// Writes the layout into `(*this).layout` (an empty one copied from a
    /// static, or the caller's, byte for byte: a layout owns nothing, asserted
    /// above; then validated into place from a builder) and returns it. On error
    /// nothing is left to drop.
    ///
    /// # Safety
    ///
    /// `this` points to memory valid for writes of an `Allocator` that no one
    /// else uses while the returned reference lives. The field is written
    /// through `addr_of_mut!`, which makes no reference to the uninitialised
    /// whole; the reference returned is to the initialised field only, and the
    /// caller must not write that field while it lives.
    #[inline(never)]
    unsafe fn write_layout<'l>(this: *mut Self, map: Map<'_>) -> Result<&'l Layout, InitError> {
        // SAFETY: the field's place is valid for writes (the caller's promise);
        // each source is a whole layout, and layouts cannot overlap it (it is
        // ours alone). It is initialised before the reference is made, and the
        // reference is the only one to that field (the caller's promise).
        unsafe {
            let place = addr_of_mut!((*this).layout);
            match map {
                Map::Built(layout) => core::ptr::copy_nonoverlapping(layout, place, 1),
                Map::Builder(map) => {
                    core::ptr::copy_nonoverlapping(&EMPTY_LAYOUT, place, 1);
                    map.build_into(&mut *place).map_err(InitError::Layout)?;
                }
            }
            Ok(&*place)
        }
    }

    /// Claims the section slots, makes the backing, and writes the memmap over
    /// them into `(*this).memmap`. On error nothing is left to drop (the
    /// sections, dropped, free the slots).
    ///
    /// # Safety
    ///
    /// `this` points to memory valid for writes of an `Allocator` that no one
    /// else uses; its `memmap` field holds nothing to drop.
    #[inline(never)]
    unsafe fn write_memmap(
        this: *mut Self,
        layout: &Layout,
        backing: impl FnOnce(&Layout) -> Result<B, &'static str>,
        slots: &'a [SectionSlot],
        wait: Option<fn()>,
        chunk_shift: u32,
    ) -> Result<(), InitError> {
        let chunks_shift = layout.section_shift() - chunk_shift;
        let memmap_sections = layout.memmap_sections();
        let count = memmap_sections.len();
        let given = slots.len();
        let present_chunks = layout.present_runs(Pfn(0)..Pfn(u64::MAX)).map(|r| {
            (
                (r.start.0 >> chunk_shift) as usize,
                ((r.end.0 - 1) >> chunk_shift) as usize + 1,
            )
        });
        let sections = Sections::new(
            slots,
            memmap_sections.start,
            count,
            chunks_shift,
            present_chunks,
        )
        .map(|sections| sections.with_wait(wait))
        .map_err(|e| match e {
            SlotsError::InUse { index } => InitError::SlotsInUse { index },
            // `chunk_shift` checked the chunks per section already.
            SlotsError::TooFew | SlotsError::TooManyChunks => InitError::TooFewSlots {
                needed: count,
                given,
            },
        })?;
        // On failure the sections are dropped with it, which frees the slots.
        let backing = backing(layout).map_err(|reason| InitError::BackingUnavailable { reason })?;
        let memmap = Memmap::new(backing, sections, layout, chunk_shift)
            .ok_or(InitError::MisalignedMemmap)?;
        // SAFETY: the field's place is valid for writes and holds nothing to
        // drop (the caller's promise); `addr_of_mut!` makes no reference to the
        // uninitialised whole.
        unsafe { addr_of_mut!((*this).memmap).write(memmap) };
        Ok(())
    }

    /// Writes every zone into `(*this).zones`, one by one, so that no array of
    /// them is ever on the stack.
    ///
    /// # Safety
    ///
    /// `this` points to memory valid for writes of an `Allocator` that no one
    /// else uses; its `zones` field holds nothing to drop.
    #[inline(never)]
    unsafe fn write_zones(this: *mut Self, layout: &Layout, chunk_shift: u32) {
        // SAFETY: the field's place is valid for writes (the caller's promise)
        // and is an array of `MAX_NODES * ZONE_TYPES` zones, so each element
        // written is in it; `addr_of_mut!` makes no reference to the whole.
        let zones = unsafe { addr_of_mut!((*this).zones).cast::<Zone<R>>() };
        for i in 0..crate::types::MAX_NODES * ZONE_TYPES {
            let node = i / ZONE_TYPES;
            let kind = ZoneType::from_index(i % ZONE_TYPES);
            let span = layout
                // Below MAX_NODES (16): fits in u32.
                .node(NodeId(node as u32))
                .map(|n| n.zones[kind as usize])
                .unwrap_or_default();
            // SAFETY: element `i` of the array (above).
            unsafe {
                zones
                    .add(i)
                    .write(Zone::new(node as u8, kind, span, chunk_shift))
            };
        }
    }

    /// Writes every zone list into `(*this).zonelists`, one by one, from the
    /// zones.
    ///
    /// # Safety
    ///
    /// `this` points to memory valid for writes of an `Allocator` that no one
    /// else uses, whose `zones` are all written and whose `zonelists` field
    /// holds nothing to drop.
    #[inline(never)]
    unsafe fn write_zonelists(this: *mut Self, layout: &Layout) {
        // SAFETY: the zones are initialised (the caller's promise) and written
        // no more; the zone lists are another field, so writing them leaves this
        // reference alone. The lists' place is an array of `MAX_NODES *
        // CONSTRAINTS` lists, valid for writes, so each element written is in it.
        let (zones, lists) = unsafe {
            (
                &*addr_of_mut!((*this).zones),
                addr_of_mut!((*this).zonelists).cast::<ZoneList>(),
            )
        };
        for i in 0..crate::types::MAX_NODES * CONSTRAINTS {
            let constraint = [Constraint::Any, Constraint::Dma32, Constraint::Dma][i % CONSTRAINTS];
            let list = ZoneList::build(zones, layout.node_count(), i / CONSTRAINTS, constraint);
            // SAFETY: element `i` of the array (above).
            unsafe { lists.add(i).write(list) };
        }
    }

    /// Writes the remaining fields: the caches, the configuration, the
    /// deferred workers' words, the counters, the re-entrancy table and the
    /// pacing.
    ///
    /// # Safety
    ///
    /// `this` points to memory valid for writes of an `Allocator` that no one
    /// else uses; none of these fields holds anything to drop.
    #[inline(never)]
    unsafe fn write_rest(this: *mut Self, cpus: &'a [CpuCache<R>], config: Config) {
        // SAFETY: each field's place is valid for writes and holds nothing to
        // drop (the caller's promise); `addr_of_mut!` makes no reference to the
        // uninitialised whole.
        unsafe {
            addr_of_mut!((*this).cpus).write(cpus);
            addr_of_mut!((*this).config).write(config);
            let work = addr_of_mut!((*this).work).cast::<AtomicUsize>();
            for i in 0..crate::types::MAX_NODES {
                work.add(i).write(AtomicUsize::new(0));
            }
            addr_of_mut!((*this).counters).write(InitCounters::new());
            addr_of_mut!((*this).in_backing).write(InBacking::new());
            addr_of_mut!((*this).pacing).write(super::tick::Pacing::new());
        }
    }

    /// Under [`Strategy::Eager`], initialises every chunk.
    fn boot(&self) -> Result<(), InitError> {
        if self.config.strategy != Strategy::Eager {
            return Ok(());
        }
        let chunks_shift = self.memmap.sections().chunks_shift();
        let sections = self.layout.memmap_sections();
        let mut pass = InitPass::new();
        let per = 1 << chunks_shift;
        let mut index = sections.start << chunks_shift;
        while index < sections.end << chunks_shift {
            // A run to the end of the section: the chunks of a section are
            // claimed, published, spliced and finished together.
            let run = self.init_run(index, per - index % per, InitCause::Boot, &mut pass);
            if let Some(e) = run.error {
                return Err(match e {
                    ChunkError::Backing(e) => InitError::Backing(e),
                    // No one can call an allocator that is not returned yet.
                    ChunkError::Reentrant { chunk } => InitError::Backing(BackingError {
                        section: chunk >> chunks_shift,
                        reason: "start-up was re-entered from the backing",
                    }),
                });
            }
            index = run.next;
        }
        Ok(())
    }

    /// Starts an allocator over `layout`, with descriptors in `backing`, section
    /// states in `slots` (at least [`Layout::section_count`] of them, fresh: each is
    /// marked owned with a compare-and-swap, refused with
    /// [`InitError::SlotsInUse`] if another live allocator owns it, and fresh again
    /// when this allocator is dropped) and one cache per CPU in `cpus` (emptied;
    /// may be empty, and then requests name no CPU and go to the zones).
    ///
    /// With [`Strategy::Eager`] every chunk is initialised before this returns;
    /// otherwise nothing is, and the allocator serves at once: start-up costs two
    /// words per section and work per memory-map range, nothing per page.
    ///
    /// The allocator (about 67 KB) and `layout` (about 11 KB) are moved by value
    /// (over 140 KiB of stack, see the crate docs, "Stack"): on a small stack,
    /// start up in place instead ([`init_in_place`](Self::init_in_place), [`build_in_place`](Self::build_in_place)).
    pub fn new(
        layout: Layout,
        backing: B,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<Self, InitError> {
        Self::start_by_value(&layout, backing, slots, cpus, config)
    }

    /// [`Allocator::new`]: start-up in a local, returned by value.
    pub(crate) fn start_by_value(
        layout: &Layout,
        backing: B,
        slots: &'a [SectionSlot],
        cpus: &'a [CpuCache<R>],
        config: Config,
    ) -> Result<Self, InitError> {
        let mut slot = MaybeUninit::uninit();
        Self::init_in_place(&mut slot, layout, backing, slots, cpus, config)?;
        // SAFETY: `init_in_place` returned Ok, so the slot holds a whole
        // allocator, which moves out of it here (the slot never drops it).
        Ok(unsafe { slot.assume_init() })
    }
}
