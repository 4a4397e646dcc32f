//! A home for an allocator in a `static`: [`AllocatorCell`], constructed in a
//! `const`, started once in place, then shared as `&'static`.
//!
//! A kernel has no heap to put its page allocator on, and the allocator (tens of
//! KB) must not be built on a small boot stack. The cell owns the memory of one
//! [`Allocator`] inside the `static` itself, starts it there with
//! [`Allocator::build_in_place`] or [`Allocator::init_in_place`], and hands out
//! shared references once it is whole: no `static mut`, no `unsafe` on the
//! embedder's side.
//!
//! This module owns the cell's one-time hand-over (a state word claimed with a
//! compare-and-swap) and the `unsafe` that the hand-over needs. It decides
//! nothing about the allocator: start-up is `Allocator`'s own.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

use lock_api::RawMutex;

use crate::allocator::Allocator;
use crate::config::Config;
use crate::cpu_cache::CpuCache;
use crate::error::InitError;
use crate::layout::{Layout, LayoutBuilder};
use crate::memmap::MemmapBacking;
use crate::section::SectionSlot;

const EMPTY: u8 = 0;
const STARTING: u8 = 1;
const READY: u8 = 2;

/// The memory of one [`Allocator`] in a `static`, started once.
///
/// ```
/// use meminit::{AllocRequest, AllocatorCell, Config, CpuCache, CpuId, LayoutBuilder, NodeId,
///               Page, RangeKind, SectionSlot, SliceBacking, Strategy};
/// # use core::mem::MaybeUninit;
/// static SLOTS: [SectionSlot; 16] = [const { SectionSlot::new() }; 16];
/// static CPUS: [CpuCache<parking_lot::RawMutex>; 2] = [const { CpuCache::new() }; 2];
/// static ALLOCATOR: AllocatorCell<SliceBacking<'static>, parking_lot::RawMutex> =
///     AllocatorCell::new();
/// # let memmap: &'static mut [MaybeUninit<Page>] =
/// #     Box::leak(Box::<[Page]>::new_uninit_slice(16 * 1024));
///
/// let mut map = LayoutBuilder::new();
/// map.section_size(4 << 20).add(0x100000, 64 << 20, RangeKind::Usable, NodeId(0));
/// let allocator = ALLOCATOR.build(
///     &map,
///     |layout| Ok(SliceBacking::new(&mut memmap[..layout.memmap_descriptors() as usize])),
///     &SLOTS,
///     &CPUS,
///     Config::new(Strategy::OnDemand),
/// )?;
/// let page = allocator.alloc(AllocRequest::order(0).on(CpuId(0)))?;
/// assert!(ALLOCATOR.get().is_some());
/// # let _ = page;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AllocatorCell<B, R: RawMutex + 'static> {
    state: AtomicU8,
    slot: UnsafeCell<MaybeUninit<Allocator<'static, B, R>>>,
}

// SAFETY: the slot is written only by the one caller that moved `state` from
// EMPTY to STARTING (a compare-and-swap), and read only as a shared reference
// once `state` is READY (published with Release, read with Acquire), after which
// it is never written again. So the cell shares an `Allocator` between threads
// exactly as a `&Allocator` would: it is Sync when the allocator is.
unsafe impl<B, R: RawMutex + 'static> Sync for AllocatorCell<B, R> where
    Allocator<'static, B, R>: Sync
{
}

impl<B: MemmapBacking, R: RawMutex + 'static> AllocatorCell<B, R> {
    /// An empty cell, for a `static`.
    pub const fn new() -> Self {
        AllocatorCell {
            state: AtomicU8::new(EMPTY),
            slot: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// The allocator, once started.
    pub fn get(&self) -> Option<&Allocator<'static, B, R>> {
        // Acquire: pairs with the Release that published READY after start-up
        // wrote every field.
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY means start-up succeeded and wrote the whole allocator
        // into the slot, which nothing writes again (see the `Sync` impl).
        Some(unsafe { (*self.slot.get()).assume_init_ref() })
    }

    /// Starts the allocator in the cell from a memory map, with
    /// [`Allocator::build_in_place`]: no layout or allocator is ever on the
    /// stack. `backing` makes the backing once the layout is known (or says why
    /// it cannot: [`InitError::BackingUnavailable`]). Refused with
    /// [`InitError::AlreadyStarted`] if the cell holds an allocator or is
    /// starting one; on any other error the cell stays empty and may be started
    /// again.
    pub fn build(
        &'static self,
        map: &LayoutBuilder,
        backing: impl FnOnce(&Layout) -> Result<B, &'static str>,
        slots: &'static [SectionSlot],
        cpus: &'static [CpuCache<R>],
        config: Config,
    ) -> Result<&'static Allocator<'static, B, R>, InitError> {
        self.start(|slot| Allocator::build_in_place(slot, map, backing, slots, cpus, config))
    }

    /// Starts the allocator in the cell from a built `layout`, with
    /// [`Allocator::init_in_place`]; as [`build`](Self::build) otherwise.
    pub fn init(
        &'static self,
        layout: &Layout,
        backing: B,
        slots: &'static [SectionSlot],
        cpus: &'static [CpuCache<R>],
        config: Config,
    ) -> Result<&'static Allocator<'static, B, R>, InitError> {
        self.start(|slot| Allocator::init_in_place(slot, layout, backing, slots, cpus, config))
    }

    fn start(
        &'static self,
        start: impl for<'s> FnOnce(
            &'s mut MaybeUninit<Allocator<'static, B, R>>,
        ) -> Result<&'s mut Allocator<'static, B, R>, InitError>,
    ) -> Result<&'static Allocator<'static, B, R>, InitError> {
        // Acquire on success: nothing to pair with yet (the slot is empty), but
        // a failed start before ours released it with Release, and we reuse it.
        if self
            .state
            .compare_exchange(EMPTY, STARTING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(InitError::AlreadyStarted);
        }
        // SAFETY: winning the compare-and-swap out of EMPTY makes this call the
        // slot's only user until it stores READY or EMPTY: no reference to the
        // slot exists elsewhere (`get` makes one only at READY).
        let slot = unsafe { &mut *self.slot.get() };
        match start(slot) {
            Ok(_) => {
                // Release: pairs with the Acquire in `get`, so every field that
                // start-up wrote is visible to whoever sees READY.
                self.state.store(READY, Ordering::Release);
                // SAFETY: as in `get`: the allocator is whole and never written
                // again.
                Ok(unsafe { (*self.slot.get()).assume_init_ref() })
            }
            Err(e) => {
                // On error start-up leaves nothing in the slot to drop.
                // Release: pairs with the next starter's Acquire.
                self.state.store(EMPTY, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl<B: MemmapBacking, R: RawMutex + 'static> Default for AllocatorCell<B, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, R: RawMutex + 'static> Drop for AllocatorCell<B, R> {
    fn drop(&mut self) {
        if *self.state.get_mut() == READY {
            // SAFETY: READY: the slot holds a whole allocator, and `&mut self`
            // means no reference to it is left.
            unsafe { self.slot.get_mut().assume_init_drop() };
        }
    }
}
