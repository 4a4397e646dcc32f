//! Virtio over PCI: what transports share (the vendor ID and the device status
//! bits), the split virtqueue ([`queue`]), and the legacy transport through an
//! I/O BAR ([`legacy`], virtio 1.2 §4.1.4.8).
//!
//! This module owns only the shared constants; it uses none of its children
//! (they use it), and it drives no device: that is a device driver's (`balloon`).

pub mod legacy;
pub mod queue;

/// Red Hat's (Qumranet's) PCI vendor ID, which virtio devices carry.
pub const VENDOR: u16 = 0x1af4;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FAILED: u8 = 0x80;
