//! CPU exceptions: every vector prints what happened and leaves with
//! `ExitCode::Crash`, so a fault never becomes a silent reset or a hang.

use core::arch::{asm, global_asm};

use crate::port::Serial;
use crate::port::{exit, ExitCode};

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static mut IDT: [Gate; 32] = [Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    flags: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 32];

// One stub per vector: push a zero error code where the CPU pushes none, push the
// vector, and go to the common handler with a pointer to the frame.
global_asm!(
    r#"
    .pushsection .text
    .macro stub n, has_error
    trap_stub_\n:
    .if \has_error == 0
        pushq $0
    .endif
        pushq $\n
        jmp trap_common
    .endm
    stub 0,0; stub 1,0; stub 2,0; stub 3,0; stub 4,0; stub 5,0; stub 6,0; stub 7,0
    stub 8,1; stub 9,0; stub 10,1; stub 11,1; stub 12,1; stub 13,1; stub 14,1; stub 15,0
    stub 16,0; stub 17,1; stub 18,0; stub 19,0; stub 20,0; stub 21,1; stub 22,0; stub 23,0
    stub 24,0; stub 25,0; stub 26,0; stub 27,0; stub 28,0; stub 29,1; stub 30,1; stub 31,0
trap_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call trap_handler
    .section .rodata
    .p2align 3
    .global trap_stubs
trap_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_stub_\n
    .endr
    .popsection
    "#,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: [u64; 32];
}

/// The frame the stubs leave: vector, error code, then what the CPU pushed.
#[repr(C)]
struct Frame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
}

#[no_mangle]
extern "C" fn trap_handler(frame: &Frame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    Serial::print_unlocked(format_args!(
        "\nmeminit guest: CPU exception {} (error {:#x}) at rip {:#x}, rsp {:#x}, cr2 {:#x}\n",
        frame.vector, frame.error, frame.rip, frame.rsp, cr2
    ));
    exit(ExitCode::Crash)
}

/// Installs the handlers on this CPU.
pub fn init() {
    // SAFETY: the IDT is filled before it is loaded, by the boot CPU, and only
    // read afterwards; the stubs are code in this image; 0x08 is the 64-bit code
    // segment of the boot GDT.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (gate, &handler) in idt.iter_mut().zip(trap_stubs.iter()) {
            *gate = Gate {
                offset_low: handler as u16,
                selector: 0x08,
                ist: 0,
                flags: 0x8e,
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        load();
    }
}

/// Loads the IDT on the calling CPU (the boot CPU after `init`, or an AP).
///
/// # Safety
///
/// `init` must have filled the IDT.
pub unsafe fn load() {
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<[Gate; 32]>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: the IDT is a static that lives forever (the caller's promise that
    // it is filled).
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack)) };
}
