//! An interrupt-safe lock: any [`lock_api::RawMutex`] (a spin lock) that keeps
//! interrupts off on its CPU while it is held, over the embedder's own
//! "interrupts off / restore" pair ([`Interrupts`]).
//!
//! The crate documentation's first rule for interrupt context: if interrupt
//! handlers allocate or free, the allocator's lock type must keep interrupts off
//! while held (Linux's `spin_lock_irqsave`), or a handler that interrupts a lock
//! holder on the same CPU spins forever. `spin` offers no such lock; this wrapper
//! makes one of any raw lock, so the embedder writes two safe functions and no
//! `unsafe`.
//!
//! This module owns only the save/restore bracket around its inner lock; it
//! knows nothing of the allocator.

use core::cell::UnsafeCell;
use core::marker::PhantomData;

use lock_api::{GuardNoSend, RawMutex};

/// The embedder's interrupt control on the calling CPU.
///
/// On x86-64 with the `x86_64` crate: `disable` is
/// `let on = x86_64::instructions::interrupts::are_enabled();
/// x86_64::instructions::interrupts::disable(); on` and `restore(on)` enables them
/// again if `on`. On a host (tests, a simulator) both may do nothing.
pub trait Interrupts {
    /// Disables interrupts on the calling CPU; returns whether they were on.
    fn disable() -> bool;
    /// Enables interrupts again if `was_on` (what the matching `disable` said).
    fn restore(was_on: bool);
}

/// A raw lock `L` that keeps interrupts off (through `I`) while it is held: the
/// lock type for an allocator that interrupt handlers use.
///
/// ```
/// use meminit::{Interrupts, IrqSafe};
///
/// struct Cpu;
/// impl Interrupts for Cpu {
///     fn disable() -> bool { false }     // a kernel: cli, saying whether IF was set
///     fn restore(_was_on: bool) {}       // a kernel: sti if it was
/// }
/// type ZoneLock = IrqSafe<parking_lot::RawMutex, Cpu>;
/// let lock = meminit::lock_api::Mutex::<ZoneLock, u32>::new(0);
/// *lock.lock() += 1;
/// assert_eq!(*lock.lock(), 1);
/// ```
pub struct IrqSafe<L, I> {
    inner: L,
    /// Whether interrupts were on before the holder disabled them: written by
    /// the holder after it took `inner`, read by the holder before it releases.
    was_on: UnsafeCell<bool>,
    _interrupts: PhantomData<fn() -> I>,
}

// SAFETY: `was_on` is accessed only by the lock's holder, between acquiring and
// releasing `inner`, which orders those accesses between successive holders
// (the inner lock's acquire/release); everything else is `L`, which is Sync as
// every `RawMutex` is.
unsafe impl<L: Sync, I> Sync for IrqSafe<L, I> {}

// SAFETY: the guard must stay on the CPU that took it (it restores that CPU's
// interrupt state), hence `GuardNoSend`. `lock` disables interrupts before it
// takes `inner` and records the previous state only once it holds it; `unlock`
// reads that record, releases `inner`, then restores: so the lock is never held
// with interrupts on, and each CPU's state is restored by the CPU that saved it.
unsafe impl<L: RawMutex, I: Interrupts> RawMutex for IrqSafe<L, I> {
    #[allow(clippy::declare_interior_mutable_const)] // lock_api's pattern for INIT
    const INIT: Self = IrqSafe {
        inner: L::INIT,
        was_on: UnsafeCell::new(false),
        _interrupts: PhantomData,
    };

    type GuardMarker = GuardNoSend;

    fn lock(&self) {
        let was_on = I::disable();
        self.inner.lock();
        // SAFETY: we hold `inner`: the only accessor of `was_on` (see `Sync`).
        unsafe { *self.was_on.get() = was_on };
    }

    fn try_lock(&self) -> bool {
        let was_on = I::disable();
        if self.inner.try_lock() {
            // SAFETY: as in `lock`.
            unsafe { *self.was_on.get() = was_on };
            true
        } else {
            I::restore(was_on);
            false
        }
    }

    /// Releases the inner lock, then restores the interrupt state saved when
    /// it was taken.
    ///
    /// # Safety
    ///
    /// `RawMutex::unlock`'s: the lock is held in the current context.
    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock (the trait's contract for `unlock`),
        // so it is the only accessor of `was_on`.
        let was_on = unsafe { *self.was_on.get() };
        // SAFETY: the caller holds the lock, as `RawMutex::unlock` requires.
        unsafe { self.inner.unlock() };
        I::restore(was_on);
    }

    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}
