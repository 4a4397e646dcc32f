//! Application processors: start them, and run jobs on them (deferred workers, the
//! SMP workload).
//!
//! The boot CPU copies a real-mode trampoline to [`TRAMPOLINE`] (low memory the
//! layout keeps reserved), then wakes each AP with INIT and two STARTUP IPIs
//! through the local APIC. The trampoline takes the AP from real mode through
//! protected mode to long mode on the boot page tables and calls [`ap_main`] on a
//! stack of its own. APs are started one at a time; each then waits for jobs.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use meminit::NodeId;

use crate::acpi::{Topology, MAX_CPUS};
use crate::{println, tsc, ALLOCATOR};

/// Where the trampoline runs: a page below 1 MiB, reserved in the layout.
pub const TRAMPOLINE: u64 = 0x7_0000;
/// Each AP's stack: an order-4 block (64 KiB) from meminit, on the AP's node.
pub const AP_STACK_ORDER: u32 = 4;

/// The stack top the next AP takes; written by the boot CPU before each STARTUP.
#[no_mangle]
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
/// The index of the next AP; read by it in `ap_main`.
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);
/// APs that have reached `ap_main`.
static APS_UP: AtomicUsize = AtomicUsize::new(0);

/// A job for the APs: a generation number, what to run, and the node each AP
/// works for.
static JOB_GENERATION: AtomicU32 = AtomicU32::new(0);
static JOB_KIND: AtomicU32 = AtomicU32::new(Job::Deferred as u32);
static JOB_DONE: AtomicUsize = AtomicUsize::new(0);
static AP_NODE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

global_asm!(
    r#"
    .pushsection .rodata.trampoline, "a"
    .global ap_trampoline_start, ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tr_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, ${base} + (tr_protected - ap_trampoline_start)
    .code32
tr_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x620, %eax                    /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $BOOT_PML4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0xFFFFFFFB, %eax
    orl $0x80000003, %eax
    movl %eax, %cr0
    ljmp $0x18, $ap_long_mode
    .p2align 3
tr_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF            /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10: data */
    .quad 0x00AF9A000000FFFF            /* 0x18: 64-bit code */
tr_gdt_end:
tr_gdt_ptr:
    .word tr_gdt_end - tr_gdt - 1
    .long {base} + (tr_gdt - ap_trampoline_start)
ap_trampoline_end:
    .popsection

    .pushsection .text
    .code64
ap_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq AP_STACK_TOP(%rip), %rsp
    call ap_main
1:  hlt
    jmp 1b
    .popsection
    "#,
    base = const TRAMPOLINE,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

fn lapic_write(lapic: u64, reg: u64, value: u32) {
    // SAFETY: a local APIC register, identity-mapped (MMIO below 4 GiB).
    unsafe { ((lapic + reg) as usize as *mut u32).write_volatile(value) };
}

fn lapic_read(lapic: u64, reg: u64) -> u32 {
    // SAFETY: as above.
    unsafe { ((lapic + reg) as usize as *const u32).read_volatile() }
}

fn wait_us(us: u64, tsc_hz: u64) {
    let until = tsc::now() + tsc_hz / 1_000_000 * us;
    while tsc::now() < until {
        core::hint::spin_loop();
    }
}

/// This CPU's local APIC id.
fn my_apic_id(lapic: u64) -> u8 {
    (lapic_read(lapic, 0x20) >> 24) as u8
}

/// Starts every AP the MADT lists, CPU index `i` (in MADT order, the boot CPU
/// being 0) on the stack whose top `stack_top(i)` gives. Returns how many CPUs
/// run, the boot CPU included.
pub fn start_aps(
    topology: &Topology,
    tsc_hz: u64,
    mut stack_top: impl FnMut(usize) -> Option<u64>,
) -> usize {
    if topology.cpus <= 1 {
        return 1;
    }
    let lapic = topology.lapic;
    let me = my_apic_id(lapic);
    // SAFETY: the trampoline is position-independent code assembled for
    // TRAMPOLINE; the destination page is RAM the layout reserves and nothing
    // else uses.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as usize as *mut u8, len);
    }
    // Software-enable the local APIC (spurious vector register).
    lapic_write(lapic, 0xf0, lapic_read(lapic, 0xf0) | 0x1ff);
    let mut started = 1;
    for &id in &topology.apic_ids[..topology.cpus] {
        if id == me || started >= MAX_CPUS {
            continue;
        }
        let Some(top) = stack_top(started) else {
            println!("meminit guest: no memory for the stack of CPU {started}");
            break;
        };
        // SeqCst for the start-up handshake (one AP at a time, rare): these stores
        // must be visible before the AP runs; the IPIs are MMIO writes, which x86
        // does not reorder before earlier stores, and the AP's SeqCst loads pair
        // with them.
        AP_STACK_TOP.store(top, Ordering::SeqCst);
        AP_INDEX.store(started, Ordering::SeqCst);
        let before = APS_UP.load(Ordering::SeqCst);
        lapic_write(lapic, 0x310, (id as u32) << 24);
        lapic_write(lapic, 0x300, 0x0000_4500); // INIT
        wait_us(10_000, tsc_hz);
        for _ in 0..2 {
            lapic_write(lapic, 0x310, (id as u32) << 24);
            lapic_write(lapic, 0x300, 0x0000_4600 | (TRAMPOLINE >> 12) as u32); // STARTUP
            wait_us(200, tsc_hz);
        }
        // Wait up to a second for it to arrive.
        let deadline = tsc::now() + tsc_hz;
        // SeqCst: pairs with the AP's increment in `ap_main`.
        while APS_UP.load(Ordering::SeqCst) == before && tsc::now() < deadline {
            core::hint::spin_loop();
        }
        if APS_UP.load(Ordering::SeqCst) == before {
            println!("meminit guest: CPU with APIC id {id} did not start");
            continue;
        }
        started += 1;
    }
    started
}

#[no_mangle]
extern "C" fn ap_main() -> ! {
    // SAFETY: the boot CPU filled the IDT before starting any AP.
    unsafe { crate::traps::load() };
    // SeqCst: pairs with the boot CPU's stores before it sent the STARTUP IPI,
    // and its load of APS_UP after.
    let index = AP_INDEX.load(Ordering::SeqCst);
    APS_UP.fetch_add(1, Ordering::SeqCst);
    let mut seen = 0;
    loop {
        // Acquire: pairs with the Release in `run_job`, which published AP_NODE.
        let generation = JOB_GENERATION.load(Ordering::Acquire);
        if generation == seen {
            core::hint::spin_loop();
            continue;
        }
        seen = generation;
        // Relaxed: ordered by the Acquire load of the generation above.
        let node = AP_NODE[index].load(Ordering::Relaxed) as usize;
        let job = Job::from_u32(JOB_KIND.load(Ordering::Relaxed));
        job.run(index, node);
        // Release: pairs with the Acquire in `run_deferred_everywhere`.
        JOB_DONE.fetch_add(1, Ordering::Release);
    }
}

/// What the CPUs run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// A deferred worker for the CPU's node.
    Deferred = 0,
    /// The SMP workload's share of the CPU.
    Workload = 1,
}

impl Job {
    fn from_u32(v: u32) -> Job {
        if v == Job::Workload as u32 {
            Job::Workload
        } else {
            Job::Deferred
        }
    }

    /// Runs the job as CPU `cpu` for `node`.
    fn run(self, cpu: usize, node: usize) {
        let Some(a) = ALLOCATOR.get() else { return };
        match self {
            Job::Deferred => {
                let report = a.run_deferred_worker(NodeId(node as u32));
                if let Some(e) = report.error {
                    println!(
                        "meminit guest: deferred worker on CPU {cpu}: {} chunks left uninitialised: {e}",
                        report.failed
                    );
                }
            }
            Job::Workload => crate::smp_workload::run_on(a, cpu, node),
        }
    }
}

/// Runs deferred workers on every CPU, CPU `i` on `node_of_cpu(i)`, the boot CPU
/// (index 0) included, and returns when all are done.
pub fn run_deferred_everywhere(cpus: usize, node_of_cpu: impl Fn(usize) -> usize) {
    run_everywhere(Job::Deferred, cpus, node_of_cpu);
}

/// Runs `job` on every CPU at once, CPU `i` for `node_of_cpu(i)`, the boot CPU
/// (index 0) included, and returns when all are done.
pub fn run_everywhere(job: Job, cpus: usize, node_of_cpu: impl Fn(usize) -> usize) {
    for (i, slot) in AP_NODE.iter().enumerate().take(cpus).skip(1) {
        // Relaxed: published by the Release increment of the generation below.
        slot.store(node_of_cpu(i) as u32, Ordering::Relaxed);
    }
    // Relaxed: published by the Release increment of the generation below.
    JOB_KIND.store(job as u32, Ordering::Relaxed);
    // Acquire: pairs with the APs' Release increments of an earlier job.
    let done_before = JOB_DONE.load(Ordering::Acquire);
    // Release: pairs with the Acquire in `ap_main`.
    JOB_GENERATION.fetch_add(1, Ordering::Release);
    job.run(0, node_of_cpu(0));
    // Acquire: pairs with each AP's Release, so their work is visible here.
    while JOB_DONE.load(Ordering::Acquire) - done_before < cpus - 1 {
        core::hint::spin_loop();
    }
}
