//! The split virtqueue (virtio 1.2, 2.7), independent of the transport.
//!
//! It owns the queues' memory: a few static, page-aligned areas inside the kernel
//! image, each taken once by one queue, whose virtual address is their physical
//! address (the image is identity-mapped), so a device reads the rings where the
//! guest wrote them. The rings are laid out as the legacy interface wants them
//! (descriptors, avail ring, then the used ring on the next 4 KiB), which also
//! meets the modern interface's alignments, so either transport can hand the
//! device their addresses. It tells the device about new buffers through the
//! transport's [`Notify`], and never programs a device's registers itself; it
//! never touches the memory a buffer points at. One request is in flight at a
//! time: a chain is posted, then waited for (by polling: no interrupts).

use core::fmt;
use core::sync::atomic::{fence, Ordering};

/// Descriptor flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Avail-ring flag: the driver polls and wants no interrupt.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The used ring's alignment in this layout (the legacy interface's).
const USED_ALIGN: usize = 4096;
/// Room for one virtqueue: a queue of up to 256 entries fits.
const QUEUE_BYTES: usize = 4 * 4096;
/// The largest queue this memory holds: a modern device's larger queues are
/// shrunk to it, a legacy device's (whose size is fixed) are refused.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Queues this guest can set up in all (one per driver: balloon, virtio-mem).
const QUEUES: usize = 2;

/// Why a virtqueue could not be set up or used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The device has no queue at this index (its size reads 0).
    Missing { index: u16 },
    /// The device's queue is larger than the memory set aside for one.
    TooLarge { index: u16, size: u16 },
    /// Every queue memory area is already in use by another virtqueue.
    InUse,
    /// A request had more buffers than the queue has descriptors, or none.
    BadChain { buffers: usize, size: u16 },
    /// The device did not return a request within the time allowed.
    Timeout { index: u16, waited_ms: u64 },
    /// The device returned a descriptor that was not the one posted.
    WrongId { expected: u16, got: u32 },
    /// An earlier request timed out and may still be in the device's hands: its
    /// descriptors cannot be reused, so the queue takes no more.
    Stuck { index: u16 },
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
            QueueError::InUse => write!(
                f,
                "all {QUEUES} virtqueue memory areas are in use (one per driver)"
            ),
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
            QueueError::Stuck { index } => write!(
                f,
                "virtqueue {index} takes no more requests: an earlier one timed out and may still be in flight"
            ),
        }
    }
}

/// How a transport tells its device that a queue has new buffers.
pub trait Notify {
    /// Notifies the device that virtqueue `index` has new available buffers.
    fn notify(&self, index: u16);
}

/// One buffer of a request: guest-physical address, length, and whether the
/// device writes it (a response) or reads it (a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// Where the device finds a queue's three parts (guest-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddresses {
    pub descriptors: u64,
    pub avail: u64,
    pub used: u64,
}

#[repr(C, align(4096))]
struct QueueMemory([u8; QUEUE_BYTES]);

/// The memory of the virtqueues this guest drives; each taken once, for good.
static QUEUE_MEMORY: [spin::Mutex<QueueMemory>; QUEUES] =
    [const { spin::Mutex::new(QueueMemory([0; QUEUE_BYTES])) }; QUEUES];

/// One descriptor, as the device reads it.
#[repr(C)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue in one of this module's memory areas, notified through `N`.
pub struct Virtqueue<N: Notify> {
    notify: N,
    index: u16,
    size: u16,
    /// The queue memory (identity-mapped: its address is its physical address).
    base: *mut u8,
    used_offset: usize,
    /// The avail ring's index the driver publishes next.
    avail_idx: u16,
    /// The used ring's index up to which the driver has consumed.
    used_idx: u16,
    /// A request timed out: the device may still own its descriptors.
    stuck: bool,
}

impl<N: Notify> Virtqueue<N> {
    /// Lays out virtqueue `index` of `size` entries in a free memory area, zeroed,
    /// with interrupts suppressed. The transport then hands the device
    /// [`Virtqueue::addresses`] and enables the queue. The area stays taken even
    /// if the transport then fails (a driver sets up its queues once).
    pub fn new(notify: N, index: u16, size: u16) -> Result<Virtqueue<N>, QueueError> {
        if size == 0 {
            return Err(QueueError::Missing { index });
        }
        let n = size as usize;
        let used_offset = (16 * n + 6 + 2 * n).next_multiple_of(USED_ALIGN);
        if size > MAX_QUEUE_SIZE || used_offset + 6 + 8 * n > QUEUE_BYTES {
            return Err(QueueError::TooLarge { index, size });
        }
        let guard = QUEUE_MEMORY
            .iter()
            .find_map(|m| m.try_lock())
            .ok_or(QueueError::InUse)?;
        let memory = spin::MutexGuard::leak(guard);
        memory.0.fill(0);
        let base = memory.0.as_mut_ptr();
        // SAFETY: the avail ring's flags lie inside the queue memory, which this
        // queue owns from here on (the guard is leaked); no device knows it yet.
        unsafe {
            base.add(16 * n)
                .cast::<u16>()
                .write_volatile(AVAIL_F_NO_INTERRUPT)
        };
        Ok(Virtqueue {
            notify,
            index,
            size,
            base,
            used_offset,
            avail_idx: 0,
            used_idx: 0,
            stuck: false,
        })
    }

    /// The guest-physical addresses of the descriptor table, the avail ring and
    /// the used ring (the legacy interface takes the first, as a page number, and
    /// finds the others from it).
    pub fn addresses(&self) -> RingAddresses {
        // Identity-mapped: the address is the physical address.
        let base = self.base as u64;
        RingAddresses {
            descriptors: base,
            avail: base + 16 * self.size as u64,
            used: base + self.used_offset as u64,
        }
    }

    /// Descriptors in the queue: the most buffers one request may have.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Posts `chain` as one request, notifies the device, and waits until it has
    /// returned the request or `timeout_ticks` of the TSC have passed
    /// (`ticks_per_ms` to say how long that was). Returns the bytes the device
    /// says it wrote into the chain's device-writable buffers.
    ///
    /// The buffers must stay put, and device-writable ones untouched by the
    /// guest, until this returns; a buffer's memory is the caller's business.
    /// After a timeout the queue refuses every later request
    /// ([`QueueError::Stuck`]): the device may still be working on the last one.
    pub fn post_and_wait(
        &mut self,
        chain: &[Buffer],
        timeout_ticks: u64,
        ticks_per_ms: u64,
    ) -> Result<u32, QueueError> {
        if self.stuck {
            return Err(QueueError::Stuck { index: self.index });
        }
        let n = chain.len();
        if n == 0 || n > self.size as usize {
            return Err(QueueError::BadChain {
                buffers: n,
                size: self.size,
            });
        }
        let size = self.size as usize;
        let descriptors = self.base.cast::<Descriptor>();
        for (i, b) in chain.iter().enumerate() {
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: descriptor `i < size` lies in the queue memory we own; the
            // device reads descriptors only once they are published below, and
            // the previous request was returned, so it reads none now.
            unsafe {
                descriptors.add(i).write_volatile(Descriptor {
                    addr: b.addr,
                    len: b.len,
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
        // look (a store then a port or MMIO write; pairs with the device's read
        // on notify).
        fence(Ordering::SeqCst);
        self.notify.notify(self.index);

        let used = self.base.wrapping_add(self.used_offset).cast::<u16>();
        let start = crate::tsc::now();
        loop {
            // SAFETY: the used ring's idx, in our queue memory; the device writes
            // it, hence the volatile read.
            let idx = unsafe { used.add(1).read_volatile() };
            if idx != self.used_idx {
                // Acquire: pairs with the device's write of used->idx after the
                // element (and after the data it wrote into the buffers); both
                // are read after the index.
                fence(Ordering::Acquire);
                let slot = self.used_idx as usize % size;
                let element = used.wrapping_add(2).cast::<u32>().wrapping_add(2 * slot);
                // SAFETY: used-ring element `slot < size` (8 bytes: id, len; after
                // flags and idx) lies in our queue memory.
                let (id, len) =
                    unsafe { (element.read_volatile(), element.add(1).read_volatile()) };
                self.used_idx = self.used_idx.wrapping_add(1);
                if id != 0 {
                    return Err(QueueError::WrongId {
                        expected: 0,
                        got: id,
                    });
                }
                return Ok(len);
            }
            let waited = crate::tsc::now() - start;
            if waited > timeout_ticks {
                self.stuck = true;
                return Err(QueueError::Timeout {
                    index: self.index,
                    waited_ms: waited / ticks_per_ms.max(1),
                });
            }
            core::hint::spin_loop();
        }
    }
}
