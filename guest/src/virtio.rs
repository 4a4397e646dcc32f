//! Virtio over PCI's legacy interface (the device's I/O BAR), and one split
//! virtqueue in the memory this module owns.
//!
//! It owns the device's legacy registers (status, features, queue set-up and
//! notification) and the virtqueue's descriptor table and rings: a single static,
//! page-aligned area inside the kernel image, whose virtual address is its physical
//! address (the image is identity-mapped), so the device reads it where the guest
//! wrote it. It knows nothing of what a device does with a buffer (that is the
//! device driver's, `balloon`), and it never touches memory a buffer points at.
//! One request is in flight at a time: a chain is posted, then waited for.

use core::fmt;
use core::sync::atomic::{fence, Ordering};

use crate::port::{inb, inl, inw, outb, outl, outw};

/// Legacy register offsets in the I/O BAR (virtio 1.2, 4.1.4.8).
const HOST_FEATURES: u16 = 0x00;
const GUEST_FEATURES: u16 = 0x04;
const QUEUE_PFN: u16 = 0x08;
const QUEUE_SIZE: u16 = 0x0c;
const QUEUE_SELECT: u16 = 0x0e;
const QUEUE_NOTIFY: u16 = 0x10;
const DEVICE_STATUS: u16 = 0x12;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FAILED: u8 = 0x80;

/// Descriptor flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Avail-ring flag: the driver polls and wants no interrupt.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The legacy interface's queue alignment (the used ring starts on it).
const QUEUE_ALIGN: usize = 4096;
/// Room for one virtqueue: a queue of up to 256 entries fits.
const QUEUE_BYTES: usize = 4 * 4096;

/// Why the virtqueue could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The device has no queue at this index (its size reads 0).
    Missing { index: u16 },
    /// The device's queue is larger than the memory set aside for one.
    TooLarge { index: u16, size: u16 },
    /// The queue's memory is already in use by another virtqueue.
    InUse,
    /// A request had more buffers than the queue has descriptors, or none.
    BadChain { buffers: usize, size: u16 },
    /// The device did not return a request within the time allowed.
    Timeout { index: u16, waited_ms: u64 },
    /// The device returned a descriptor that was not the one posted.
    WrongId { expected: u16, got: u32 },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueError::Missing { index } => {
                write!(f, "the device has no virtqueue {index} (its size reads 0)")
            }
            QueueError::TooLarge { index, size } => write!(
                f,
                "virtqueue {index} has {size} entries, more than the {QUEUE_BYTES} bytes set aside hold"
            ),
            QueueError::InUse => f.write_str("the virtqueue's memory is already in use"),
            QueueError::BadChain { buffers, size } => write!(
                f,
                "a request of {buffers} buffers does not fit a virtqueue of {size} descriptors"
            ),
            QueueError::Timeout { index, waited_ms } => write!(
                f,
                "the device did not return the request on virtqueue {index} within {waited_ms} ms"
            ),
            QueueError::WrongId { expected, got } => write!(
                f,
                "the device returned descriptor {got}, but {expected} was posted"
            ),
        }
    }
}

/// A device's legacy virtio registers, at I/O port `base`.
#[derive(Clone, Copy, Debug)]
pub struct Legacy {
    base: u16,
}

impl Legacy {
    /// The registers of the device whose I/O BAR starts at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the I/O BAR of a legacy (or transitional) virtio PCI device with
    /// I/O decoding enabled, and this driver alone drives it.
    pub unsafe fn new(base: u16) -> Legacy {
        Legacy { base }
    }

    /// Resets the device (status 0): it forgets features and queues.
    pub fn reset(&self) {
        // SAFETY: our device's status register (`new`'s contract).
        unsafe { outb(self.base + DEVICE_STATUS, 0) };
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        // SAFETY: our device's status register.
        unsafe { inb(self.base + DEVICE_STATUS) }
    }

    /// Adds `bits` to the device status.
    pub fn add_status(&self, bits: u8) {
        let s = self.status();
        // SAFETY: our device's status register.
        unsafe { outb(self.base + DEVICE_STATUS, s | bits) };
    }

    /// The features the device offers (the legacy interface has 32 bits of them).
    pub fn host_features(&self) -> u32 {
        // SAFETY: our device's feature register.
        unsafe { inl(self.base + HOST_FEATURES) }
    }

    /// Tells the device which of its features the driver takes.
    pub fn set_guest_features(&self, features: u32) {
        // SAFETY: our device's feature register.
        unsafe { outl(self.base + GUEST_FEATURES, features) };
    }

    fn queue_size(&self, index: u16) -> u16 {
        // SAFETY: our device's queue registers; the select applies to the next read.
        unsafe {
            outw(self.base + QUEUE_SELECT, index);
            inw(self.base + QUEUE_SIZE)
        }
    }

    fn notify(&self, index: u16) {
        // SAFETY: our device's notify register: the device looks at the queue.
        unsafe { outw(self.base + QUEUE_NOTIFY, index) };
    }
}

#[repr(C, align(4096))]
struct QueueMemory([u8; QUEUE_BYTES]);

/// The memory of the one virtqueue this guest drives; taken once.
static QUEUE_MEMORY: spin::Mutex<QueueMemory> = spin::Mutex::new(QueueMemory([0; QUEUE_BYTES]));

/// One descriptor, as the device reads it.
#[repr(C)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue of the legacy layout: descriptors, then the avail ring, then
/// (at the next 4 KiB) the used ring, all in [`QUEUE_MEMORY`].
pub struct Virtqueue {
    device: Legacy,
    index: u16,
    size: u16,
    /// The queue memory (identity-mapped: its address is its physical address).
    base: *mut u8,
    used_offset: usize,
    /// The avail ring's index the driver publishes next.
    avail_idx: u16,
    /// The used ring's index up to which the driver has consumed.
    used_idx: u16,
}

impl Virtqueue {
    /// Sets up virtqueue `index` of `device` in this module's queue memory (once;
    /// a second call is refused with `InUse`).
    pub fn new(device: Legacy, index: u16) -> Result<Virtqueue, QueueError> {
        let size = device.queue_size(index);
        if size == 0 {
            return Err(QueueError::Missing { index });
        }
        let n = size as usize;
        let used_offset = (16 * n + 6 + 2 * n).next_multiple_of(QUEUE_ALIGN);
        if used_offset + 6 + 8 * n > QUEUE_BYTES {
            return Err(QueueError::TooLarge { index, size });
        }
        let memory = spin::MutexGuard::leak(QUEUE_MEMORY.try_lock().ok_or(QueueError::InUse)?);
        memory.0.fill(0);
        let base = memory.0.as_mut_ptr();
        // SAFETY: the avail ring's flags lie inside the queue memory, which this
        // queue owns from here on (the guard is leaked).
        unsafe {
            base.add(16 * n)
                .cast::<u16>()
                .write_volatile(AVAIL_F_NO_INTERRUPT)
        };
        // The device reads the rings from the page number written; the memory is
        // identity-mapped, so that is its physical page.
        let pfn = (base as u64) >> 12;
        // SAFETY: our device's queue registers (`Legacy::new`'s contract); the
        // queue memory is ours, zeroed, and stays put for good.
        unsafe {
            outw(device.base + QUEUE_SELECT, index);
            outl(device.base + QUEUE_PFN, pfn as u32);
        }
        Ok(Virtqueue {
            device,
            index,
            size,
            base,
            used_offset,
            avail_idx: 0,
            used_idx: 0,
        })
    }

    /// Descriptors in the queue: the most buffers one request may have.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Posts `buffers` (`(physical address, bytes)`) as one chain, device-writable
    /// if `writable`, notifies the device, and waits until it has returned the
    /// chain or `timeout_ticks` of the TSC have passed (`ticks_per_ms` to say how
    /// long that was).
    pub fn post_and_wait(
        &mut self,
        buffers: &[(u64, u32)],
        writable: bool,
        timeout_ticks: u64,
        ticks_per_ms: u64,
    ) -> Result<(), QueueError> {
        let n = buffers.len();
        if n == 0 || n > self.size as usize {
            return Err(QueueError::BadChain {
                buffers: n,
                size: self.size,
            });
        }
        let size = self.size as usize;
        let descriptors = self.base.cast::<Descriptor>();
        for (i, &(addr, len)) in buffers.iter().enumerate() {
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: descriptor `i < size` lies in the queue memory we own; the
            // device reads descriptors only once they are published below, and
            // the previous request was returned, so it reads none now.
            unsafe {
                descriptors.add(i).write_volatile(Descriptor {
                    addr,
                    len,
                    flags,
                    next: if i + 1 < n { i as u16 + 1 } else { 0 },
                })
            };
        }
        let avail = self.base.wrapping_add(16 * size).cast::<u16>();
        // SAFETY: the avail ring's slot `avail_idx % size` (ring entries start
        // after its flags and idx) lies in our queue memory.
        unsafe {
            avail
                .add(2 + self.avail_idx as usize % size)
                .write_volatile(0)
        };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: pairs with the device's read of avail->idx; the descriptors and
        // the ring slot written above are visible before the index that publishes
        // them.
        fence(Ordering::Release);
        // SAFETY: the avail ring's idx, in our queue memory.
        unsafe { avail.add(1).write_volatile(self.avail_idx) };
        // SeqCst: the index is visible before the notify that makes the device
        // look (a store then a port write; pairs with the device's read on notify).
        fence(Ordering::SeqCst);
        self.device.notify(self.index);

        let used = self.base.wrapping_add(self.used_offset).cast::<u16>();
        let start = crate::tsc::now();
        loop {
            // SAFETY: the used ring's idx, in our queue memory; the device writes
            // it, hence the volatile read.
            let idx = unsafe { used.add(1).read_volatile() };
            if idx != self.used_idx {
                // Acquire: pairs with the device's write of used->idx after the
                // element; the element is read after the index.
                fence(Ordering::Acquire);
                let slot = self.used_idx as usize % size;
                // SAFETY: used-ring element `slot < size` (8 bytes each, after
                // flags and idx) lies in our queue memory.
                let id = unsafe { used.add(2).cast::<u32>().add(2 * slot).read_volatile() };
                self.used_idx = self.used_idx.wrapping_add(1);
                if id != 0 {
                    return Err(QueueError::WrongId {
                        expected: 0,
                        got: id,
                    });
                }
                return Ok(());
            }
            let waited = crate::tsc::now() - start;
            if waited > timeout_ticks {
                return Err(QueueError::Timeout {
                    index: self.index,
                    waited_ms: waited / ticks_per_ms.max(1),
                });
            }
            core::hint::spin_loop();
        }
    }
}
