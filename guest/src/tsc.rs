//! Time from the TSC, with its frequency from CPUID where the CPU says it, and
//! otherwise measured against the PIT.

use core::arch::x86_64::{__cpuid, _rdtsc};

use crate::port::{inb, outb};

/// The TSC now.
#[inline]
pub fn now() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { _rdtsc() }
}

/// The TSC frequency in Hz and how it was found.
pub fn frequency() -> (u64, &'static str) {
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return (l.ecx as u64 * l.ebx as u64 / l.eax as u64, "cpuid 0x15");
        }
    }
    let hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor {
        let top = __cpuid(0x4000_0000).eax;
        if top >= 0x4000_0010 {
            let khz = __cpuid(0x4000_0010).eax;
            if khz != 0 {
                return (khz as u64 * 1000, "cpuid 0x40000010");
            }
        }
    }
    match calibrate_with_pit() {
        Some(hz) => (hz, "PIT calibration (50 ms)"),
        None => (ASSUMED_HZ, "assumed 2.1 GHz: no CPUID frequency and no PIT"),
    }
}

/// What the TSC is taken to run at when nothing says.
const ASSUMED_HZ: u64 = 2_100_000_000;

/// Reads PIT channel 0's current count.
fn pit_count() -> u16 {
    // SAFETY: latch and read PIT channel 0 (ports 0x43, 0x40).
    unsafe {
        outb(0x43, 0x00);
        let lo = inb(0x40) as u16;
        let hi = inb(0x40) as u16;
        hi << 8 | lo
    }
}

/// Counts TSC ticks over 50 ms of PIT channel 0 (1.193182 MHz), reading its
/// counter back: no speaker gate needed, so it works on QEMU's microvm too.
fn calibrate_with_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const TARGET: u64 = PIT_HZ / 20;
    // SAFETY: channel 0, low then high byte, mode 2 (rate generator), full count.
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let mut prev = pit_count();
    let start = now();
    let mut elapsed = 0u64;
    let mut still = 0u32;
    while elapsed < TARGET {
        let cur = pit_count();
        if cur == prev {
            still += 1;
            if still > 1_000_000 {
                return None;
            }
            continue;
        }
        still = 0;
        elapsed += u64::from(prev.wrapping_sub(cur));
        prev = cur;
    }
    Some((now() - start) * PIT_HZ / elapsed)
}
