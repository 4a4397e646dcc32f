//! The embedding from the crate documentation, as a kernel builds it: meminit in
//! a `static`, started in place from the firmware's memory map, with no heap and
//! no `unsafe` of the kernel's own. Built for `x86_64-unknown-none` by the test
//! script, so that the documented embedding keeps compiling where kernels live.
//!
//! It is not booted: a real kernel's entry (PVH, multiboot, a bootloader crate)
//! would call [`kernel_main`] with the memory map it was handed; the guest kernel
//! in this repository (`guest/`) is such a kernel.

#![no_std]
#![no_main]

use core::panic::PanicInfo;

use meminit::{
    AllocFlags, AllocRequest, Allocator, AllocatorCell, Config, Constraint, CpuCache, CpuId,
    FreeRequest, InitError, Interrupts, IrqSafe, LayoutBuilder, NodeId, RangeKind, SectionSlot,
    SliceBacking, StaticMemmap, Strategy,
};

/// Interrupts on and off on this CPU, through the `x86_64` crate's safe wrappers.
struct Cpu;

impl Interrupts for Cpu {
    fn disable() -> bool {
        let on = x86_64::instructions::interrupts::are_enabled();
        x86_64::instructions::interrupts::disable();
        on
    }

    fn restore(was_on: bool) {
        if was_on {
            x86_64::instructions::interrupts::enable();
        }
    }
}

/// Zone and CPU-cache locks that interrupt handlers may take too.
type Lock = IrqSafe<spin::mutex::SpinMutex<()>, Cpu>;
type Pages = Allocator<'static, SliceBacking<'static>, Lock>;

/// The machine this small kernel supports at most: 64 MiB of RAM.
const MEMORY: u64 = 64 << 20;
const SECTION: u64 = 4 << 20;
const SECTIONS: usize = (MEMORY / SECTION) as usize;
const CPUS: usize = 4;

/// 64 bytes of descriptor per 4 KiB page, in the kernel's image (.bss).
static MEMMAP: StaticMemmap<{ (MEMORY >> 12) as usize }> = StaticMemmap::new();
static SLOTS: [SectionSlot; SECTIONS] = [const { SectionSlot::new() }; SECTIONS];
static CACHES: [CpuCache<Lock>; CPUS] = [const { CpuCache::new() }; CPUS];
static PAGES: AllocatorCell<SliceBacking<'static>, Lock> = AllocatorCell::new();

/// Starts the page allocator from the firmware's usable ranges (byte ranges),
/// with the kernel image reserved.
fn boot(usable: &[(u64, u64)], image: (u64, u64)) -> Result<&'static Pages, InitError> {
    let mut map = LayoutBuilder::new();
    map.section_size(SECTION);
    for &(start, end) in usable {
        map.add(start, end.min(MEMORY), RangeKind::Usable, NodeId(0));
    }
    map.add(image.0, image.1, RangeKind::Reserved, NodeId(0));
    let backing = MEMMAP.take().ok_or(InitError::AlreadyStarted)?;
    PAGES.build(
        &map,
        |_layout| Ok(backing),
        &SLOTS,
        &CACHES,
        Config::new(Strategy::OnDemand),
    )
}

/// What the kernel's entry calls once it has the memory map.
pub fn kernel_main(usable: &[(u64, u64)], image: (u64, u64)) -> Result<(), InitError> {
    let pages = boot(usable, image)?;
    // A page for CPU 0, a DMA-able 2 MiB block from "interrupt context".
    if let Ok(page) = pages.alloc(AllocRequest::order(0).on(CpuId(0))) {
        let _ = pages.free(FreeRequest::pfn(page).on(CpuId(0)));
    }
    let atomic = AllocRequest::order(9)
        .within(Constraint::Dma32)
        .flags(AllocFlags::NO_GROW);
    if let Ok(block) = pages.alloc(atomic) {
        let _ = pages.free(block);
    }
    Ok(())
}

/// The entry point a bootloader would jump to.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    let _ = kernel_main(
        &[(0x1000, 0x9f000), (0x100000, MEMORY)],
        (0x100000, 0x400000),
    );
    loop {
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        x86_64::instructions::hlt();
    }
}
