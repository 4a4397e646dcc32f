//! The ACPI tables the guest needs: MADT (which CPUs exist) and SRAT (which node
//! each range of memory and each CPU belongs to).
//!
//! Tables are read in place through the identity map; nothing is copied but the
//! few facts kept in fixed-size arrays.

use core::ptr::read_unaligned;

/// The most CPUs the guest starts.
pub const MAX_CPUS: usize = 64;
/// The most SRAT memory ranges kept.
const MAX_MEMORY_AFFINITIES: usize = 64;

/// What the tables say.
pub struct Topology {
    /// Local APIC ids of enabled CPUs, the boot CPU's among them.
    pub apic_ids: [u8; MAX_CPUS],
    /// How many.
    pub cpus: usize,
    /// Physical address of the local APIC.
    pub lapic: u64,
    /// Proximity domain of each CPU, by index into `apic_ids`.
    pub cpu_domain: [u32; MAX_CPUS],
    /// SRAT memory ranges: `(start, end, proximity domain)`.
    pub memory: [(u64, u64, u32); MAX_MEMORY_AFFINITIES],
    /// How many.
    pub memory_ranges: usize,
    /// SRAT processor affinities `(APIC id, domain)`, resolved into `cpu_domain`
    /// once both tables are read.
    srat_cpus: [(u8, u32); MAX_CPUS],
    srat_cpu_count: usize,
}

impl Topology {
    fn empty() -> Self {
        Topology {
            apic_ids: [0; MAX_CPUS],
            cpus: 0,
            lapic: 0xfee0_0000,
            cpu_domain: [0; MAX_CPUS],
            memory: [(0, 0, 0); MAX_MEMORY_AFFINITIES],
            memory_ranges: 0,
            srat_cpus: [(0, 0); MAX_CPUS],
            srat_cpu_count: 0,
        }
    }

    /// The node (dense index of proximity domains in order of first appearance in
    /// the SRAT memory ranges) of a proximity domain.
    pub fn node_of_domain(&self, domain: u32) -> u32 {
        let mut seen = [0u32; MAX_MEMORY_AFFINITIES];
        let mut n = 0;
        for &(_, _, d) in &self.memory[..self.memory_ranges] {
            if !seen[..n].contains(&d) {
                seen[n] = d;
                n += 1;
            }
        }
        seen[..n].iter().position(|&d| d == domain).unwrap_or(0) as u32
    }

    /// The SRAT's memory ranges as `(start, node)` boundaries in address order, for
    /// `memory::layout`; empty without an SRAT.
    pub fn node_splits(&self, out: &mut [(u64, u32); MAX_MEMORY_AFFINITIES]) -> usize {
        let ranges = &self.memory[..self.memory_ranges];
        for (slot, &(start, _, d)) in out.iter_mut().zip(ranges) {
            *slot = (start, self.node_of_domain(d));
        }
        out[..ranges.len()].sort_unstable_by_key(|&(s, _)| s);
        ranges.len()
    }
}

/// A table header's signature and length, and the address of its body.
///
/// # Safety
///
/// `addr` must be the physical address of an ACPI table, identity-mapped.
unsafe fn header(addr: u64) -> ([u8; 4], u32) {
    let p = addr as usize as *const u8;
    // SAFETY: an ACPI table starts with a 36-byte header (the caller's promise).
    unsafe {
        (
            read_unaligned(p as *const [u8; 4]),
            read_unaligned(p.add(4) as *const u32),
        )
    }
}

/// Reads the MADT and SRAT reachable from the RSDP at `rsdp`.
///
/// # Safety
///
/// `rsdp` must be 0 or the physical address of the RSDP the firmware or monitor
/// provided, with every table identity-mapped and unchanging.
pub unsafe fn read(rsdp: u64) -> Topology {
    let mut t = Topology::empty();
    if rsdp == 0 {
        return t;
    }
    let p = rsdp as usize as *const u8;
    // SAFETY: the RSDP layout: signature, checksum, OEM id, revision at 15, RSDT
    // address at 16, and for revision 2 the XSDT address at 24.
    let (revision, rsdt, xsdt) = unsafe {
        if read_unaligned(p as *const [u8; 8]) != *b"RSD PTR " {
            return t;
        }
        (
            *p.add(15),
            read_unaligned(p.add(16) as *const u32) as u64,
            read_unaligned(p.add(24) as *const u64),
        )
    };
    let (root, entry) = if revision >= 2 && xsdt != 0 {
        (xsdt, 8)
    } else {
        (rsdt, 4)
    };
    // SAFETY: the root table's header, then its array of table addresses.
    let (_, len) = unsafe { header(root) };
    let count = (len as usize).saturating_sub(36) / entry;
    for i in 0..count {
        let at = root as usize + 36 + i * entry;
        // SAFETY: inside the root table (bounded by its length).
        let table = unsafe {
            if entry == 8 {
                read_unaligned(at as *const u64)
            } else {
                read_unaligned(at as *const u32) as u64
            }
        };
        // SAFETY: each entry points at a table.
        let (sig, len) = unsafe { header(table) };
        match &sig {
            // SAFETY: a table of this signature and length.
            b"APIC" => unsafe { read_madt(table, len, &mut t) },
            // SAFETY: as above.
            b"SRAT" => unsafe { read_srat(table, len, &mut t) },
            // FADT: PM1a control block (I/O port) at 64, for powering off.
            // SAFETY: as above; the field lies inside every FADT revision.
            b"FACP" if len >= 68 => unsafe {
                let port = read_unaligned((table + 64) as usize as *const u32);
                crate::port::set_acpi_pm1a_control(port);
            },
            _ => {}
        }
    }
    for i in 0..t.cpus {
        let id = t.apic_ids[i];
        if let Some(&(_, d)) = t.srat_cpus[..t.srat_cpu_count]
            .iter()
            .find(|(a, _)| *a == id)
        {
            t.cpu_domain[i] = d;
        }
    }
    t
}

/// # Safety
///
/// `table` is an identity-mapped MADT of `len` bytes.
unsafe fn read_madt(table: u64, len: u32, t: &mut Topology) {
    // SAFETY: MADT: local APIC address at 36, flags at 40, entries from 44.
    unsafe {
        t.lapic = read_unaligned((table + 36) as usize as *const u32) as u64;
        let mut at = table + 44;
        while at + 2 <= table + len as u64 {
            let kind = *(at as usize as *const u8);
            let size = *((at + 1) as usize as *const u8) as u64;
            if size < 2 {
                break;
            }
            // Processor local APIC: id at 3, flags at 4 (bit 0: enabled).
            if kind == 0 && t.cpus < MAX_CPUS {
                let id = *((at + 3) as usize as *const u8);
                let flags = read_unaligned((at + 4) as usize as *const u32);
                if flags & 1 != 0 {
                    t.apic_ids[t.cpus] = id;
                    t.cpus += 1;
                }
            }
            at += size;
        }
    }
}

/// # Safety
///
/// `table` is an identity-mapped SRAT of `len` bytes.
unsafe fn read_srat(table: u64, len: u32, t: &mut Topology) {
    // SAFETY: SRAT entries start at 48.
    unsafe {
        let mut at = table + 48;
        while at + 2 <= table + len as u64 {
            let kind = *(at as usize as *const u8);
            let size = *((at + 1) as usize as *const u8) as u64;
            if size < 2 {
                break;
            }
            match kind {
                // Processor affinity: domain low byte at 2, APIC id at 3, flags at 4,
                // domain high bytes at 9..12.
                0 if t.srat_cpu_count < MAX_CPUS => {
                    let flags = read_unaligned((at + 4) as usize as *const u32);
                    if flags & 1 != 0 {
                        let lo = *((at + 2) as usize as *const u8) as u32;
                        let hi = read_unaligned((at + 9) as usize as *const [u8; 3]);
                        let domain =
                            lo | (hi[0] as u32) << 8 | (hi[1] as u32) << 16 | (hi[2] as u32) << 24;
                        t.srat_cpus[t.srat_cpu_count] = (*((at + 3) as usize as *const u8), domain);
                        t.srat_cpu_count += 1;
                    }
                }
                // Memory affinity: domain at 2, base at 8, length at 16, flags at 28.
                1 if t.memory_ranges < MAX_MEMORY_AFFINITIES => {
                    let flags = read_unaligned((at + 28) as usize as *const u32);
                    let base = read_unaligned((at + 8) as usize as *const u64);
                    let length = read_unaligned((at + 16) as usize as *const u64);
                    if flags & 1 != 0 && length > 0 {
                        let domain = read_unaligned((at + 2) as usize as *const u32);
                        t.memory[t.memory_ranges] = (base, base + length, domain);
                        t.memory_ranges += 1;
                    }
                }
                _ => {}
            }
            at += size;
        }
    }
}
