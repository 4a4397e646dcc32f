//! The guest's layout: the PVH memory map, less what the guest itself occupies.

use meminit::{Layout, LayoutBuilder, LayoutError, RangeKind};

use crate::pvh::MemmapEntry;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image, page tables and boot stack: `[start, end)`.
pub fn kernel_image() -> (u64, u64) {
    // Linker-defined symbols: only their addresses are taken.
    (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    )
}

/// Builds the layout: RAM from the E820 map; the first MiB (firmware data, the
/// start information, the AP trampoline) and the kernel image as reserved RAM;
/// everything else other. `splits` are `(start address, node)` boundaries in
/// address order (from the SRAT; empty: one node), and RAM ranges are cut where
/// the node changes.
pub fn layout(memmap: &[MemmapEntry], splits: &[(u64, u32)]) -> Result<Layout, LayoutError> {
    let (kstart, kend) = kernel_image();
    let reserved = [(0u64, 0x10_0000u64), (kstart, kend)];
    let mut b = LayoutBuilder::new();
    for e in memmap {
        let (start, end) = (e.addr, e.addr.saturating_add(e.size));
        if start == end {
            // Some monitors (QEMU's microvm) list empty entries.
            continue;
        }
        if e.kind != 1 {
            b.add(start, end, RangeKind::Other, 0);
            continue;
        }
        // Cut the RAM range at the reserved spans and at node boundaries.
        let mut at = start;
        while at < end {
            let in_reserved = reserved.iter().find(|&&(s, e)| s <= at && at < e);
            let mut stop = end;
            for &(s, e) in &reserved {
                if s > at {
                    stop = stop.min(s);
                }
                if s <= at && at < e {
                    stop = stop.min(e);
                }
            }
            let node = node_at(splits, at);
            for &(boundary, _) in splits {
                if boundary > at {
                    stop = stop.min(boundary);
                }
            }
            let kind = if in_reserved.is_some() {
                RangeKind::Reserved
            } else {
                RangeKind::Usable
            };
            b.add(at, stop, kind, node);
            at = stop;
        }
    }
    b.build()
}

/// The node of address `addr` given `(start address, node)` boundaries in
/// ascending order; node 0 below the first.
fn node_at(splits: &[(u64, u32)], addr: u64) -> u32 {
    splits
        .iter()
        .take_while(|&&(s, _)| s <= addr)
        .last()
        .map_or(0, |&(_, n)| n)
}
