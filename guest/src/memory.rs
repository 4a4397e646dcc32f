//! The guest's layout: the PVH memory map, less what the guest itself occupies.

use meminit::{Granularity, Layout, LayoutBuilder, LayoutError, NodeId, Pfn, RangeKind};

use crate::paging::{memmap_pool_bytes, own_memmap_block, set_memmap_homes, set_memmap_pool};
use crate::println;
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

/// Builds the layout, setting aside a 2 MiB home for the memmap of each section
/// that has no whole 2 MiB block of usable memory of its own: RAM from the E820 map; the first MiB (firmware data, the
/// start information, the AP trampoline) and the kernel image as reserved RAM;
/// everything else other. `splits` are `(start address, node)` boundaries in
/// address order (from the SRAT; empty: one node), and RAM ranges are cut where
/// the node changes. Under `Granularity::Chunk` there are no homes: a pool for
/// the whole memmap and its page tables is reserved at the top of memory instead
/// or, where `hotplug` is too large for that, a pool for the memmap below it
/// and a bounded one ([`HOT_POOL_SHARE`]) for the region's.
pub fn layout(
    memmap: &[MemmapEntry],
    splits: &[(u64, u32)],
    granularity: Granularity,
    hotplug: Option<(u64, u64)>,
) -> Result<Layout, LayoutError> {
    let build = |memmap: &[MemmapEntry], splits: &[(u64, u32)], homes: &[(u64, u64)]| {
        build(memmap, splits, homes, hotplug)
    };
    let first = build(memmap, splits, &[])?;
    if granularity == Granularity::Chunk {
        set_memmap_homes(&[]);
        let span = memmap_end_bytes(&first);
        // The whole memmap linearly if it fits; else, with hot-pluggable memory
        // beyond the guest's means (a small guest, a large region), the memmap
        // below the region linearly and the region's from a bounded pool.
        let found = memmap_pool(&first, span, span, 0)
            .map(|pool| (pool, span, 0))
            .or_else(|| {
            let (start, end) = hotplug?;
            let linear = start / 4096 * 64;
            let hot_pages = ((end - start) / 4096 * 64)
                .min(first.present_pages() * 4096 / HOT_POOL_SHARE)
                / 4096;
            let pool = memmap_pool(&first, span, linear, hot_pages)?;
            println!(
                "meminit guest: memmap=chunk: the memmap of all {} MiB would not fit; the hot-pluggable region's comes from a pool of {} KiB (1/{HOT_POOL_SHARE} of memory), enough for {} MiB of it in use",
                span >> 20,
                hot_pages * 4,
                (hot_pages * 4096 * 64) >> 20
            );
            Some((pool, linear, hot_pages))
        });
        let Some((pool, linear, hot_pages)) = found else {
            // Too little memory in one piece: the allocator's first populate says so.
            set_memmap_pool(0, 0, 0, 0);
            return Ok(first);
        };
        set_memmap_pool(pool.0, span, linear, hot_pages);
        // Reserving the pool changes no section or end: the memmap stays the same.
        return build(memmap, splits, &[pool]);
    }
    // Only a section where a range of memory starts or ends can lack a whole
    // 2 MiB block of usable memory for its memmap.
    let mut orphans = 0;
    let mut last = usize::MAX;
    for run in first.present_runs(Pfn(0)..Pfn(u64::MAX)) {
        for s in [
            first.section_of(run.start),
            first.section_of(Pfn(run.end.0 - 1)),
        ] {
            if s != last && own_memmap_block(&first, first.section_pfns(s)).is_none() {
                orphans += 1;
            }
            last = s;
        }
    }
    if orphans == 0 {
        set_memmap_homes(&[]);
        return Ok(first);
    }
    // Homes for them: the top 2 MiB of sections, from the highest down, that keep
    // a block of their own below it.
    let mut homes = [0u64; 16];
    let mut found = 0;
    for s in first.memmap_sections().rev() {
        if found == orphans.min(homes.len()) {
            break;
        }
        let Some(own) = own_memmap_block(&first, first.section_pfns(s)) else {
            continue;
        };
        let top = first
            .present_runs(first.section_pfns(s))
            .filter(|r| !r.reserved)
            .filter_map(|r| {
                let block = (r.end.0 / 512) * 512;
                (block >= r.start.0 + 512 && block - 512 > own).then_some(block - 512)
            })
            .last();
        if let Some(block) = top {
            homes[found] = block * 4096;
            found += 1;
        }
    }
    let mut carved = [(0u64, 0u64); 16];
    for (c, &h) in carved.iter_mut().zip(&homes[..found]) {
        *c = (h, h + (2 << 20));
    }
    set_memmap_homes(&homes[..found]);
    build(memmap, splits, &carved[..found])
}

/// The share of the memory present at boot that the pool for hot-pluggable
/// memory's memmap may take, where the whole memmap does not fit: an eighth
/// maps the memmap of eight times the boot memory in use in the region.
const HOT_POOL_SHARE: u64 = 8;

/// The guest maps descriptors at `VMEMMAP_BASE + pfn * 64` from pfn 0 whatever
/// pfn the memmap starts at (QEMU's RAM starts at 0): bytes of that range up to
/// the memmap's end.
fn memmap_end_bytes(layout: &Layout) -> u64 {
    layout.memmap_start().0 * 64 + layout.memmap_bytes()
}

/// Where the chunk-granular memmap's pool goes (for `span` bytes of memmap, the
/// first `linear` mapped linearly, and `hot_pages` for the rest): `[start, end)`
/// at the top of the highest usable run that holds it, 2 MiB-aligned.
fn memmap_pool(layout: &Layout, span: u64, linear: u64, hot_pages: u64) -> Option<(u64, u64)> {
    let bytes = memmap_pool_bytes(span, linear, hot_pages);
    let mut best = None;
    for run in layout
        .present_runs(Pfn(0)..Pfn(u64::MAX))
        .filter(|r| !r.reserved)
    {
        let (start, end) = (run.start.addr(), run.end.addr());
        let Some(base) = end.checked_sub(bytes).map(|b| b & !((2 << 20) - 1)) else {
            continue;
        };
        if base >= start {
            best = Some((base, base + bytes));
        }
    }
    best
}

/// `hotplug`: a byte range of whole sections declared hot-pluggable (a
/// virtio-mem device's region), on the node its start is on.
fn build(
    memmap: &[MemmapEntry],
    splits: &[(u64, u32)],
    homes: &[(u64, u64)],
    hotplug: Option<(u64, u64)>,
) -> Result<Layout, LayoutError> {
    let (kstart, kend) = kernel_image();
    let mut spans = [(0u64, 0u64); 18];
    spans[0] = (0, 0x10_0000);
    spans[1] = (kstart, kend);
    for (slot, &h) in spans[2..].iter_mut().zip(homes) {
        *slot = h;
    }
    let reserved = &spans[..2 + homes.len()];
    let mut b = LayoutBuilder::new();
    for e in memmap {
        let (start, end) = (e.addr, e.addr.saturating_add(e.size));
        if start == end {
            // Some monitors (QEMU's microvm) list empty entries.
            continue;
        }
        if e.kind != 1 {
            // A monitor may list the hot-pluggable region too: it is declared below.
            if !hotplug.is_some_and(|(s, e)| s <= start && end <= e) {
                b.add(start, end, RangeKind::Other, NodeId(0));
            }
            continue;
        }
        // Cut the RAM range at the reserved spans and at node boundaries.
        let mut at = start;
        while at < end {
            let in_reserved = reserved.iter().find(|&&(s, e)| s <= at && at < e);
            let mut stop = end;
            for &(s, e) in reserved {
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
            b.add(at, stop, kind, NodeId(node));
            at = stop;
        }
    }
    if let Some((start, end)) = hotplug {
        b.add(
            start,
            end,
            RangeKind::Hotplug,
            NodeId(node_at(splits, start)),
        );
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
