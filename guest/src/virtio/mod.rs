//! Virtio over PCI: what both transports share (the vendor ID and the device
//! status bits), the split virtqueue ([`queue`]), and the two transports: the
//! legacy interface through an I/O BAR ([`legacy`], virtio 0.9.5 / 1.2 §4.1.4.8)
//! and the modern one through PCI capabilities and memory BARs ([`modern`], virtio
//! 1.0 §4.1.4).
//!
//! This module owns only the shared constants; it uses none of its children
//! (they use it), and it drives no device: that is a device driver's (`balloon`,
//! `virtio_mem`).

pub mod legacy;
pub mod modern;
pub mod queue;

/// Red Hat's (Qumranet's) PCI vendor ID, which virtio devices carry.
pub const VENDOR: u16 = 0x1af4;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_FAILED: u8 = 0x80;
