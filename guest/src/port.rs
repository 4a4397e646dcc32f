//! Port I/O, the serial console (COM1) and QEMU's `isa-debug-exit` device.
//!
//! It owns the raw `in`/`out` instructions; what a port means is its caller's.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit value to an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 16-bit value from an I/O port.
///
/// # Safety
///
/// The port must be one whose side effects the caller intends.
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

const COM1: u16 = 0x3f8;

/// The serial console. Writes are serialised by a lock, so lines from several
/// CPUs do not interleave within a `write!`.
pub struct Serial;

static SERIAL_LOCK: spin::Mutex<()> = spin::Mutex::new(());

impl Serial {
    /// Programs COM1 for 115200 8N1.
    pub fn init() {
        // SAFETY: the standard 16550 initialisation sequence on COM1.
        unsafe {
            outb(COM1 + 1, 0x00);
            outb(COM1 + 3, 0x80);
            outb(COM1, 0x01);
            outb(COM1 + 1, 0x00);
            outb(COM1 + 3, 0x03);
            outb(COM1 + 2, 0xc7);
            outb(COM1 + 4, 0x0b);
        }
    }

    fn put(byte: u8) {
        // SAFETY: COM1's line status and data registers.
        unsafe {
            while inb(COM1 + 5) & 0x20 == 0 {
                core::hint::spin_loop();
            }
            outb(COM1, byte);
        }
    }

    /// Waits for a byte on the serial line for at most `ticks` of the TSC;
    /// whether one came.
    pub fn wait_for_byte(ticks: u64) -> bool {
        Serial::wait_for_byte_while(ticks, || {})
    }

    /// Waits for a byte on the serial line for at most `ticks` of the TSC,
    /// calling `idle` between looks; whether one came.
    pub fn wait_for_byte_while(ticks: u64, mut idle: impl FnMut()) -> bool {
        let start = crate::tsc::now();
        while crate::tsc::now() - start < ticks {
            // SAFETY: COM1's line status and data registers.
            unsafe {
                if inb(COM1 + 5) & 1 != 0 {
                    let _ = inb(COM1);
                    return true;
                }
            }
            idle();
            core::hint::spin_loop();
        }
        false
    }

    /// Writes formatted text without the console lock: for the crash paths, which
    /// may run while this CPU holds it.
    pub fn print_unlocked(args: fmt::Arguments<'_>) {
        let _ = fmt::write(&mut Serial, args);
    }

    /// Writes formatted text, holding the console lock.
    pub fn print(args: fmt::Arguments<'_>) {
        let _guard = SERIAL_LOCK.lock();
        let _ = fmt::write(&mut Serial, args);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Serial::put(b'\r');
            }
            Serial::put(b);
        }
        Ok(())
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::port::Serial::print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::port::Serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// How the guest ends: QEMU exits with status `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything held: QEMU exits with 33.
    Success = 0x10,
    /// An allocation failed or an invariant broke: 35.
    Failure = 0x11,
    /// The command line was wrong: 37.
    BadCommandLine = 0x12,
    /// A CPU exception or panic: 39.
    Crash = 0x13,
}

/// The FADT's PM1a control port, 0 until the ACPI tables are read (or without).
static ACPI_PM1A_CONTROL: AtomicU32 = AtomicU32::new(0);

/// Records the FADT's PM1a control port, for powering off.
pub fn set_acpi_pm1a_control(port: u32) {
    ACPI_PM1A_CONTROL.store(port, Ordering::Relaxed);
}

/// Leaves through `isa-debug-exit` (I/O port 0xf4), whose status says how it
/// went. A monitor without that device does not stop there: the guest then
/// powers off through ACPI (S5 through the FADT's PM1a control port; QEMU's `pc`
/// and `q35` DSDTs give S5 the sleep type 0), and failing that resets through the
/// keyboard controller (which `-no-reboot` turns into an exit), and only then
/// halts.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device; writing ends the VM.
    unsafe { outl(0xf4, code as u32) };
    let pm1a = ACPI_PM1A_CONTROL.load(Ordering::Relaxed);
    if pm1a != 0 && pm1a <= u16::MAX as u32 {
        // SAFETY: SLP_TYP 0 | SLP_EN (bit 13) into PM1a_CNT: ACPI S5, power off.
        unsafe { outw(pm1a as u16, 1 << 13) };
    }
    // SAFETY: the 8042's pulse-reset command.
    unsafe { outb(0x64, 0xfe) };
    loop {
        // SAFETY: nothing is left to do; interrupts are off.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}
