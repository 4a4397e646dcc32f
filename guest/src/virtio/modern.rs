//! Virtio over PCI's modern interface (virtio 1.0, 4.1.4): the device's
//! registers in memory BARs, found through vendor-specific PCI capabilities.
//!
//! It owns a modern device's transport registers: the common configuration
//! (status, 64 feature bits, queue set-up), the notification area, and the
//! consistent reading of the device-specific configuration (through the
//! configuration generation). It maps each of those structures uncached through
//! `mmio`. It does not interpret the device-specific configuration (that is the
//! driver's, e.g. `virtio_mem`), does not use the ISR or interrupts (drivers
//! poll), and sets up only split virtqueues in `queue`'s memory.

use core::fmt;

use crate::mmio::{self, MapError, Mmio};
use crate::pci::{self, Bar, Function};

use super::queue::{Notify, QueueError, Virtqueue, MAX_QUEUE_SIZE};
use super::{STATUS_FAILED, STATUS_FEATURES_OK};

/// The feature every modern device offers and a modern driver must take.
pub const F_VERSION_1: u64 = 1 << 32;

/// The vendor-specific PCI capability that describes a virtio structure.
const CAP_VENDOR: u8 = 0x09;
/// Its `cfg_type`s (virtio 1.0, 4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
// 3 is the ISR status, which this transport does not use: drivers poll.
const CAP_DEVICE: u8 = 4;

/// Common configuration offsets (virtio 1.0, 4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
/// The common configuration's size: a capability must cover it all.
const COMMON_BYTES: u32 = 0x38;

/// How many times a reset's status is read back before the driver gives up.
const RESET_POLLS: u32 = 1 << 20;

/// Why a modern virtio device could not be driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A required virtio structure has no capability (`what`: common, notify,
    /// device).
    NoCapability { what: &'static str },
    /// A capability points at a BAR that is not an assigned memory range, or
    /// describes a structure too short to hold its registers.
    BadCapability { what: &'static str, bar: u8 },
    /// A structure could not be mapped.
    Map { what: &'static str, error: MapError },
    /// The device kept its status non-zero after a reset.
    ResetTimeout { status: u8 },
    /// The device does not offer `VIRTIO_F_VERSION_1` (not a modern device).
    NoVersion1 { offered: u64 },
    /// The device did not keep `FEATURES_OK` after the driver's features were
    /// written: it refuses that set.
    FeaturesRefused { features: u64 },
    /// A virtqueue could not be set up.
    Queue(QueueError),
    /// A queue's notification address lies outside the notification structure.
    BadNotifyOffset { index: u16, offset: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoCapability { what } => {
                write!(f, "no virtio PCI capability for the {what} configuration")
            }
            Error::BadCapability { what, bar } => write!(
                f,
                "the {what} configuration's capability names BAR {bar}, which is not an assigned memory range large enough for it"
            ),
            Error::Map { what, error } => write!(f, "the {what} configuration: {error}"),
            Error::ResetTimeout { status } => {
                write!(f, "the device's status is still {status:#x} after a reset")
            }
            Error::NoVersion1 { offered } => write!(
                f,
                "the device does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"
            ),
            Error::FeaturesRefused { features } => {
                write!(f, "the device refused the features {features:#x}")
            }
            Error::Queue(e) => write!(f, "{e}"),
            Error::BadNotifyOffset { index, offset } => write!(
                f,
                "virtqueue {index}'s notification address (offset {offset:#x}) is outside the notification structure"
            ),
        }
    }
}

/// A modern virtio device's registers.
#[derive(Clone, Copy, Debug)]
pub struct Modern {
    common: Mmio,
    notify: Mmio,
    notify_multiplier: u32,
    device: Mmio,
}

/// Where one structure lives: BAR, offset, length; and the notify capability's
/// multiplier.
#[derive(Clone, Copy)]
struct Located {
    bar: u8,
    offset: u32,
    length: u32,
    multiplier: u32,
}

impl Modern {
    /// Finds the device's virtio structures through its PCI capabilities, turns
    /// on memory decoding and bus mastering, and maps the structures uncached.
    ///
    /// # Safety
    ///
    /// `at` is a virtio PCI function with the modern interface, whose BARs the
    /// firmware assigned, and this driver alone drives it (it becomes a bus
    /// master that reads and writes the memory its virtqueues point at).
    pub unsafe fn new(at: Function) -> Result<Modern, Error> {
        let mut found: [Option<Located>; 5] = [None; 5];
        for (id, offset) in at.capabilities() {
            if id != CAP_VENDOR || offset > 0xff - 16 {
                continue;
            }
            let kind = at.read8(offset + 3);
            let slot = match found.get_mut(kind as usize) {
                // The first capability of each type is the one to use.
                Some(slot @ None) => slot,
                _ => continue,
            };
            *slot = Some(Located {
                bar: at.read8(offset + 4),
                offset: at.read32(offset + 8),
                length: at.read32(offset + 12),
                multiplier: if kind == CAP_NOTIFY && offset <= 0xff - 20 {
                    at.read32(offset + 16)
                } else {
                    0
                },
            });
        }
        at.enable(pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
        let map = |what, kind: u8, min: u32| -> Result<(Mmio, Located), Error> {
            let loc = found[kind as usize].ok_or(Error::NoCapability { what })?;
            let bad = Error::BadCapability { what, bar: loc.bar };
            let Bar::Memory(base) = at.bar(loc.bar) else {
                return Err(bad);
            };
            if loc.length < min {
                return Err(bad);
            }
            // SAFETY: a structure the device's own capability places inside its
            // memory BAR (registers, not RAM), decoding just enabled; this driver
            // alone drives the device (`new`'s contract).
            let mmio = unsafe { mmio::map(base + loc.offset as u64, loc.length as u64) }
                .map_err(|error| Error::Map { what, error })?;
            Ok((mmio, loc))
        };
        let (common, _) = map("common", CAP_COMMON, COMMON_BYTES)?;
        let (notify, loc) = map("notify", CAP_NOTIFY, 2)?;
        let (device, _) = map("device", CAP_DEVICE, 1)?;
        Ok(Modern {
            common,
            notify,
            notify_multiplier: loc.multiplier,
            device,
        })
    }

    /// Resets the device (status 0) and waits until it reads back 0: it has
    /// forgotten features and queues.
    pub fn reset(&self) -> Result<(), Error> {
        self.common.write8(DEVICE_STATUS, 0);
        for _ in 0..RESET_POLLS {
            if self.status() == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(Error::ResetTimeout {
            status: self.status(),
        })
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.common.read8(DEVICE_STATUS)
    }

    /// Adds `bits` to the device status.
    pub fn add_status(&self, bits: u8) {
        self.common.write8(DEVICE_STATUS, self.status() | bits);
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        let mut features = 0;
        for half in 0..2 {
            self.common.write32(DEVICE_FEATURE_SELECT, half);
            features |= (self.common.read32(DEVICE_FEATURE) as u64) << (32 * half);
        }
        features
    }

    /// Takes `wanted` (with `VIRTIO_F_VERSION_1`) of what the device offers,
    /// writes it, and sets `FEATURES_OK`; returns the features taken. On an
    /// error the device is marked `FAILED`.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, Error> {
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.add_status(STATUS_FAILED);
            return Err(Error::NoVersion1 { offered });
        }
        let features = offered & (wanted | F_VERSION_1);
        for half in 0..2 {
            self.common.write32(DRIVER_FEATURE_SELECT, half);
            self.common
                .write32(DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
        self.add_status(STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.add_status(STATUS_FAILED);
            return Err(Error::FeaturesRefused { features });
        }
        Ok(features)
    }

    /// Sets up virtqueue `index` (as large as the device allows, up to
    /// [`MAX_QUEUE_SIZE`]) in `queue`'s memory, hands the device its rings and
    /// enables it. Call after [`Modern::negotiate`], before `DRIVER_OK`.
    pub fn setup_queue(&self, index: u16) -> Result<Virtqueue<ModernNotify>, Error> {
        let c = &self.common;
        c.write16(QUEUE_SELECT, index);
        let max = c.read16(QUEUE_SIZE);
        if max == 0 {
            return Err(Error::Queue(QueueError::Missing { index }));
        }
        // Split queues have power-of-two sizes: the smaller of two is one too.
        let size = max.min(MAX_QUEUE_SIZE);
        let offset = c.read16(QUEUE_NOTIFY_OFF) as u64 * self.notify_multiplier as u64;
        if !offset.is_multiple_of(2) || offset + 2 > self.notify.len() as u64 {
            return Err(Error::BadNotifyOffset { index, offset });
        }
        let notify = ModernNotify {
            area: self.notify,
            offset: offset as usize,
        };
        let queue = Virtqueue::new(notify, index, size).map_err(Error::Queue)?;
        let rings = queue.addresses();
        c.write16(QUEUE_SIZE, size);
        for (register, addr) in [
            (QUEUE_DESC, rings.descriptors),
            (QUEUE_DRIVER, rings.avail),
            (QUEUE_DEVICE, rings.used),
        ] {
            c.write32(register, addr as u32);
            c.write32(register + 4, (addr >> 32) as u32);
        }
        c.write16(QUEUE_ENABLE, 1);
        Ok(queue)
    }

    /// Reads the device-specific configuration with `read` until the
    /// configuration generation is the same before and after (virtio 1.0,
    /// 4.1.4.3.1): a consistent snapshot, even of fields wider than 32 bits.
    pub fn read_config<T>(&self, read: impl Fn(&DeviceConfig) -> T) -> T {
        loop {
            let before = self.config_generation();
            let value = read(&DeviceConfig(self.device));
            if self.config_generation() == before {
                return value;
            }
        }
    }

    /// The physical address of the common configuration (in a memory BAR).
    pub fn registers(&self) -> u64 {
        self.common.phys()
    }

    /// The configuration generation: it changes whenever the device changes its
    /// configuration (a cheap thing to poll for changes).
    pub fn config_generation(&self) -> u8 {
        self.common.read8(CONFIG_GENERATION)
    }
}

/// The device-specific configuration, read-only, with the access widths the
/// spec allows (64-bit fields as two 32-bit reads).
pub struct DeviceConfig(Mmio);

impl DeviceConfig {
    pub fn read16(&self, offset: usize) -> u16 {
        self.0.read16(offset)
    }

    /// A 64-bit field, low half first (inside [`Modern::read_config`], which
    /// makes the two halves consistent).
    pub fn read64(&self, offset: usize) -> u64 {
        self.0.read32(offset) as u64 | (self.0.read32(offset + 4) as u64) << 32
    }

    /// The structure's length: fields past it are not there.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A modern device's notification register for one queue.
#[derive(Clone, Copy, Debug)]
pub struct ModernNotify {
    area: Mmio,
    offset: usize,
}

impl Notify for ModernNotify {
    fn notify(&self, index: u16) {
        self.area.write16(self.offset, index);
    }
}
