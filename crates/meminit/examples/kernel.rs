//! meminit embedded the way a kernel embeds its page allocator, runnable on a
//! Linux host (`cargo run -p meminit --example kernel`; `cargo test` runs it too).
//!
//! The "machine" is two NUMA nodes with a hole and a reserved range. Its physical
//! memory is a `memfd` (page frame `p` is the file's page `p`), and the memmap
//! lives where a kernel's vmemmap lives: a reserved virtual range, indexed by pfn
//! from the first section with memory, mapped section by section *with the
//! section's own pages*, taken from the [`PageSource`] the allocator lends to
//! `populate` (Linux's "memmap on memory"). The mapping itself is done the way a
//! kernel would: one page-table page (also from the source) receives a PTE per
//! memmap page; here the host's MMU then performs the translation, told with
//! `mmap(MAP_FIXED)` of the same file pages. Everything else is what a kernel
//! writes:
//!
//! - the allocator itself, the section slots and the per-CPU caches are plain
//!   `static`s (an `AllocatorCell`), the lock a spin lock (`spin`) made
//!   interrupt-safe by `IrqSafe` over the kernel's interrupt control;
//! - start-up is in place (`AllocatorCell::build`), on a 16 KiB stack, the
//!   memory map validated straight into the allocator, the vmemmap sized from
//!   the layout once it is known;
//! - deferred workers run per node, on threads standing for that node's CPUs;
//! - an "interrupt handler" allocates with `AllocFlags::NO_GROW`, a NUMA-bound
//!   task with `THIS_NODE`, a page-table allocation with `ZEROED` (the backing
//!   zeroes through its direct map of physical memory);
//! - the kernel keeps its own per-page data (`PageMeta`) in each descriptor;
//! - free page reporting hands free memory back to the "host" by punching holes
//!   in the memfd, as a hypervisor discards reported guest memory.

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use meminit::{
    AllocFlags, AllocRequest, Allocator, AllocatorCell, BackingError, Config, CpuCache, CpuId,
    FreeReporter, FreeRequest, Interrupts, IrqSafe, Layout, LayoutBuilder, MemmapBacking,
    MemmapPiece, NodeId, Page, PageMeta, PageSource, Pfn, Populated, RangeKind, ReportError,
    SectionSlot, Strategy, PAGE_SIZE,
};

/// The kernel's interrupt control. A host thread has none to turn off; a kernel
/// reads and clears the interrupt flag here, and sets it again in `restore`.
struct Cpu;

impl Interrupts for Cpu {
    fn disable() -> bool {
        false
    }
    fn restore(_was_on: bool) {}
}

type Lock = IrqSafe<spin::mutex::SpinMutex<()>, Cpu>;
type KernelAllocator = Allocator<'static, Vmemmap, Lock>;

/// The page allocator, in the kernel's image.
static PAGES: AllocatorCell<Vmemmap, Lock> = AllocatorCell::new();

const MIB: u64 = 1 << 20;
/// 16 MiB sections, so that the example's machine has several (a kernel keeps
/// Linux's 128 MiB).
const SECTION: u64 = 16 * MIB;
/// The machine's physical address space: 96 MiB.
const PHYS: u64 = 96 * MIB;
/// Sections of memmap, from the first with memory: enough for `PHYS`.
const SECTIONS: usize = (PHYS / SECTION) as usize;
const CPUS: usize = 4;

/// The section states and the per-CPU caches: statics, as in a kernel.
static SLOTS: [SectionSlot; SECTIONS] = [const { SectionSlot::new() }; SECTIONS];
static CACHES: [CpuCache<Lock>; CPUS] = [const { CpuCache::new() }; CPUS];

/// What this kernel keeps per page, in the descriptor's embedder part.
#[repr(C)]
struct KernelPage {
    refcount: AtomicU32,
    flags: AtomicU32,
    mapping: AtomicU64,
}

// SAFETY: atomic integers only (any bit pattern is valid, all access atomic);
// 16 bytes, 8-byte aligned.
unsafe impl PageMeta for KernelPage {}

/// The machine's memory map, as firmware would describe it.
fn memory_map() -> LayoutBuilder {
    let mut map = LayoutBuilder::new();
    map.section_size(SECTION)
        // Node 0: low memory with the legacy hole, then up to 40 MiB, with a
        // firmware reservation inside usable memory (memblock allows that).
        .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
        .add(MIB, 40 * MIB, RangeKind::Usable, NodeId(0))
        .add(20 * MIB, 20 * MIB + 0x4000, RangeKind::Reserved, NodeId(0))
        // A hole from 40 to 48 MiB, then node 1.
        .add(48 * MIB, PHYS, RangeKind::Usable, NodeId(1));
    map
}

/// The memmap backing: physical memory is a memfd, the vmemmap a reserved range.
struct Vmemmap {
    /// The physical memory (a memfd of `PHYS` bytes).
    phys: libc::c_int,
    /// The kernel's direct map of physical memory (the memfd mapped whole).
    direct: *mut u8,
    /// The vmemmap: reserved address space, `PROT_NONE` until populated.
    base: *mut u8,
    /// The pfn whose descriptor is at `base`.
    first: u64,
    /// Page-table pages written, memmap pages mapped.
    tables: AtomicU64,
    mapped: AtomicU64,
}

// SAFETY: the raw pointers are to mappings this backing owns for its life; the
// allocator is the only user of the vmemmap, and the direct map is written only
// for pages the allocator hands to `populate`, `accept` or `zero`.
unsafe impl Sync for Vmemmap {}
// SAFETY: as above.
unsafe impl Send for Vmemmap {}

fn os_error(what: &'static str) -> BackingError {
    BackingError {
        section: 0,
        reason: what,
    }
}

impl Vmemmap {
    /// A vmemmap for the descriptors of pfns `first..` over `bytes`.
    fn new(first: Pfn, bytes: u64) -> std::io::Result<Vmemmap> {
        // SAFETY: plain system calls; results are checked.
        unsafe {
            let phys = libc::memfd_create(c"meminit-example-ram".as_ptr(), 0);
            if phys < 0 || libc::ftruncate(phys, PHYS as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let direct = libc::mmap(
                std::ptr::null_mut(),
                PHYS as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                phys,
                0,
            );
            let base = libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if direct == libc::MAP_FAILED || base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Vmemmap {
                phys,
                direct: direct.cast(),
                base: base.cast(),
                first: first.0,
                tables: AtomicU64::new(0),
                mapped: AtomicU64::new(0),
            })
        }
    }

    /// The direct-map address of `pfn`.
    fn phys(&self, pfn: Pfn) -> *mut u8 {
        self.direct.wrapping_add((pfn.0 * PAGE_SIZE) as usize)
    }
}

// SAFETY: `descriptors` is the start of one reservation of `memmap_bytes`,
// page-aligned; a piece is made accessible only by mapping physical pages there
// (and stays so: this backing never depopulates, its memmap lives in the
// section's own pages, which the allocator keeps reserved); it takes pages only
// through the source.
unsafe impl MemmapBacking for Vmemmap {
    fn descriptors(&self) -> NonNull<Page> {
        NonNull::new(self.base.cast()).expect("mmap never returns null")
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        _: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        let bytes = piece.memmap_bytes();
        let memmap_pages = bytes / PAGE_SIZE;
        // The memmap of the section, from the section itself...
        let order = memmap_pages.trailing_zeros();
        let memmap = pages.take(order).map_err(|_| BackingError {
            section: piece.section,
            reason: "no room in the section for its memmap",
        })?;
        // ... and one page-table page for the PTEs that map it.
        let table = pages.take(0).map_err(|_| BackingError {
            section: piece.section,
            reason: "no room in the section for a page table",
        })?;
        let ptes = self.phys(table).cast::<u64>();
        for i in 0..memmap_pages {
            // Present | writable | the frame: what a kernel's PTE says.
            let pte = ((memmap.0 + i) * PAGE_SIZE) | 0b11;
            // SAFETY: `table` is a page of physical memory the source gave this
            // call alone; 512 PTEs fit in it and `memmap_pages` is at most 512.
            unsafe { ptes.add(i as usize).write(pte) };
        }
        self.tables.fetch_add(1, Relaxed);
        // The host's MMU does the walk: map those frames at the descriptors'
        // virtual address.
        let virt = self
            .base
            .wrapping_add(((piece.start.0 - self.first) * size_of::<Page>() as u64) as usize);
        // SAFETY: `virt..virt + bytes` lies in the vmemmap reservation (the
        // piece is a section of the layout); the frames are the source's.
        let got = unsafe {
            libc::mmap(
                virt.cast(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.phys,
                (memmap.0 * PAGE_SIZE) as libc::off_t,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(os_error("mmap of the memmap failed"));
        }
        self.mapped.fetch_add(memmap_pages, Relaxed);
        // The source's pages are recorded by the allocator itself.
        Ok(Populated::ELSEWHERE)
    }

    fn zero(&self, pages: Range<Pfn>) -> Result<(), BackingError> {
        // SAFETY: the pages were just allocated for the caller; the direct map
        // covers all physical memory.
        unsafe {
            self.phys(pages.start)
                .write_bytes(0, ((pages.end.0 - pages.start.0) * PAGE_SIZE) as usize)
        };
        Ok(())
    }
}

/// Free page reporting to the "host": punch the reported memory out of the
/// memfd, as a hypervisor discards reported guest memory. It reads back as zeroes.
struct Host {
    phys: libc::c_int,
    reported: u64,
}

impl FreeReporter for Host {
    fn report(&mut self, ranges: &[Range<Pfn>]) -> Result<(), ReportError> {
        for r in ranges {
            let (offset, len) = (r.start.0 * PAGE_SIZE, (r.end.0 - r.start.0) * PAGE_SIZE);
            // SAFETY: a plain system call on our memfd.
            let rc = unsafe {
                libc::fallocate(
                    self.phys,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(ReportError {
                    reason: "the host refused to discard the memory",
                });
            }
            self.reported += len;
        }
        Ok(())
    }
}

/// The boot CPU's job: bring the allocator up in place and return it.
fn boot() -> &'static KernelAllocator {
    let map = memory_map();
    let config = Config {
        context: Some(context),
        ..Config::new(Strategy::Deferred)
    };
    // The vmemmap spans the sections from the first with memory to the end of
    // the map: what the layout says once it is validated, before any descriptor
    // is needed.
    let vmemmap = |layout: &Layout| {
        let bytes = layout.memmap_descriptors() * size_of::<Page>() as u64;
        Vmemmap::new(layout.memmap_start(), bytes).map_err(|_| "no host memory for the machine")
    };
    PAGES
        .build(&map, vmemmap, &SLOTS, &CACHES, config)
        .expect("start-up")
}

/// The calling "CPU", for the re-entrancy check: the host thread.
fn context() -> u64 {
    thread_local!(static ID: u8 = const { 0 });
    ID.with(|id| id as *const u8 as u64)
}

fn main() {
    // What the backing assumed of the map is what the allocator will find.
    let layout = memory_map().build().expect("a valid memory map");
    assert_eq!(layout.memmap_start(), Pfn(0));
    assert_eq!(layout.section_count(), SECTIONS);
    // A kernel's boot stack: 16 KiB is enough for start-up in place.
    let a: &'static KernelAllocator = std::thread::Builder::new()
        .stack_size(16 << 10)
        .spawn(boot)
        .unwrap()
        .join()
        .unwrap();
    println!(
        "up: {} of memmap mapped so far, nothing initialised: {}",
        a.stats().memmap_bytes,
        a.stats().chunks_done == 0
    );

    // The early allocation of a boot CPU, before workers run: it grows its zone.
    let early = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();

    // Deferred workers, two "CPUs" per node, while CPU 3 takes interrupts that
    // allocate and free without ever growing.
    std::thread::scope(|s| {
        for node in [NodeId(0), NodeId(0), NodeId(1), NodeId(1)] {
            s.spawn(move || {
                let report = a.run_deferred_worker(node);
                assert_eq!(report.failed, 0, "{report:?}");
            });
        }
        s.spawn(|| {
            for _ in 0..1000 {
                if let Ok((p, _)) = a.alloc_traced(
                    AllocRequest::order(0)
                        .on(CpuId(3))
                        .flags(AllocFlags::NO_GROW),
                ) {
                    a.free(FreeRequest::pfn(p).on(CpuId(3))).unwrap();
                }
            }
        });
    });
    assert!(a.stats().fully_initialised);

    // A NUMA-bound task on node 1, and a page table that must start zeroed.
    let (local, _) = a
        .alloc_traced(
            AllocRequest::order(3)
                .on(CpuId(2))
                .node(NodeId(1))
                .flags(AllocFlags::THIS_NODE),
        )
        .unwrap();
    assert_eq!(a.layout().node_of(local), Some(NodeId(1)));
    let (table, _) = a
        .alloc_traced(
            AllocRequest::order(0)
                .on(CpuId(2))
                .node(NodeId(1))
                .flags(AllocFlags::ZEROED | AllocFlags::THIS_NODE),
        )
        .unwrap();

    // The kernel's own per-page data.
    let meta: &KernelPage = a.page(table).unwrap().meta();
    meta.refcount.store(1, Relaxed);
    meta.mapping
        .store(0xffff_8880_0000_0000 | table.addr(), Relaxed);
    meta.flags.store(1 << 3, Relaxed);

    // Memory in use, then released: the idle loop reports free memory to the host.
    let mut held: Vec<Pfn> = (0..4096)
        .map(|i| {
            a.alloc(
                AllocRequest::order(0)
                    .on(CpuId(i % CPUS as u32))
                    .node(NodeId(i % 2)),
            )
            .unwrap()
        })
        .collect();
    for (i, p) in held.drain(..).enumerate() {
        a.free(FreeRequest::pfn(p).on(CpuId(i as u32 % CPUS as u32)))
            .unwrap();
    }
    a.drain(None).unwrap_or(0);
    let mut host = Host {
        phys: a.backing().phys,
        reported: 0,
    };
    let stats = a.report_free(&mut host).unwrap();

    println!(
        "memmap: {} bytes in {} sections, mapped from their own pages with {} page-table pages",
        a.stats().memmap_bytes,
        a.backing().tables.load(Relaxed),
        a.backing().tables.load(Relaxed)
    );
    println!(
        "reported to the host: {} MiB in {} blocks",
        host.reported / MIB,
        stats.blocks
    );
    for z in a.zones() {
        // Every page accounted for: the example's held pages are `early`,
        // `local` (8) and `table`.
        println!(
            "  {} {:?}: {} present, {} free ({} reported), {} reserved, {} allocated",
            z.node,
            z.zone,
            z.present,
            z.free,
            z.reported,
            z.reserved,
            z.allocated()
        );
    }
    let allocated: u64 = a.zones().map(|z| z.allocated()).sum();
    assert_eq!(allocated, 1 + 8 + 1);
    assert_eq!(
        meta.refcount.load(Relaxed),
        1,
        "the kernel's data is its own"
    );

    a.free(early).unwrap();
    a.free(local).unwrap();
    a.free(table).unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_example_runs() {
        super::main();
    }
}
