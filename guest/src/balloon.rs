//! The virtio-balloon device's free page reporting (`VIRTIO_BALLOON_F_REPORTING`):
//! the guest tells its host which memory is free, and the host discards it (QEMU:
//! `-device virtio-balloon-pci,disable-modern=on,free-page-reporting=on`); a
//! later access by the guest sees zeroed memory.
//!
//! It owns the balloon device: finding it on PCI, negotiating the one feature it
//! uses, and the reporting virtqueue. It never inflates or deflates the balloon,
//! and it does not decide what is free: its caller (the allocator's reporting
//! hook) must hand it only memory no one uses until the report returns.

use core::fmt;

use crate::pci::{self, Bar};
use crate::virtio::legacy::Legacy;
use crate::virtio::queue::{Buffer, QueueError, Virtqueue};
use crate::virtio::{self, VENDOR as VIRTIO_VENDOR};
/// The balloon's device ID on the legacy (and transitional) interface.
const LEGACY_BALLOON: u16 = 0x1002;
/// Its ID on a modern-only device (virtio 1.0: 0x1040 + device type 5).
const MODERN_BALLOON: u16 = 0x1045;

/// Feature bits (virtio 1.2, 5.5.3).
const F_STATS_VQ: u32 = 1 << 1;
const F_FREE_PAGE_HINT: u32 = 1 << 3;
const F_REPORTING: u32 = 1 << 5;

/// How long the host may take to return one report.
const REPORT_TIMEOUT_MS: u64 = 5_000;

/// Why free memory could not be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No virtio-balloon device on PCI.
    NoDevice,
    /// A modern-only balloon (device ID 0x1045), whose legacy I/O interface this
    /// driver needs.
    ModernOnly { at: pci::Function },
    /// The device's BAR 0 is not an assigned I/O range.
    NoIoBar { at: pci::Function },
    /// The device does not offer free page reporting.
    NoReporting { at: pci::Function, features: u32 },
    /// Its reporting virtqueue could not be set up or used.
    Queue {
        at: pci::Function,
        error: QueueError,
    },
    /// A range to report is not 4 KiB-aligned, or is empty.
    BadRange { addr: u64, bytes: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice => f.write_str(
                "no virtio-balloon device on PCI (QEMU: -device virtio-balloon-pci,disable-modern=on,free-page-reporting=on)",
            ),
            Error::ModernOnly { at } => write!(
                f,
                "the virtio-balloon at {at} is modern-only (device 0x{MODERN_BALLOON:04x}); this guest drives the legacy interface: leave disable-legacy off"
            ),
            Error::NoIoBar { at } => {
                write!(f, "the virtio-balloon at {at} has no I/O range in BAR 0")
            }
            Error::NoReporting { at, features } => write!(
                f,
                "the virtio-balloon at {at} does not offer free page reporting (features {features:#x}; QEMU: free-page-reporting=on)"
            ),
            Error::Queue { at, error } => {
                write!(f, "the virtio-balloon at {at}: reporting virtqueue: {error}")
            }
            Error::BadRange { addr, bytes } => write!(
                f,
                "cannot report {bytes} bytes at {addr:#x}: ranges must be whole, non-empty 4 KiB pages below 2^64"
            ),
        }
    }
}

/// A started balloon device, ready to report free memory.
pub struct Balloon {
    at: pci::Function,
    queue: Virtqueue<Legacy>,
    ticks_per_ms: u64,
}

impl Balloon {
    /// Finds the balloon on PCI and starts it with free page reporting alone
    /// (and the statistics queue where offered, which fixes the reporting queue's
    /// index; it is never used). `tsc_hz` bounds the waits.
    pub fn start(tsc_hz: u64) -> Result<Balloon, Error> {
        let (at, id) =
            pci::find(VIRTIO_VENDOR, &[LEGACY_BALLOON, MODERN_BALLOON]).ok_or(Error::NoDevice)?;
        if id == MODERN_BALLOON {
            return Err(Error::ModernOnly { at });
        }
        let Bar::Io(port) = at.bar(0) else {
            return Err(Error::NoIoBar { at });
        };
        at.enable(pci::COMMAND_IO | pci::COMMAND_BUS_MASTER);
        // SAFETY: BAR 0 of a legacy virtio device, I/O decoding just enabled; this
        // guest has no other driver for it.
        let device = unsafe { Legacy::new(port) };
        device.reset();
        device.add_status(virtio::STATUS_ACKNOWLEDGE | virtio::STATUS_DRIVER);
        let offered = device.host_features();
        if offered & F_REPORTING == 0 {
            device.add_status(virtio::STATUS_FAILED);
            return Err(Error::NoReporting {
                at,
                features: offered,
            });
        }
        device.set_guest_features(F_REPORTING | (offered & F_STATS_VQ));
        // The queues are numbered inflate 0, deflate 1, then statistics, free page
        // hints and reporting, each where it exists. QEMU creates the statistics
        // queue always and the hint queue where it offers hints, and Linux, which
        // takes both when offered, numbers them the same: reporting follows them.
        let index =
            2 + u16::from(offered & F_STATS_VQ != 0) + u16::from(offered & F_FREE_PAGE_HINT != 0);
        let queue = device.setup_queue(index).map_err(|error| {
            device.add_status(virtio::STATUS_FAILED);
            Error::Queue { at, error }
        })?;
        device.add_status(virtio::STATUS_DRIVER_OK);
        Ok(Balloon {
            at,
            queue,
            ticks_per_ms: (tsc_hz / 1000).max(1),
        })
    }

    /// Where the device sits on PCI.
    pub fn function(&self) -> pci::Function {
        self.at
    }

    /// Reports `ranges` (`(guest-physical address, bytes)`, whole 4 KiB pages) as
    /// free to the host, as many per request as the queue has descriptors, and
    /// waits until the host has returned each request: then the host has
    /// discarded them, and the guest must not expect their content back.
    pub fn report(&mut self, ranges: &[(u64, u64)]) -> Result<(), Error> {
        const MAX_PIECE: u64 = 1 << 31;
        let mut chain = [(0u64, 0u32); 256];
        let room = (self.queue.size() as usize).min(chain.len());
        let mut n = 0;
        for &(addr, bytes) in ranges {
            let end = addr.checked_add(bytes);
            if bytes == 0 || addr % 4096 != 0 || bytes % 4096 != 0 || end.is_none() {
                return Err(Error::BadRange { addr, bytes });
            }
            let end = end.unwrap_or(addr);
            // A descriptor's length is 32 bits: longer ranges go in pieces.
            let mut at = addr;
            while at < end {
                let piece = (end - at).min(MAX_PIECE);
                chain[n] = (at, piece as u32);
                n += 1;
                at += piece;
                if n == room {
                    self.send(&chain[..n])?;
                    n = 0;
                }
            }
        }
        if n > 0 {
            self.send(&chain[..n])?;
        }
        Ok(())
    }

    fn send(&mut self, chain: &[(u64, u32)]) -> Result<(), Error> {
        // The host takes reported pages as device-writable buffers (QEMU reads
        // the element's `in_sg`, Linux posts them with `virtqueue_add_inbuf`).
        let mut buffers = [Buffer {
            addr: 0,
            len: 0,
            device_writes: true,
        }; 256];
        for (b, &(addr, len)) in buffers.iter_mut().zip(chain) {
            (b.addr, b.len) = (addr, len);
        }
        self.queue
            .post_and_wait(
                &buffers[..chain.len().min(256)],
                REPORT_TIMEOUT_MS * self.ticks_per_ms,
                self.ticks_per_ms,
            )
            .map(|_| ())
            .map_err(|error| Error::Queue { at: self.at, error })
    }
}
