//! A bare-metal x86-64 kernel that runs meminit on the memory QEMU gives it.
//!
//! Booted by PVH (`qemu-system-x86_64 -kernel`), it reads its memory map from the
//! PVH start information and its options from the kernel command line, starts the
//! allocator with the memmap mapped section by section as meminit populates it,
//! runs the same boot and workload as the simulator (`meminit-boot`), prints a
//! summary and one JSON line on the serial console, and exits through
//! `isa-debug-exit` with a status that says whether everything held.

#![no_std]
#![no_main]

mod acpi;
mod balloon;
mod boot;
mod cmdline;
mod files;
mod free_report;
mod hotplug_hooks;
mod hotplug_schedule;
mod mem_hotplug;
mod memory;
mod mmio;
mod paging;
mod pci;
mod port;
mod pvh;
mod report;
mod smp;
mod smp_workload;
mod spike;
mod traps;
mod tsc;
mod virtio;
mod virtio_mem;

use core::cell::Cell;

use hotplug_hooks::{find_virtio_mem, hotplug_region, start_hotplug, AllocatorHooks};
use meminit::{
    AllocFlags, AllocPath, AllocRequest, Allocator, AllocatorCell, Config, Constraint, CpuCache,
    CpuId, FreeRequest, NodeId, Pfn, SectionSlot, Strategy,
};
use meminit_boot::{check_bounds_for, early_requests, BootParams, EarlyKind, Workload, XorShift};
use port::{exit, ExitCode, Serial};
use report::{Report, Samples};

/// The zones' lock: a spin lock, as in any kernel.
type ZoneLock = spin::mutex::SpinMutex<()>;
/// The allocator as this kernel embeds it.
pub type GuestAllocator = Allocator<'static, paging::GuestBacking, ZoneLock>;

/// Section states for up to `paging::MAX_MEMORY` of RAM.
const MAX_SECTIONS: usize = (paging::MAX_MEMORY >> 27) as usize;
/// A plain static: the slots are atomics, lent by shared reference.
static SECTION_SLOTS: [SectionSlot; MAX_SECTIONS] = [const { SectionSlot::new() }; MAX_SECTIONS];
/// The allocator, started once in place (`AllocatorCell::init`).
static ALLOCATOR: AllocatorCell<paging::GuestBacking, ZoneLock> = AllocatorCell::new();
/// One page cache per vCPU, indexed as `smp` numbers them (the boot CPU is 0).
static CPU_CACHES: [CpuCache<ZoneLock>; acpi::MAX_CPUS] =
    [const { CpuCache::new() }; acpi::MAX_CPUS];

#[no_mangle]
extern "C" fn kernel_main(start_info: u32) -> ! {
    let entered = tsc::now();
    Serial::init();
    traps::init();
    boot::plant_stack_canary();
    // SAFETY: `start_info` is what the PVH loader passed in ebx; low memory is
    // identity-mapped by `boot`.
    let boot = match unsafe { pvh::read(start_info) } {
        Ok(b) => b,
        Err(e) => {
            println!("meminit guest: {e}");
            exit(ExitCode::Failure)
        }
    };
    let options = match cmdline::parse(boot.cmdline) {
        Ok(o) => o,
        Err(e) => {
            println!("meminit guest: {e}");
            exit(ExitCode::BadCommandLine)
        }
    };
    let (tsc_hz, tsc_source) = tsc::frequency();
    let ns = |ticks: u64| (ticks as u128 * 1_000_000_000 / tsc_hz as u128) as u64;
    println!(
        "meminit guest: {} on `{}`, TSC {} MHz ({tsc_source})",
        options.strategy.name(),
        boot.cmdline,
        tsc_hz / 1_000_000
    );
    for ignored in &options.ignored[..options.ignored_count] {
        println!(
            "meminit guest: note: ignoring Linux's option '{ignored}', which means nothing here"
        );
    }
    if options.crash_offset_ignored {
        println!(
            "meminit guest: note: crashkernel=SIZE@OFFSET: the size is reserved below 4 GiB, wherever the allocator finds it; the offset is ignored"
        );
    }

    // SAFETY: the RSDP address comes from the PVH start information; ACPI tables
    // sit in identity-mapped low memory and never change.
    let topology = unsafe { acpi::read(boot.rsdp) };
    let mut splits = [(0, 0); 64];
    let split_count = topology.node_splits(&mut splits);
    // virtio-mem's region is declared hot-pluggable in the layout: found first.
    let virtio_mem = find_virtio_mem(options.virtio_mem, tsc_hz);
    let hot_region = match &virtio_mem {
        Some(Ok(device)) => hotplug_region(device.config()),
        _ => None,
    };
    let layout = match memory::layout(
        boot.memmap,
        &splits[..split_count],
        options.memmap,
        hot_region,
    ) {
        Ok(l) => l,
        Err(e) => {
            println!("meminit guest: bad memory map: {e}");
            exit(ExitCode::Failure)
        }
    };
    if layout.end_pfn().addr() > paging::MAX_MEMORY {
        println!(
            "meminit guest: memory ends at {:#x}, above the {} GiB this guest maps",
            layout.end_pfn().addr(),
            paging::MAX_MEMORY >> 30
        );
        exit(ExitCode::Failure);
    }
    paging::init();

    if topology.cpus == 0 {
        println!(
            "meminit guest: note: no ACPI MADT (QEMU's microvm without acpi=on?): running on the boot CPU only, whatever -smp says"
        );
    }
    let cpus = topology.cpus.max(1) as u32;
    let params = BootParams {
        cpus,
        trace_buf_size: options.trace_buf_size,
        crashkernel: options.crashkernel,
    };
    // Bound every request by the memory present before anything runs: an absurd
    // size fails at once, with a reason, rather than keeping the guest busy.
    if let Err(e) = check_bounds_for(&layout, &params, options.workload) {
        println!("meminit guest: bad kernel command line option: {e}");
        exit(ExitCode::BadCommandLine)
    }
    let t0 = tsc::now();
    let memmap_start = layout.memmap_start();
    // Started in place in its static: neither the allocator (about 67 KB) nor
    // a copy of it is ever on the boot stack.
    let started = ALLOCATOR.init(
        &layout,
        paging::GuestBacking::new(options.memmap, options.accept_zero, memmap_start),
        &SECTION_SLOTS,
        &CPU_CACHES,
        Config {
            clock: Some(tsc::now),
            ..Config::new(options.strategy)
        },
    );
    let allocator = match started {
        Ok(a) => a,
        Err(e) => {
            println!("meminit guest: the allocator could not start: {e}");
            exit(ExitCode::Failure)
        }
    };
    let ready = tsc::now() - t0;
    // The allocator holds its own copy of the layout.
    let layout = allocator.layout();

    let (mut fast, mut slow) = Samples::pair().expect("samples are taken once");
    let failures = Cell::new(0u64);
    let allocated_pages = Cell::new(0u64);
    let mut alloc = |order: u32, constraint: Constraint, node: usize, flags: AllocFlags| {
        let t = tsc::now();
        // `node` is below MAX_NODES (16): it fits in u32.
        let r = allocator.alloc_traced(
            AllocRequest::order(order)
                .on(CpuId(0))
                .within(constraint)
                .node(NodeId(node as u32))
                .flags(flags),
        );
        let ticks = tsc::now() - t;
        match r {
            Ok((pfn, path)) => {
                if path == AllocPath::Grew {
                    slow.record(ns(ticks));
                } else {
                    fast.record(ns(ticks));
                }
                allocated_pages.set(allocated_pages.get() + (1 << order));
                Some(pfn)
            }
            Err(_) => {
                failures.set(failures.get() + 1);
                None
            }
        }
    };

    let tb = tsc::now();
    let mut boot_results = [(None, 0u64); 5];
    for (slot, request) in boot_results.iter_mut().zip(early_requests(layout, &params)) {
        let Some(request) = request else { continue };
        let mut failed = 0;
        for (node, &blocks) in request.blocks_per_node.iter().enumerate() {
            for _ in 0..blocks {
                match alloc(request.order, request.constraint, node, AllocFlags::NONE) {
                    Some(pfn) => write_as_linux_does(request.kind, pfn, request.order),
                    None => failed += 1,
                }
            }
        }
        *slot = (Some(request), failed);
    }

    let boot_allocs = tsc::now() - tb;

    // The APs, each on a stack meminit gives it on its own node.
    let ta = tsc::now();
    let node_of_cpu = |cpu: usize| {
        if topology.memory_ranges > 0 {
            topology.node_of_domain(topology.cpu_domain[cpu]) as usize
        } else {
            meminit_boot::node_of_cpu(layout, cpu as u32, cpus).index()
        }
    };
    let running = smp::start_aps(&topology, tsc_hz, |cpu| {
        let node = node_of_cpu(cpu);
        let pfn = alloc(smp::AP_STACK_ORDER, Constraint::Any, node, AllocFlags::NONE)?;
        Some(pfn.addr() + (4096 << smp::AP_STACK_ORDER))
    });
    let ap_start = tsc::now() - ta;

    let mut workers_ticks = 0;
    if options.strategy == Strategy::Deferred {
        let tw = tsc::now();
        smp::run_deferred_everywhere(running, node_of_cpu);
        // Nodes with no CPU of their own: the boot CPU finishes them.
        for (node, _) in layout.nodes() {
            let report = allocator.run_deferred_worker(node);
            if let Some(e) = report.error {
                println!(
                    "meminit guest: deferred worker: {} chunks left uninitialised: {e}",
                    report.failed
                );
                failures.set(failures.get() + 1);
            }
        }
        workers_ticks = tsc::now() - tw;
    }
    let full_init = allocator.stats().fully_initialised.then(|| tsc::now() - t0);

    // Hot-plugged memory, once the memory present at boot is up.
    let (base, block) = match &virtio_mem {
        Some(Ok(device)) => (device.config().addr, device.config().block_size),
        _ => (0, 2 << 20),
    };
    let mut recorder = AllocatorHooks::new(allocator, base, block);
    let mut hotplug = start_hotplug(virtio_mem, tsc_hz, layout, &mut recorder);
    if hotplug.as_ref().is_some_and(|h| h.is_err()) {
        failures.set(failures.get() + 1);
    }

    let nodes = layout.node_count();
    let mut progress = Progress::new(tsc_hz, options.workload);
    let mut spike = None;
    if let Workload::Spike { bytes } = options.workload {
        let figures = spike::run(
            bytes,
            nodes,
            options.hold,
            tsc_hz,
            spike::Paths {
                alloc: &mut |order, constraint, node| {
                    alloc(order, constraint, node, AllocFlags::NONE)
                },
                free: &mut |pfn| match allocator.free(FreeRequest::pfn(pfn).on(CpuId(0))) {
                    Ok(order) => allocated_pages.set(allocated_pages.get() - (1 << order)),
                    Err(_) => failures.set(failures.get() + 1),
                },
                drain: &|| {
                    allocator.drain(None).unwrap_or(0);
                },
                tick: &mut |done, of| progress.tick(done, of),
                report: &|reporter| match reporter {
                    Some(r) => allocator.report_free(r),
                    None => Ok(allocator.give_back()),
                },
            },
        );
        spike = Some(figures);
    }
    let mut files = None;
    if let Workload::Files { files: count } = options.workload {
        let figures = files::run(
            count,
            options.hold,
            tsc_hz,
            files::Paths {
                alloc: &mut |order, flags| alloc(order, Constraint::Any, 0, flags),
                free: &mut |pfn, order| match allocator
                    .free(FreeRequest::pfn(pfn).on(CpuId(0)).order(order))
                {
                    Ok(order) => allocated_pages.set(allocated_pages.get() - (1 << order)),
                    Err(_) => failures.set(failures.get() + 1),
                },
                drain: &|| {
                    allocator.drain(None).unwrap_or(0);
                },
                progress: &mut |done, of| progress.tick(done, of),
                tick: &|now, reporter| match reporter {
                    Some(r) => allocator.tick(now, r),
                    None => allocator.tick(now, &mut meminit::NoReporter),
                },
                now_ns: &|| ns(tsc::now()),
                compact: &|mover, pages| allocator.compact_up_to(mover, pages),
            },
        );
        if figures.report.pages < count || figures.files_bad > 0 {
            failures.set(failures.get() + 1);
        }
        spike = Some(figures.report);
        files = Some(figures);
    }
    if let Some(bytes) = options.hotplug {
        let recorder = core::cell::RefCell::new(&mut recorder);
        let figures = hotplug_schedule::run(
            bytes,
            options.hotplug_use,
            tsc_hz,
            hotplug_schedule::Paths {
                poll: &mut || match &mut hotplug {
                    Some(Ok(h)) => match h.poll(*recorder.borrow_mut()) {
                        Ok(()) => Some(h.config()),
                        Err(e) => {
                            println!("virtio-mem: error: {e}");
                            None
                        }
                    },
                    _ => None,
                },
                add_ticks: &|| recorder.borrow().add_ticks,
                alloc: &mut |flags| alloc(0, Constraint::Any, 0, flags),
                free: &mut |pfn| match allocator.free(FreeRequest::pfn(pfn).on(CpuId(0))) {
                    Ok(order) => allocated_pages.set(allocated_pages.get() - (1 << order)),
                    Err(_) => failures.set(failures.get() + 1),
                },
                drain: &|| {
                    allocator.drain(None).unwrap_or(0);
                },
                report: &|reporter| match reporter {
                    Some(r) => allocator.report_free(r),
                    None => Ok(allocator.give_back()),
                },
                memmap_bytes: &|| allocator.stats().memmap_bytes,
            },
        );
        if !figures.ok {
            failures.set(failures.get() + 1);
        }
    }
    match options.workload {
        Workload::Idle => {}
        // Run above, before the other workloads' match.
        Workload::Spike { .. } | Workload::Files { .. } => {}
        Workload::Smp { ops } => {
            use core::sync::atomic::Ordering::Relaxed;
            // Relaxed: published to the APs by the job's Release generation.
            smp_workload::OPS.store(ops, Relaxed);
            smp::run_everywhere(smp::Job::Workload, running, node_of_cpu);
            let unmerged = smp_workload::finish(allocator);
            // Relaxed: every CPU finished (the job's Acquire wait ordered it).
            let failed = smp_workload::FAILURES.load(Relaxed);
            println!(
                "meminit guest: smp workload: {running} CPUs, {} allocations, {} blocks freed on another CPU, {failed} failures, {unmerged} unmerged free blocks",
                smp_workload::ALLOCATIONS.load(Relaxed),
                smp_workload::HANDED.load(Relaxed),
            );
            failures.set(failures.get() + failed + unmerged);
        }
        Workload::Container { bytes } => {
            let pages = bytes.div_ceil(4096);
            for i in 0..pages {
                if let Some(pfn) = alloc(0, Constraint::Any, i as usize % nodes, AllocFlags::NONE) {
                    touch(pfn);
                }
                progress.tick(i, pages);
            }
        }
        Workload::Random { ops } => {
            static HELD_BLOCKS: spin::Mutex<[(Pfn, u32); HELD]> =
                spin::Mutex::new([(Pfn(0), 0); HELD]);
            let held = spin::MutexGuard::leak(HELD_BLOCKS.lock());
            let mut count = 0;
            let mut rng = XorShift::new();
            for op in 0..ops {
                progress.tick(op, ops);
                let x = rng.next_u64();
                if count < HELD && (x.is_multiple_of(2) || count == 0) {
                    let order = (x >> 8) as u32 % 4;
                    let node = (x >> 16) as usize % nodes;
                    if let Some(pfn) = alloc(order, Constraint::Any, node, AllocFlags::NONE) {
                        held[count] = (pfn, order);
                        count += 1;
                    }
                } else {
                    let i = (x >> 24) as usize % count;
                    let (pfn, order) = held[i];
                    held[i] = held[count - 1];
                    count -= 1;
                    if allocator
                        .free(FreeRequest::pfn(pfn).on(CpuId(0)).order(order))
                        .is_err()
                    {
                        failures.set(failures.get() + 1);
                    }
                    allocated_pages.set(allocated_pages.get() - (1 << order));
                }
            }
        }
    }

    // free + allocated + uninitialised + reserved == present, over all zones.
    let (mut free, mut uninit, mut reserved, mut present) = (0, 0, 0, 0);
    for z in allocator.zones() {
        free += z.free;
        uninit += z.uninitialised;
        reserved += z.reserved;
        present += z.present;
    }
    let counts_hold = free + allocated_pages.get() + uninit + reserved == present;

    let stats = allocator.stats();
    let init = match options.strategy {
        Strategy::Eager => ready,
        Strategy::Deferred => workers_ticks + stats.grow_time,
        Strategy::OnDemand => stats.grow_time,
    };
    let report = Report {
        allocator,
        strategy: options.strategy,
        workload: options.workload,
        cpus: running as u32,
        tsc_hz,
        tsc_source,
        boot_ns: ns(t0 - entered),
        boot_allocs_ns: ns(boot_allocs),
        ap_start_ns: ns(ap_start),
        workers_ns: ns(workers_ticks),
        ready_ns: ns(ready),
        full_init_ns: full_init.map(ns),
        init_ns: ns(init),
        grow_ns: ns(stats.grow_time),
        worker_threads: if options.strategy == Strategy::Deferred {
            cpus as usize
        } else {
            0
        },
        fast: fast.latency(),
        slow: slow.latency(),
        failures: failures.get(),
        boot: &boot_results,
        counts_hold,
        spike,
        files,
    };
    report.print();
    if !boot::stack_canary_intact() {
        println!("meminit guest: the boot stack overflowed");
        exit(ExitCode::Crash);
    }
    if options.hold {
        // Whoever runs the guest measures it now, at rest, and then sends a byte.
        println!("MEMINIT-HOLD waiting for a byte on the serial line (at most 60 s)");
        // Meanwhile the host may resize the virtio-mem: look every 10 ms.
        let mut next_poll = 0;
        let came = Serial::wait_for_byte_while(tsc_hz.saturating_mul(60), || {
            let Some(Ok(h)) = &mut hotplug else { return };
            if tsc::now() < next_poll {
                return;
            }
            next_poll = tsc::now() + tsc_hz / 100;
            if let Err(e) = h.poll(&mut recorder) {
                println!("virtio-mem: error: {e}");
                failures.set(failures.get() + 1);
                hotplug = None;
            }
        });
        if !came {
            println!("meminit guest: no byte came in 60 s; powering off");
        }
    }
    if let Some(Ok(h)) = &hotplug {
        let c = h.config();
        println!(
            "virtio-mem: done: requested {} plugged {} bytes; {} requests; {} bytes plugged and {} unplugged in all; hooks: {} on_plugged ({} bytes), {} may_unplug ({} bytes), {} refused, {} bad",
            c.requested_size,
            c.plugged_size,
            h.requests,
            h.plugged_bytes,
            h.unplugged_bytes,
            recorder.plugged_calls,
            recorder.plugged_bytes,
            recorder.unplug_calls,
            recorder.released_bytes,
            recorder.refused,
            recorder.bad_ranges
        );
        if recorder.bad_ranges > 0 || h.state_mismatches > 0 {
            failures.set(failures.get() + 1);
        }
    }
    // A spike whose report failed, or that the host did not discard, fails too.
    let spike_ok = spike.is_none_or(|s| s.ok());
    exit(if failures.get() == 0 && counts_hold && spike_ok {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Writes a boot allocation as Linux does, so that it costs the host what it costs
/// under Linux: the hash tables are zeroed (`HASH_ZERO`), the per-CPU areas are
/// written (the static per-CPU data copied into each unit), each ring-buffer page
/// gets its header (`rb_init_page`), and the crash kernel's reservation is left
/// untouched until a crash kernel is loaded.
fn write_as_linux_does(kind: EarlyKind, pfn: Pfn, order: u32) {
    let start = pfn.addr() as *mut u8;
    let bytes = 4096usize << order;
    match kind {
        EarlyKind::DentryHash | EarlyKind::InodeHash | EarlyKind::PerCpu => {
            // SAFETY: the block was just allocated to us and RAM is identity-mapped.
            unsafe { core::ptr::write_bytes(start, 0, bytes) }
        }
        EarlyKind::TraceBuffer => {
            for page in (0..bytes).step_by(4096) {
                // SAFETY: as above; the header is the page's first 16 bytes.
                unsafe { core::ptr::write_bytes(start.add(page), 0, 16) }
            }
        }
        EarlyKind::CrashKernel => {}
    }
}

/// A line on the console every few seconds of a long workload, so that a long
/// run is never silent.
struct Progress {
    every: u64,
    next: u64,
    workload: Workload,
}

impl Progress {
    fn new(tsc_hz: u64, workload: Workload) -> Self {
        let every = tsc_hz.saturating_mul(2);
        Progress {
            every,
            next: tsc::now().saturating_add(every),
            workload,
        }
    }

    fn tick(&mut self, done: u64, of: u64) {
        // Read the clock once in 4096 steps only.
        if !done.is_multiple_of(4096) {
            return;
        }
        let now = tsc::now();
        if now >= self.next {
            self.next = now.saturating_add(self.every);
            println!(
                "meminit guest: workload {}: {done} of {of} steps ({}%)",
                self.workload,
                done * 100 / of.max(1)
            );
        }
    }
}

/// Blocks the random workload holds at most.
const HELD: usize = 4096;

/// Writes one byte in every cache line of the page, as a workload would.
fn touch(pfn: Pfn) {
    let page = pfn.addr() as *mut u8;
    for offset in (0..4096).step_by(64) {
        // SAFETY: the page was just allocated to us and RAM is identity-mapped.
        unsafe { page.add(offset).write_volatile(0xa5) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    Serial::print_unlocked(format_args!("\nmeminit guest: panic: {info}\n"));
    exit(ExitCode::Crash)
}
