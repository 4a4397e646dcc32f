//! The boot that meminit's simulator and its guest kernel both run.
//!
//! This crate owns *what* is allocated at boot and after it, so that a simulated
//! machine and a real (virtual) one do the same work: the allocations Linux makes
//! before user space, each sized as Linux 6.1 sizes it ([`early_requests`]), and the
//! workloads that follow ([`Workload`]). It also parses the sizes and options they
//! are given on command lines ([`parse_size`]). It allocates nothing itself and
//! needs no heap.

#![cfg_attr(not(test), no_std)]

use core::fmt;
use core::str::FromStr;

use meminit::{Constraint, Layout, NodeId, Pfn, MAX_NODES, MAX_ORDER, PAGE_SIZE};

const MIB: u64 = 1 << 20;
const DESCRIPTOR: u64 = 64;

/// A size or address that could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSize;

impl fmt::Display for BadSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a size (examples: 4096, 0x1000, 128M, 2G, 1T)")
    }
}

/// Parses a size or address: decimal, `0x` hex, or a number with a binary suffix
/// K, M, G, T or P (optionally followed by `B` or `iB`), like the kernel's
/// `memparse`, plus fractions (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64, BadSize> {
    let s = text.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| BadSize);
    }
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix("ib"))
        .or_else(|| s.strip_suffix('B'))
        .or_else(|| s.strip_suffix('b'))
        .unwrap_or(s);
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 40),
        Some(b'P' | b'p') => (&s[..s.len() - 1], 50),
        _ => (s, 0),
    };
    if let Ok(v) = digits.parse::<u64>() {
        return v.checked_mul(1 << shift).ok_or(BadSize);
    }
    let v: f64 = digits.parse().map_err(|_| BadSize)?;
    let bytes = v * (1u64 << shift) as f64;
    if shift == 0 || !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(BadSize);
    }
    let whole = bytes as u64;
    Ok(whole + u64::from(bytes - whole as f64 >= 0.5))
}

/// What runs once the boot allocations are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Nothing.
    Idle,
    /// A container's working set: `bytes` allocated page by page, each page written.
    Container {
        /// Working-set size.
        bytes: u64,
    },
    /// `ops` random allocations (orders 0–3, any zone) and frees.
    Random {
        /// Operations.
        ops: u64,
    },
    /// Every CPU at once: `ops` random allocations and frees each, through its own
    /// page cache, handing some blocks to other CPUs to free.
    Smp {
        /// Operations per CPU.
        ops: u64,
    },
    /// A load spike: `bytes` allocated page by page and written, all freed again,
    /// then idle while free memory is reported and given back; memory is measured
    /// after boot, at the peak and after the release.
    Spike {
        /// Size of the spike.
        bytes: u64,
    },
    /// A file system's shape of work (the guest's `files`): `files` small files,
    /// each an unmovable metadata object (inode and dentry, about 1 KiB) and one
    /// movable data page, all written; then every file deleted but for 1% kept
    /// at random, and a rest while free memory is reported and given back.
    /// Memory is measured after boot, at the peak, at the free and after the rest.
    Files {
        /// Files written.
        files: u64,
    },
}

impl Workload {
    /// The container workload's default working set.
    pub const DEFAULT_CONTAINER: u64 = 100 * MIB;
    /// The random workload's default operation count.
    pub const DEFAULT_RANDOM: u64 = 100_000;
    /// The SMP workload's default operation count per CPU.
    pub const DEFAULT_SMP: u64 = 50_000;
    /// The spike workload's default size.
    pub const DEFAULT_SPIKE: u64 = 1 << 30;
    /// The files workload's default count: 1 GiB of 4 KiB files.
    pub const DEFAULT_FILES: u64 = 262_144;
    /// Bytes a file of the files workload costs at most while it lives: its data
    /// page, its metadata object, and its entry in the file table.
    pub const FILE_BYTES: u64 = PAGE_SIZE + 1024 + 16;
}

/// A workload that is not `idle`, `container[:SIZE]`, `random[:OPS]`,
/// `smp[:OPS]`, `spike[:SIZE]` or `files[:COUNT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadWorkload;

impl fmt::Display for BadWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown workload: expected idle, container[:SIZE], random[:OPS], smp[:OPS], spike[:SIZE] or files[:COUNT]")
    }
}

impl FromStr for Workload {
    type Err = BadWorkload;

    fn from_str(s: &str) -> Result<Self, BadWorkload> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("idle", None) => Ok(Workload::Idle),
            ("container", None) => Ok(Workload::Container {
                bytes: Workload::DEFAULT_CONTAINER,
            }),
            ("container", Some(a)) => parse_size(a)
                .map(|bytes| Workload::Container { bytes })
                .map_err(|_| BadWorkload),
            ("random", None) => Ok(Workload::Random {
                ops: Workload::DEFAULT_RANDOM,
            }),
            ("random", Some(a)) => a
                .parse()
                .map(|ops| Workload::Random { ops })
                .map_err(|_| BadWorkload),
            ("smp", None) => Ok(Workload::Smp {
                ops: Workload::DEFAULT_SMP,
            }),
            ("smp", Some(a)) => a
                .parse()
                .map(|ops| Workload::Smp { ops })
                .map_err(|_| BadWorkload),
            ("spike", None) => Ok(Workload::Spike {
                bytes: Workload::DEFAULT_SPIKE,
            }),
            ("spike", Some(size)) => parse_size(size)
                .map(|bytes| Workload::Spike { bytes })
                .map_err(|_| BadWorkload),
            ("files", None) => Ok(Workload::Files {
                files: Workload::DEFAULT_FILES,
            }),
            ("files", Some(a)) => match a.parse() {
                Ok(files) if files > 0 => Ok(Workload::Files { files }),
                _ => Err(BadWorkload),
            },
            _ => Err(BadWorkload),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Idle => f.write_str("idle"),
            Workload::Container { bytes } => write!(f, "container:{}", Size(*bytes)),
            Workload::Random { ops } => write!(f, "random:{ops}"),
            Workload::Smp { ops } => write!(f, "smp:{ops}"),
            Workload::Spike { bytes } => write!(f, "spike:{}", Size(*bytes)),
            Workload::Files { files } => write!(f, "files:{files}"),
        }
    }
}

/// Formats a byte count as `2G`, `128M`, `1.5G`, `512K` or `100`.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
        let bytes = self.0;
        for (shift, unit) in UNITS {
            let unit_bytes = 1u64 << shift;
            if bytes >= unit_bytes {
                if bytes % unit_bytes == 0 {
                    return write!(f, "{}{unit}", bytes >> shift);
                }
                let v = bytes as f64 / unit_bytes as f64;
                return if v >= 100.0 {
                    write!(f, "{v:.0}{unit}")
                } else {
                    write!(f, "{v:.1}{unit}")
                };
            }
        }
        write!(f, "{bytes}")
    }
}

/// Linux's `alloc_large_system_hash` entry count for `nr_kernel_pages` and `scale`
/// (13 for the dentry cache, 14 for the inode cache), without `*hash_entries=`.
/// Page counts above the physical address space ([`meminit::MAX_PFN`])
/// count as that many.
pub fn large_system_hash_entries(nr_kernel_pages: u64, mut scale: u32) -> u64 {
    let nr_kernel_pages = nr_kernel_pages.min(meminit::MAX_PFN);
    // Rounded up to a whole MiB of pages.
    let mut n = nr_kernel_pages.next_multiple_of(MIB / PAGE_SIZE);
    // Past 64 GiB, a quarter as many entries per doubling of memory.
    let mut adapt = (64u64 << 30) / PAGE_SIZE;
    while adapt < n {
        scale = scale.saturating_add(1);
        adapt <<= 2;
    }
    if scale > 12 {
        n = n.checked_shr(scale - 12).unwrap_or(0);
    } else {
        n <<= 12 - scale;
    }
    let n = n.next_power_of_two();
    // At most 1/16 of memory, at most 2^31 entries.
    let max = (nr_kernel_pages * PAGE_SIZE / 16 / 8).min(1 << 31);
    n.min(max.max(1))
}

/// What the boot asks for, beyond the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParams {
    /// CPUs; each gets a per-CPU area and a trace buffer.
    pub cpus: u32,
    /// `trace_buf_size=`: ring-buffer bytes per CPU allocated at boot. `None`: the
    /// buffer is not expanded at boot, one page per CPU.
    pub trace_buf_size: Option<u64>,
    /// `crashkernel=`: bytes reserved below 4 GiB at boot.
    pub crashkernel: Option<u64>,
}

/// Which early allocation a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyKind {
    /// The dentry cache hash table.
    DentryHash,
    /// The inode cache hash table.
    InodeHash,
    /// Per-CPU areas.
    PerCpu,
    /// The trace ring buffer.
    TraceBuffer,
    /// The crash kernel reservation.
    CrashKernel,
}

impl EarlyKind {
    /// The name Linux gives it.
    pub const fn name(self) -> &'static str {
        match self {
            EarlyKind::DentryHash => "Dentry cache hash table",
            EarlyKind::InodeHash => "Inode-cache hash table",
            EarlyKind::PerCpu => "percpu areas",
            EarlyKind::TraceBuffer => "trace buffer",
            EarlyKind::CrashKernel => "crash kernel",
        }
    }
}

/// One allocation Linux makes early in boot, as blocks of one order per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyRequest {
    /// What it is.
    pub kind: EarlyKind,
    /// Bytes asked for.
    pub bytes: u64,
    /// Order of each block.
    pub order: u32,
    /// Blocks to allocate on each node.
    pub blocks_per_node: [u64; MAX_NODES],
    /// Zones allowed.
    pub constraint: Constraint,
}

impl EarlyRequest {
    /// Blocks in all (`u64::MAX` if that many do not fit).
    pub fn blocks(&self) -> u64 {
        self.blocks_per_node
            .iter()
            .fold(0, |sum, &b| sum.saturating_add(b))
    }
}

/// The node CPU `cpu` of `cpus` sits on: CPUs are spread over the nodes with memory
/// in contiguous blocks (a `cpu` at or past `cpus` counts as the last).
pub fn node_of_cpu(layout: &Layout, cpu: u32, cpus: u32) -> NodeId {
    let mut nodes = [NodeId(0); MAX_NODES];
    let mut count = 0;
    for (n, _) in layout.nodes() {
        nodes[count] = n;
        count += 1;
    }
    let cpus = cpus.max(1);
    nodes[(cpu.min(cpus - 1) as usize * count) / cpus as usize]
}

/// The allocations Linux makes before user space, sized as Linux sizes them: the
/// dentry and inode hash tables (interleaved over nodes when larger than a
/// max-order block), a per-CPU area per CPU, the trace buffer per CPU, and the crash
/// kernel below 4 GiB if asked.
pub fn early_requests(layout: &Layout, params: &BootParams) -> [Option<EarlyRequest>; 5] {
    let nodes: [usize; MAX_NODES] = {
        let mut v = [0; MAX_NODES];
        for (i, (n, _)) in layout.nodes().enumerate() {
            v[i] = n.index();
        }
        v
    };
    let node_count = layout.nodes().count();
    let present = layout.present_pages();
    let nr_kernel_pages = present - present * DESCRIPTOR / PAGE_SIZE;
    let hash = |kind, scale| {
        let bytes = large_system_hash_entries(nr_kernel_pages, scale) * 8;
        let order = bytes
            .div_ceil(PAGE_SIZE)
            .next_power_of_two()
            .trailing_zeros()
            .min(MAX_ORDER);
        let mut per_node = [0; MAX_NODES];
        if order < MAX_ORDER {
            per_node[nodes[0]] = 1;
        } else {
            for i in 0..bytes.div_ceil(PAGE_SIZE << order) {
                per_node[nodes[i as usize % node_count]] += 1;
            }
        }
        EarlyRequest {
            kind,
            bytes,
            order,
            blocks_per_node: per_node,
            constraint: Constraint::Any,
        }
    };
    let per_cpu = |blocks: u64| {
        let mut v = [0u64; MAX_NODES];
        for cpu in 0..params.cpus {
            let node = &mut v[node_of_cpu(layout, cpu, params.cpus).index()];
            *node = node.saturating_add(blocks);
        }
        v
    };
    // percpu: "Embedded 62 pages/cpu" in Debian's 6.1: one order-6 unit per CPU.
    let percpu = EarlyRequest {
        kind: EarlyKind::PerCpu,
        bytes: params.cpus as u64 * (64 * PAGE_SIZE),
        order: 6,
        blocks_per_node: per_cpu(1),
        constraint: Constraint::Any,
    };
    // The ring buffer is order-0 pages on each CPU's node; unexpanded, one page.
    let trace_pages = params
        .trace_buf_size
        .map_or(1, |b| b.div_ceil(PAGE_SIZE).max(1));
    let trace = EarlyRequest {
        kind: EarlyKind::TraceBuffer,
        // Saturates: a size no machine can hold is refused by the allocator anyway.
        bytes: (params.cpus as u64)
            .saturating_mul(trace_pages)
            .saturating_mul(PAGE_SIZE),
        order: 0,
        blocks_per_node: per_cpu(trace_pages),
        constraint: Constraint::Any,
    };
    let crash = params.crashkernel.map(|bytes| {
        let mut per_node = [0; MAX_NODES];
        per_node[nodes[0]] = bytes.div_ceil(PAGE_SIZE << MAX_ORDER);
        EarlyRequest {
            kind: EarlyKind::CrashKernel,
            bytes,
            order: MAX_ORDER,
            blocks_per_node: per_node,
            constraint: Constraint::Dma32,
        }
    });
    [
        Some(hash(EarlyKind::DentryHash, 13)),
        Some(hash(EarlyKind::InodeHash, 14)),
        Some(percpu),
        Some(trace),
        crash,
    ]
}

/// A boot parameter or workload larger than the memory present: it could never be
/// served, and trying would only keep a machine busy. Names the option, what it
/// asks for in all, and the memory there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The option, as on a kernel command line (`trace_buf_size`, `crashkernel`,
    /// `workload`).
    pub option: &'static str,
    /// What it asks for in all: bytes, or operations for `workload=random`.
    pub asked: u64,
    /// The most it may ask for: bytes, or operations.
    pub bound: u64,
    /// Bytes of memory present.
    pub present: u64,
    /// Whether `asked` and `bound` count operations rather than bytes.
    pub ops: bool,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ops {
            write!(
                f,
                "{}: {} operations is more than the {} this machine's {} of memory bounds it to (one per page present)",
                self.option,
                self.asked,
                self.bound,
                Size(self.present)
            )
        } else {
            write!(
                f,
                "{}: asks for {} in all, more than the {} it may have of the {} of memory present",
                self.option,
                Size(self.asked),
                Size(self.bound),
                Size(self.present)
            )
        }
    }
}

/// Checks the boot parameters and the workload against the memory present, so that
/// no value keeps a machine busy longer than its memory could: the trace buffer of
/// all CPUs, the crash kernel and the container's working set must each fit in the
/// memory present (the crash kernel in the part below 4 GiB), and the random
/// workload may make at most one operation per page present.
pub fn check_bounds(
    present_bytes: u64,
    below_4g_bytes: u64,
    params: &BootParams,
    workload: Workload,
) -> Result<(), TooLarge> {
    let too_large = |option, asked: u64, bound: u64, ops| {
        if asked > bound {
            Err(TooLarge {
                option,
                asked,
                bound,
                present: present_bytes,
                ops,
            })
        } else {
            Ok(())
        }
    };
    if let Some(t) = params.trace_buf_size {
        let all = t.saturating_mul(u64::from(params.cpus.max(1)));
        too_large("trace_buf_size", all, present_bytes, false)?;
    }
    if let Some(c) = params.crashkernel {
        too_large("crashkernel", c, below_4g_bytes.min(present_bytes), false)?;
    }
    match workload {
        Workload::Idle => Ok(()),
        Workload::Container { bytes } | Workload::Spike { bytes } => {
            too_large("workload", bytes, present_bytes, false)
        }
        Workload::Random { ops } | Workload::Smp { ops } => {
            too_large("workload", ops, present_bytes / PAGE_SIZE, true)
        }
        Workload::Files { files } => too_large(
            "workload",
            files.saturating_mul(Workload::FILE_BYTES),
            present_bytes,
            false,
        ),
    }
}

/// [`check_bounds`] for a layout: the memory it holds present, and the part below
/// 4 GiB.
pub fn check_bounds_for(
    layout: &Layout,
    params: &BootParams,
    workload: Workload,
) -> Result<(), TooLarge> {
    let present = layout.present_pages() * PAGE_SIZE;
    let below_4g: u64 = layout
        .node_ranges()
        .map(|(pfns, _)| {
            let end = pfns.end.min(Pfn::containing(4 << 30));
            pfns.start.pages_to(end) * PAGE_SIZE
        })
        .sum();
    check_bounds(present, below_4g, params, workload)
}

/// A small xorshift generator: the random workload is the same sequence everywhere.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The workload's seed.
    pub const fn new() -> Self {
        XorShift(0x2545_f491_4f6c_dd1d)
    }

    /// A sequence of its own for stream `i` (a CPU), never the all-zero state.
    pub const fn stream(i: u64) -> Self {
        XorShift(
            0x2545_f491_4f6c_dd1d ^ (i.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        )
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Default for XorShift {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tables_are_sized_as_linux_sized_them_in_our_boot_logs() {
        // (Total pages printed, dentry entries, inode entries) from the logs.
        for (pages, dentry, inode) in [
            (515_808u64, 262_144u64, 131_072u64),
            (8_257_248, 4_194_304, 2_097_152),
            (132_120_287, 16_777_216, 8_388_608),
        ] {
            assert_eq!(large_system_hash_entries(pages, 13), dentry, "{pages}");
            assert_eq!(large_system_hash_entries(pages, 14), inode, "{pages}");
        }
    }

    #[test]
    fn sizes_and_workloads_parse() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!("idle".parse(), Ok(Workload::Idle));
        assert_eq!(
            "container:1G".parse(),
            Ok(Workload::Container { bytes: 1 << 30 })
        );
        assert_eq!("random:10".parse(), Ok(Workload::Random { ops: 10 }));
        assert_eq!("spike:64M".parse(), Ok(Workload::Spike { bytes: 64 << 20 }));
        assert_eq!(
            Workload::Spike { bytes: 1 << 30 }.to_string().parse(),
            Ok(Workload::Spike { bytes: 1 << 30 })
        );
        assert_eq!("files:1000".parse(), Ok(Workload::Files { files: 1000 }));
        assert_eq!(
            "files".parse(),
            Ok(Workload::Files {
                files: Workload::DEFAULT_FILES
            })
        );
        assert_eq!(Workload::Files { files: 7 }.to_string(), "files:7");
        assert!("files:0".parse::<Workload>().is_err());
        assert!("files:1G".parse::<Workload>().is_err());
        assert!("busy".parse::<Workload>().is_err());
        assert_eq!(Size(3 << 29).to_string(), "1.5G");
    }

    /// Any argument gives an answer: no overflow, no index out of bounds, no
    /// endless loop.
    #[test]
    fn sizing_functions_are_total() {
        for scale in [0, 1, 12, 13, 14, 40, u32::MAX] {
            for pages in [0, 1, 1 << 40, (1 << 40) + 1, u64::MAX] {
                let _ = large_system_hash_entries(pages, scale);
            }
        }
        let mut b = meminit::LayoutBuilder::new();
        b.add(0x1000, 2 << 30, meminit::RangeKind::Usable, NodeId(0))
            .add(2 << 30, 4 << 30, meminit::RangeKind::Usable, NodeId(1));
        let layout = b.build().unwrap();
        assert_eq!(node_of_cpu(&layout, u32::MAX, 2), NodeId(1));
        assert_eq!(node_of_cpu(&layout, 0, 0), NodeId(0));
        for (cpus, trace) in [(8192, Some(u64::MAX)), (u32::MAX / 1024, Some(1 << 52))] {
            let requests = early_requests(
                &layout,
                &BootParams {
                    cpus,
                    trace_buf_size: trace,
                    crashkernel: Some(u64::MAX),
                },
            );
            for r in requests.into_iter().flatten() {
                let _ = r.blocks();
            }
        }
        for text in [
            "",
            "-1",
            "0x",
            ".G",
            "1.5.5G",
            "1e999",
            "18446744073709551616",
            "16E",
            "\u{0}",
        ] {
            let _ = parse_size(text);
        }
    }

    #[test]
    fn absurd_sizes_are_bounded_by_the_memory_present() {
        let g2 = 2u64 << 30;
        let params = |trace, crash| BootParams {
            cpus: 2,
            trace_buf_size: trace,
            crashkernel: crash,
        };
        let ok = check_bounds(
            g2,
            g2,
            &params(Some(100 << 20), Some(256 << 20)),
            Workload::Idle,
        );
        assert_eq!(ok, Ok(()));
        let e = check_bounds(g2, g2, &params(Some(100 << 40), None), Workload::Idle).unwrap_err();
        assert_eq!(e.option, "trace_buf_size");
        assert_eq!(e.asked, 200 << 40);
        assert!(e.to_string().contains("of the 2G of memory present"), "{e}");
        // Saturates rather than overflows.
        let e = check_bounds(g2, g2, &params(Some(u64::MAX), None), Workload::Idle).unwrap_err();
        assert_eq!(e.asked, u64::MAX);
        let e = check_bounds(8 * g2, g2, &params(None, Some(3 << 30)), Workload::Idle).unwrap_err();
        assert_eq!((e.option, e.bound), ("crashkernel", g2));
        let e = check_bounds(
            g2,
            g2,
            &params(None, None),
            Workload::Container { bytes: 100 << 40 },
        )
        .unwrap_err();
        assert_eq!(e.option, "workload");
        let e = check_bounds(
            g2,
            g2,
            &params(None, None),
            Workload::Random { ops: u64::MAX },
        )
        .unwrap_err();
        assert!(e.ops && e.bound == g2 / 4096, "{e:?}");
        assert!(e.to_string().contains("operations"), "{e}");
    }
}
