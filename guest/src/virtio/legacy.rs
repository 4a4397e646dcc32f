//! Virtio over PCI's legacy interface: the device's registers in its I/O BAR
//! (virtio 1.2, 4.1.4.8).
//!
//! It owns a legacy device's registers (status, features, queue set-up and
//! notification); the virtqueues themselves are `queue`'s. It knows nothing of
//! what a device does with a buffer (that is the device driver's, `balloon`).

use crate::port::{inb, inl, inw, outb, outl, outw};

use super::queue::{Notify, QueueError, Virtqueue};

/// Legacy register offsets in the I/O BAR (virtio 1.2, 4.1.4.8).
const HOST_FEATURES: u16 = 0x00;
const GUEST_FEATURES: u16 = 0x04;
const QUEUE_PFN: u16 = 0x08;
const QUEUE_SIZE: u16 = 0x0c;
const QUEUE_SELECT: u16 = 0x0e;
const QUEUE_NOTIFY: u16 = 0x10;
const DEVICE_STATUS: u16 = 0x12;

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

    /// Sets up virtqueue `index` in a queue memory area of `queue` and gives the
    /// device its page number. The legacy interface fixes the queue's size.
    pub fn setup_queue(&self, index: u16) -> Result<Virtqueue<Legacy>, QueueError> {
        let size = self.queue_size(index);
        let queue = Virtqueue::new(*self, index, size)?;
        // The device finds the avail and used rings from the descriptors' page,
        // where `queue`'s layout (the legacy one) puts them; the memory is
        // identity-mapped, so that is its physical page.
        let pfn = queue.addresses().descriptors >> 12;
        // SAFETY: our device's queue registers (`new`'s contract); the queue
        // memory is ours, zeroed, and stays put for good. The kernel image (where
        // it lives) is below 16 TiB, so the page number fits 32 bits.
        unsafe {
            outw(self.base + QUEUE_SELECT, index);
            outl(self.base + QUEUE_PFN, pfn as u32);
        }
        Ok(queue)
    }
}

impl Notify for Legacy {
    fn notify(&self, index: u16) {
        // SAFETY: our device's notify register (`Legacy::new`'s contract): the
        // device looks at the queue.
        unsafe { outw(self.base + QUEUE_NOTIFY, index) };
    }
}
