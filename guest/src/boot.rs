//! Entry: the PVH note, the 32-bit entry point, and the switch to long mode.
//!
//! QEMU (and any PVH-capable monitor) loads the ELF at its physical addresses and
//! enters `pvh_start` in 32-bit protected mode, paging off, with the physical
//! address of the `hvm_start_info` structure in `ebx`. This module builds the boot
//! page tables (the first 4 TiB identity-mapped with 1 GiB pages; nothing is
//! touched by mapping it), enables long mode, and calls `kernel_main(start_info)` on
//! the boot stack. It owns the boot page tables; `paging` adds the memmap mapping.

use core::arch::global_asm;

/// Size of the boot CPU's stack.
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
pub struct PageTable(pub [u64; 512]);

/// The top-level table.
#[no_mangle]
pub static mut BOOT_PML4: PageTable = PageTable([0; 512]);
/// 1 GiB identity pages for the first 4 TiB.
#[no_mangle]
pub static mut BOOT_PDPT: [PageTable; 8] = [const { PageTable([0; 512]) }; 8];

#[repr(C, align(16))]
pub struct Stack(pub [u8; BOOT_STACK_SIZE]);

/// The boot CPU's stack, first in `.bss` so that an overflow runs into `.data`,
/// never into the page tables.
#[no_mangle]
#[link_section = ".bss.boot_stack"]
pub static mut BOOT_STACK: Stack = Stack([0; BOOT_STACK_SIZE]);

const CANARY: u64 = 0x6d65_6d69_6e69_7421;

/// Marks the bottom of the boot stack.
pub fn plant_stack_canary() {
    // SAFETY: the bottom 8 bytes of the boot stack are far below anything the
    // boot CPU has used by now.
    unsafe {
        core::ptr::addr_of_mut!(BOOT_STACK)
            .cast::<u64>()
            .write_volatile(CANARY)
    };
}

/// Whether the boot stack has never reached its bottom.
pub fn stack_canary_intact() -> bool {
    // SAFETY: reading the word planted by `plant_stack_canary`.
    unsafe {
        core::ptr::addr_of!(BOOT_STACK)
            .cast::<u64>()
            .read_volatile()
            == CANARY
    }
}

global_asm!(
    r#"
    .pushsection .note.Xen, "a"
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    movl %ebx, %edi                     /* start_info, kept for kernel_main */

    /* PDPT entries: (i << 30) | present | writable | 1 GiB page. */
    movl $BOOT_PDPT, %eax
    xorl %ecx, %ecx
1:  movl %ecx, %edx
    shll $30, %edx
    orl $0x83, %edx
    movl %edx, (%eax,%ecx,8)
    movl %ecx, %edx
    shrl $2, %edx
    movl %edx, 4(%eax,%ecx,8)
    incl %ecx
    cmpl $4096, %ecx
    jne 1b

    /* PML4[0..8] -> the 8 PDPTs. */
    movl $BOOT_PML4, %eax
    movl $BOOT_PDPT, %edx
    xorl %ecx, %ecx
2:  leal 0x3(%edx), %esi
    movl %esi, (%eax,%ecx,8)
    movl $0, 4(%eax,%ecx,8)
    addl $4096, %edx
    incl %ecx
    cmpl $8, %ecx
    jne 2b

    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    orl $0x600, %eax                    /* OSFXSR | OSXMMEXCPT: SSE for Rust code */
    movl %eax, %cr4
    movl $0xC0000080, %ecx              /* EFER */
    rdmsr
    orl $0x100, %eax                    /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0xFFFFFFFB, %eax              /* no EM */
    orl $0x80000003, %eax               /* PG | MP | PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl %edi, %edi
    leaq BOOT_STACK(%rip), %rsp
    addq ${stack_size}, %rsp
    call kernel_main
3:  hlt
    jmp 3b

    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .popsection
    "#,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);
