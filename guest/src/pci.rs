//! PCI configuration space through the legacy configuration ports (`0xCF8`
//! address, `0xCFC` data), the enumeration that finds a device by its IDs, and
//! the walk of a function's capability list.
//!
//! It owns those two ports and nothing else: it reads and writes configuration
//! registers, never a device's own registers (that is its driver's), and assigns no
//! BARs (the firmware QEMU runs before a PVH kernel has assigned them).

use core::fmt;

use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Where a function sits on the PCI bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The configuration-space offset of the command register.
const COMMAND: u8 = 0x04;
/// Command bits: I/O space, memory space, bus master.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status bit: the function has a capability list.
const STATUS_CAPABILITIES: u32 = 1 << 4;
/// The configuration-space offset of the capability list's head.
const CAPABILITIES_POINTER: u8 = 0x34;

/// A BAR, as read from configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// An I/O port range starting here.
    Io(u16),
    /// A memory range at this physical address.
    Memory(u64),
    /// Not assigned (zero), or not there.
    Unassigned,
}

/// Lock that keeps one CPU's address/data pair from interleaving with another's.
static CONFIG_LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn address(f: Function, offset: u8) -> u32 {
    0x8000_0000
        | (f.bus as u32) << 16
        | ((f.device & 0x1f) as u32) << 11
        | ((f.function & 0x7) as u32) << 8
        | (offset & 0xfc) as u32
}

impl Function {
    /// Reads the 32-bit configuration register at `offset` (rounded down to 4).
    pub fn read32(self, offset: u8) -> u32 {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: the configuration mechanism #1 ports, which every PC chipset
        // QEMU emulates has; the lock keeps the address/data pair together.
        unsafe {
            outl(CONFIG_ADDRESS, address(self, offset));
            inl(CONFIG_DATA)
        }
    }

    /// Writes the 32-bit configuration register at `offset` (rounded down to 4).
    pub fn write32(self, offset: u8, value: u32) {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: as in `read32`; writing configuration space changes only this
        // function's configuration, which its caller (the driver) owns.
        unsafe {
            outl(CONFIG_ADDRESS, address(self, offset));
            outl(CONFIG_DATA, value)
        }
    }

    /// The byte of configuration space at `offset`.
    pub fn read8(self, offset: u8) -> u8 {
        (self.read32(offset) >> (8 * (offset & 3))) as u8
    }

    /// Vendor and device ID; `None` when no function answers here.
    pub fn ids(self) -> Option<(u16, u16)> {
        let v = self.read32(0);
        let vendor = v as u16;
        (vendor != 0xffff && vendor != 0).then_some((vendor, (v >> 16) as u16))
    }

    /// BAR `index` (0..6). A 64-bit memory BAR takes its high half from the next.
    pub fn bar(self, index: u8) -> Bar {
        if index >= 6 {
            return Bar::Unassigned;
        }
        let low = self.read32(0x10 + 4 * index);
        if low & 1 == 1 {
            match (low & !0x3) as u16 {
                0 => Bar::Unassigned,
                port => Bar::Io(port),
            }
        } else {
            let high = if (low >> 1) & 0x3 == 2 && index < 5 {
                self.read32(0x10 + 4 * (index + 1)) as u64
            } else {
                0
            };
            match (high << 32) | (low & !0xf) as u64 {
                0 => Bar::Unassigned,
                addr => Bar::Memory(addr),
            }
        }
    }

    /// Sets `bits` in the command register (I/O, memory, bus master).
    pub fn enable(self, bits: u16) {
        let v = self.read32(COMMAND);
        // The status register above it is write-one-to-clear: write zeros there.
        self.write32(COMMAND, (v & 0xffff) | bits as u32);
    }

    /// The function's capabilities, as `(ID, configuration-space offset)`, in
    /// list order (at most 48: a list that loops ends there).
    pub fn capabilities(self) -> Capabilities {
        let next = if self.read32(COMMAND) >> 16 & STATUS_CAPABILITIES != 0 {
            self.read8(CAPABILITIES_POINTER) & 0xfc
        } else {
            0
        };
        Capabilities {
            function: self,
            next,
            left: 48,
        }
    }

    fn is_multifunction(self) -> bool {
        (self.read32(0x0c) >> 16) & 0x80 != 0
    }
}

/// An iterator over a function's capability list ([`Function::capabilities`]).
pub struct Capabilities {
    function: Function,
    next: u8,
    left: u8,
}

impl Iterator for Capabilities {
    type Item = (u8, u8);

    fn next(&mut self) -> Option<(u8, u8)> {
        // Capabilities live above the standard header (0x40 and up).
        if self.next < 0x40 || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let at = self.next;
        let head = self.function.read32(at);
        self.next = (head >> 8) as u8 & 0xfc;
        Some((head as u8, at))
    }
}

/// The first function, in bus order, whose vendor is `vendor` and whose device ID
/// is one of `devices`, with the device ID found.
pub fn find(vendor: u16, devices: &[u16]) -> Option<(Function, u16)> {
    for bus in 0..=255u8 {
        for device in 0..32u8 {
            let f0 = Function {
                bus,
                device,
                function: 0,
            };
            if f0.ids().is_none() {
                continue;
            }
            let functions = if f0.is_multifunction() { 8 } else { 1 };
            for function in 0..functions {
                let f = Function { function, ..f0 };
                if let Some((v, d)) = f.ids() {
                    if v == vendor && devices.contains(&d) {
                        return Some((f, d));
                    }
                }
            }
        }
    }
    None
}
