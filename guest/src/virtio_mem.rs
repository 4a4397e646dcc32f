//! The virtio-mem device (virtio 1.2, 5.15): memory the host plugs into, and
//! unplugs from, a region of guest-physical addresses, block by block, on the
//! guest's request.
//!
//! It owns the device: finding it on PCI (modern-only, `1af4:1058`), starting it
//! through the modern transport, reading its configuration, and its one request
//! queue with the four requests (PLUG, UNPLUG, UNPLUG_ALL, STATE), each answered
//! ACK or turned into a typed [`Error`]. It does not decide what to plug or
//! unplug, keeps no account of which blocks are plugged, and never touches the
//! region's memory: that is `mem_hotplug`'s, which drives it.

use core::fmt;

use crate::pci::{self, Function};
use crate::virtio::modern::{self, DeviceConfig, Modern, ModernNotify};
use crate::virtio::queue::{Buffer, QueueError, Virtqueue};
use crate::virtio::{self, VENDOR};

/// A modern-only virtio-mem (0x1040 + device type 24).
pub const DEVICE_ID: u16 = 0x1058;

/// Feature bits (virtio 1.2, 5.15.3).
const F_ACPI_PXM: u64 = 1 << 0;
const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;

/// Configuration offsets (virtio 1.2, 5.15.4).
const BLOCK_SIZE: usize = 0;
const NODE_ID: usize = 8;
const ADDR: usize = 16;
const REGION_SIZE: usize = 24;
const USABLE_REGION_SIZE: usize = 32;
const PLUGGED_SIZE: usize = 40;
const REQUESTED_SIZE: usize = 48;
const CONFIG_BYTES: usize = 56;

/// Request types and response codes (virtio 1.2, 5.15.6).
const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;
const RESP_ACK: u16 = 0;
const RESP_NACK: u16 = 1;
const RESP_BUSY: u16 = 2;
const RESP_ERROR: u16 = 3;

/// How long the device may take to answer one request (UNPLUG_ALL of a large
/// region discards all of it on the host).
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The device's configuration, read consistently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes in one block: the unit of plugging.
    pub block_size: u64,
    /// The region's node (an ACPI proximity domain where that feature was
    /// taken).
    pub node_id: u16,
    /// The region's first guest-physical address (block-aligned).
    pub addr: u64,
    /// The region's size.
    pub region_size: u64,
    /// The part of the region, from its start, where blocks may be plugged now.
    pub usable_region_size: u64,
    /// Bytes plugged.
    pub plugged_size: u64,
    /// Bytes the host wants plugged.
    pub requested_size: u64,
}

/// What a STATE request says of a range of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    Plugged,
    Unplugged,
    Mixed,
}

impl fmt::Display for BlockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockState::Plugged => "plugged",
            BlockState::Unplugged => "unplugged",
            BlockState::Mixed => "mixed",
        })
    }
}

/// A request, as errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Plug { addr: u64, blocks: u16 },
    Unplug { addr: u64, blocks: u16 },
    UnplugAll,
    State { addr: u64, blocks: u16 },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Request::Plug { addr, blocks } => write!(f, "PLUG of {blocks} blocks at {addr:#x}"),
            Request::Unplug { addr, blocks } => {
                write!(f, "UNPLUG of {blocks} blocks at {addr:#x}")
            }
            Request::UnplugAll => f.write_str("UNPLUG_ALL"),
            Request::State { addr, blocks } => {
                write!(f, "STATE of {blocks} blocks at {addr:#x}")
            }
        }
    }
}

/// Why the device could not be started or a request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No virtio-mem device on PCI.
    NoDevice,
    /// The modern transport failed.
    Transport { at: Function, error: modern::Error },
    /// The device's configuration is not one this driver can use.
    BadConfig {
        at: Function,
        why: &'static str,
        value: u64,
    },
    /// The request queue failed.
    Queue { at: Function, error: QueueError },
    /// NACK: the request is not allowed now (a PLUG past the requested size).
    Nack { request: Request },
    /// BUSY: the device cannot do it now; try again later.
    Busy { request: Request },
    /// ERROR: the request was malformed (a range outside the usable region, not
    /// block-aligned, or not all in the opposite state).
    Malformed { request: Request },
    /// The device answered with a code this driver does not know, or wrote less
    /// than a response.
    BadResponse {
        request: Request,
        code: u16,
        written: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice => f.write_str(
                "no virtio-mem device on PCI (QEMU: -m SIZE,maxmem=MAX,slots=1 -object memory-backend-ram,id=vmem0,size=S -device virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=R)",
            ),
            Error::Transport { at, error } => write!(f, "the virtio-mem at {at}: {error}"),
            Error::BadConfig { at, why, value } => {
                write!(f, "the virtio-mem at {at}: {why} ({value:#x})")
            }
            Error::Queue { at, error } => write!(f, "the virtio-mem at {at}: {error}"),
            Error::Nack { request } => write!(f, "{request}: NACK (not allowed now)"),
            Error::Busy { request } => write!(f, "{request}: BUSY (try again later)"),
            Error::Malformed { request } => write!(f, "{request}: ERROR (a malformed request)"),
            Error::BadResponse {
                request,
                code,
                written,
            } => write!(
                f,
                "{request}: unknown response {code} ({written} bytes written)"
            ),
        }
    }
}

/// `struct virtio_mem_req`: the type, padding, and the range (for PLUG, UNPLUG
/// and STATE).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawRequest {
    kind: u16,
    padding: [u16; 3],
    addr: u64,
    blocks: u16,
    padding2: [u16; 3],
}

/// `struct virtio_mem_resp`: the type, padding, and the STATE answer.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawResponse {
    kind: u16,
    padding: [u16; 3],
    state: u16,
}

/// The request and response the device reads and writes: identity-mapped (a
/// static), so their addresses are physical. Taken once, by the one driver.
#[repr(C, align(64))]
struct Slots {
    request: RawRequest,
    response: RawResponse,
}

static SLOTS: spin::Mutex<Slots> = spin::Mutex::new(Slots {
    request: RawRequest {
        kind: 0,
        padding: [0; 3],
        addr: 0,
        blocks: 0,
        padding2: [0; 3],
    },
    response: RawResponse {
        kind: 0,
        padding: [0; 3],
        state: 0,
    },
});

/// A started virtio-mem device.
pub struct VirtioMem {
    at: Function,
    device: Modern,
    queue: Virtqueue<ModernNotify>,
    slots: &'static mut Slots,
    features: u64,
    ticks_per_ms: u64,
}

impl VirtioMem {
    /// The first virtio-mem on PCI.
    pub fn find() -> Option<Function> {
        pci::find(VENDOR, &[DEVICE_ID]).map(|(at, _)| at)
    }

    /// Starts the virtio-mem at `at`: resets it, takes VERSION_1, ACPI_PXM and
    /// UNPLUGGED_INACCESSIBLE where offered (this driver never reads unplugged
    /// memory), sets up its request queue and checks its configuration.
    /// `tsc_hz` bounds the waits.
    pub fn start(at: Function, tsc_hz: u64) -> Result<VirtioMem, Error> {
        let transport = |error| Error::Transport { at, error };
        // SAFETY: `at` answered with virtio-mem's IDs, a modern-only device, and
        // this guest has no other driver for it.
        let device = unsafe { Modern::new(at) }.map_err(transport)?;
        device.reset().map_err(transport)?;
        device.add_status(virtio::STATUS_ACKNOWLEDGE | virtio::STATUS_DRIVER);
        let features = device
            .negotiate(F_ACPI_PXM | F_UNPLUGGED_INACCESSIBLE)
            .map_err(transport)?;
        let fail = |e| {
            device.add_status(virtio::STATUS_FAILED);
            e
        };
        let queue = device.setup_queue(0).map_err(transport).map_err(fail)?;
        let slots = spin::MutexGuard::leak(SLOTS.try_lock().ok_or(Error::Queue {
            at,
            error: QueueError::InUse,
        })?);
        let driver = VirtioMem {
            at,
            device,
            queue,
            slots,
            features,
            ticks_per_ms: (tsc_hz / 1000).max(1),
        };
        driver.check_config().map_err(fail)?;
        device.add_status(virtio::STATUS_DRIVER_OK);
        Ok(driver)
    }

    fn check_config(&self) -> Result<(), Error> {
        let at = self.at;
        let short = self.device.read_config(|c| c.len() < CONFIG_BYTES);
        if short {
            return Err(Error::BadConfig {
                at,
                why: "the device configuration is shorter than virtio-mem's",
                value: CONFIG_BYTES as u64,
            });
        }
        let c = self.config();
        let bad = |why, value| Err(Error::BadConfig { at, why, value });
        if !c.block_size.is_power_of_two() || c.block_size < 4096 {
            return bad(
                "the block size is not a power of two of 4 KiB or more",
                c.block_size,
            );
        }
        if !c.addr.is_multiple_of(c.block_size) || !c.region_size.is_multiple_of(c.block_size) {
            return bad("the region is not made of whole blocks", c.addr);
        }
        if c.addr
            .checked_add(c.region_size)
            .is_none_or(|e| e > 1 << 52)
        {
            return bad("the region ends past the physical address space", c.addr);
        }
        Ok(())
    }

    /// Where the device sits on PCI.
    pub fn function(&self) -> Function {
        self.at
    }

    /// The physical address of its transport registers (mapped uncached).
    pub fn registers(&self) -> u64 {
        self.device.registers()
    }

    /// The features taken (VERSION_1 is bit 32).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Entries in the request queue.
    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    /// The configuration now.
    pub fn config(&self) -> Config {
        self.device.read_config(|c: &DeviceConfig| Config {
            block_size: c.read64(BLOCK_SIZE),
            node_id: c.read16(NODE_ID),
            addr: c.read64(ADDR),
            region_size: c.read64(REGION_SIZE),
            usable_region_size: c.read64(USABLE_REGION_SIZE),
            plugged_size: c.read64(PLUGGED_SIZE),
            requested_size: c.read64(REQUESTED_SIZE),
        })
    }

    /// The configuration generation: it changes with every configuration change
    /// (a new requested size, a grown usable region).
    pub fn generation(&self) -> u8 {
        self.device.config_generation()
    }

    /// Plugs `blocks` blocks from `addr` (block-aligned, all unplugged).
    pub fn plug(&mut self, addr: u64, blocks: u16) -> Result<(), Error> {
        self.send(REQ_PLUG, Request::Plug { addr, blocks }, addr, blocks)
            .map(|_| ())
    }

    /// Unplugs `blocks` blocks from `addr` (block-aligned, all plugged). Their
    /// content is gone; with UNPLUGGED_INACCESSIBLE they must not be touched.
    pub fn unplug(&mut self, addr: u64, blocks: u16) -> Result<(), Error> {
        self.send(REQ_UNPLUG, Request::Unplug { addr, blocks }, addr, blocks)
            .map(|_| ())
    }

    /// Unplugs every block of the region.
    pub fn unplug_all(&mut self) -> Result<(), Error> {
        self.send(REQ_UNPLUG_ALL, Request::UnplugAll, 0, 0)
            .map(|_| ())
    }

    /// Whether the `blocks` blocks from `addr` are plugged, unplugged or mixed.
    pub fn state(&mut self, addr: u64, blocks: u16) -> Result<BlockState, Error> {
        let request = Request::State { addr, blocks };
        let code = self.send(REQ_STATE, request, addr, blocks)?;
        match code {
            0 => Ok(BlockState::Plugged),
            1 => Ok(BlockState::Unplugged),
            2 => Ok(BlockState::Mixed),
            _ => Err(Error::BadResponse {
                request,
                code,
                written: 0,
            }),
        }
    }

    /// Sends one request and waits for its response; returns the STATE field.
    fn send(&mut self, kind: u16, request: Request, addr: u64, blocks: u16) -> Result<u16, Error> {
        self.slots.request = RawRequest {
            kind,
            padding: [0; 3],
            addr,
            blocks,
            padding2: [0; 3],
        };
        self.slots.response = RawResponse {
            kind: u16::MAX,
            padding: [0; 3],
            state: u16::MAX,
        };
        // The slots are a static in the identity-mapped image: their addresses
        // are physical.
        let chain = [
            Buffer {
                addr: core::ptr::addr_of!(self.slots.request) as u64,
                len: core::mem::size_of::<RawRequest>() as u32,
                device_writes: false,
            },
            Buffer {
                addr: core::ptr::addr_of!(self.slots.response) as u64,
                len: core::mem::size_of::<RawResponse>() as u32,
                device_writes: true,
            },
        ];
        let written = self
            .queue
            .post_and_wait(
                &chain,
                REQUEST_TIMEOUT_MS * self.ticks_per_ms,
                self.ticks_per_ms,
            )
            .map_err(|error| Error::Queue { at: self.at, error })?;
        // SAFETY: the response slot is ours and the device has returned the
        // request (its writes are ordered before the used index the queue read
        // with Acquire); volatile, as the compiler did not see the device write.
        let response = unsafe { core::ptr::addr_of!(self.slots.response).read_volatile() };
        match response.kind {
            _ if (written as usize) < core::mem::size_of::<u16>() => Err(Error::BadResponse {
                request,
                code: response.kind,
                written,
            }),
            RESP_ACK => Ok(response.state),
            RESP_NACK => Err(Error::Nack { request }),
            RESP_BUSY => Err(Error::Busy { request }),
            RESP_ERROR => Err(Error::Malformed { request }),
            code => Err(Error::BadResponse {
                request,
                code,
                written,
            }),
        }
    }
}
