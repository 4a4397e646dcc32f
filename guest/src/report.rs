//! What the guest prints: a summary for people and one JSON line for programs,
//! with the simulator's field names (`meminit-host`'s `StrategyReport`) plus the
//! guest's own (TSC frequency and how it was found).

use meminit::{Granularity, MemmapBacking, Strategy};
use meminit_boot::{EarlyRequest, Size, Workload, XorShift};

use crate::{print, println, GuestAllocator};

const SAMPLES: usize = 8192;

/// Allocation latencies in ns: a uniform sample of at most 8192 of them (reservoir
/// sampling), plus the exact count and maximum.
pub struct Samples {
    kept: &'static mut [u64; SAMPLES],
    len: usize,
    seen: u64,
    max: u64,
    rng: XorShift,
}

/// Median, 99th percentile and maximum.
#[derive(Clone, Copy, Default)]
pub struct Latency {
    count: u64,
    median_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

/// Room for the fast and the slow path's samples, handed out once.
static SAMPLE_BUFFERS: spin::Mutex<[[u64; SAMPLES]; 2]> = spin::Mutex::new([[0; SAMPLES]; 2]);

impl Samples {
    /// The two sample sets (fast path, slow path); `None` after the first call.
    pub fn pair() -> Option<(Samples, Samples)> {
        // Leaking the guard hands the buffers out for the rest of the run.
        let buffers = spin::MutexGuard::leak(SAMPLE_BUFFERS.try_lock()?);
        let (fast, slow) = buffers.split_at_mut(1);
        Some((Samples::new(&mut fast[0]), Samples::new(&mut slow[0])))
    }

    fn new(kept: &'static mut [u64; SAMPLES]) -> Self {
        Samples {
            kept,
            len: 0,
            seen: 0,
            max: 0,
            rng: XorShift::new(),
        }
    }

    pub fn record(&mut self, ns: u64) {
        self.seen += 1;
        self.max = self.max.max(ns);
        if self.len < SAMPLES {
            self.kept[self.len] = ns;
            self.len += 1;
        } else {
            let slot = self.rng.next_u64() % self.seen;
            if (slot as usize) < SAMPLES {
                self.kept[slot as usize] = ns;
            }
        }
    }

    pub fn latency(&mut self) -> Latency {
        if self.len == 0 {
            return Latency::default();
        }
        let kept = &mut self.kept[..self.len];
        kept.sort_unstable();
        let at = |q: f64| kept[((kept.len() - 1) as f64 * q + 0.5) as usize];
        Latency {
            count: self.seen,
            median_ns: at(0.5),
            p99_ns: at(0.99),
            max_ns: self.max,
        }
    }
}

/// Everything the guest reports.
pub struct Report<'a> {
    pub allocator: &'a GuestAllocator,
    pub strategy: Strategy,
    pub workload: Workload,
    pub cpus: u32,
    pub tsc_hz: u64,
    pub tsc_source: &'static str,
    pub boot_ns: u64,
    pub boot_allocs_ns: u64,
    pub ap_start_ns: u64,
    pub workers_ns: u64,
    pub ready_ns: u64,
    pub full_init_ns: Option<u64>,
    pub init_ns: u64,
    pub grow_ns: u64,
    pub worker_threads: usize,
    pub fast: Latency,
    pub slow: Latency,
    pub failures: u64,
    pub boot: &'a [(Option<EarlyRequest>, u64)],
    pub counts_hold: bool,
    /// What `workload=spike:SIZE` did and reported.
    pub spike: Option<crate::spike::SpikeFigures>,
    /// What `workload=files:COUNT` did (its reporting is in `spike`).
    pub files: Option<crate::files::FilesFigures>,
}

fn constraint(c: meminit::Constraint) -> &'static str {
    match c {
        meminit::Constraint::Any => "any",
        meminit::Constraint::Dma32 => "dma32",
        meminit::Constraint::Dma => "dma",
    }
}

impl Report<'_> {
    pub fn print(&self) {
        let a = self.allocator;
        let layout = a.layout();
        let stats = a.stats();
        let present = layout.present_pages() * 4096;
        let sections = layout
            .memmap_sections()
            .filter(|&i| layout.section_has_present(i))
            .count() as u64;
        let full = sections * layout.section_pages() * 64;
        println!(
            "meminit guest: {} present on {} node(s), {} CPU(s); {} sections of {}, {} chunks of {}; workload {}",
            Size(present),
            layout.nodes().count(),
            self.cpus,
            sections,
            Size(layout.section_pages() * 4096),
            stats.chunks_present,
            Size(stats.chunk_bytes),
            self.workload
        );
        println!(
            "  {}: ready in {} µs; all initialised: {}; grew {} times in {} µs",
            self.strategy.name(),
            self.ready_ns / 1000,
            match self.full_init_ns {
                Some(t) => Us(t),
                None => Us(u64::MAX),
            },
            stats.grows,
            self.grow_ns / 1000
        );
        println!(
            "  memmap populated {} of {} ({} chunks: {} at boot, {} by workers, {} by growth)",
            Size(stats.memmap_bytes),
            Size(full),
            stats.chunks_done,
            stats.by_boot,
            stats.by_workers,
            stats.by_growth
        );
        let backing = a.backing();
        let memmap = match backing.granularity() {
            Granularity::Section => "section",
            Granularity::Chunk => "chunk",
        };
        if backing.zero_on_accept() {
            println!(
                "  memmap mapped by {memmap}; {} accepted (zeroed) on first use",
                Size(backing.accepted_bytes())
            );
        } else {
            println!("  memmap mapped by {memmap}; acceptance off");
        }
        println!(
            "  allocations: {} fast (median {} ns), {} slow (median {} ns), {} failed; counts {}",
            self.fast.count,
            self.fast.median_ns,
            self.slow.count,
            self.slow.median_ns,
            self.failures,
            if self.counts_hold {
                "hold"
            } else {
                "DO NOT HOLD"
            }
        );

        print!(
            "MEMINIT-JSON {{\"strategy\":\"{}\",\"workload\":\"{}\",",
            self.strategy.name(),
            self.workload
        );
        self.print_spike_json();
        print!(
            "\"present_bytes\":{present},\"nodes\":{},\"cpus\":{},\"section_bytes\":{},",
            layout.nodes().count(),
            self.cpus,
            layout.section_pages() * 4096
        );
        print!(
            "\"tsc_hz\":{},\"tsc_source\":\"{}\",\"boot_ns\":{},\"ready_ns\":{},",
            self.tsc_hz, self.tsc_source, self.boot_ns, self.ready_ns
        );
        print!(
            "\"boot_allocs_ns\":{},\"ap_start_ns\":{},\"workers_ns\":{},",
            self.boot_allocs_ns, self.ap_start_ns, self.workers_ns
        );
        match self.full_init_ns {
            Some(t) => print!("\"full_init_ns\":{t},"),
            None => print!("\"full_init_ns\":null,"),
        }
        print!(
            "\"worker_threads\":{},\"init_ns\":{},\"grows\":{},\"grow_ns\":{},",
            self.worker_threads, self.init_ns, stats.grows, self.grow_ns
        );
        print!(
            "\"chunks_by_boot\":{},\"chunks_by_workers\":{},\"chunks_by_growth\":{},\"chunks_by_lookup\":{},\"chunks_present\":{},\"chunk_bytes\":{},",
            stats.by_boot, stats.by_workers, stats.by_growth, stats.by_lookup, stats.chunks_present, stats.chunk_bytes
        );
        print!(
            "\"memmap_populated_bytes\":{},\"memmap_full_bytes\":{full},",
            stats.memmap_bytes
        );
        print!(
            "\"memmap\":\"{memmap}\",\"accept\":\"{}\",\"accepted_bytes\":{},",
            if backing.zero_on_accept() {
                "zero"
            } else {
                "off"
            },
            backing.accepted_bytes()
        );
        for (name, l) in [("alloc_fast", &self.fast), ("alloc_slow", &self.slow)] {
            print!(
                "\"{name}\":{{\"count\":{},\"median_ns\":{},\"p99_ns\":{},\"max_ns\":{}}},",
                l.count, l.median_ns, l.p99_ns, l.max_ns
            );
        }
        print!(
            "\"alloc_failures\":{},\"counts_hold\":{},\"boot\":[",
            self.failures, self.counts_hold
        );
        let mut first = true;
        for (request, failures) in self.boot {
            let Some(r) = request else { continue };
            if !first {
                print!(",");
            }
            first = false;
            print!(
                "{{\"name\":\"{}\",\"bytes\":{},\"order\":{},\"blocks\":{},\"constraint\":\"{}\",\"failures\":{}}}",
                r.kind.name(),
                r.bytes,
                r.order,
                r.blocks(),
                constraint(r.constraint),
                failures
            );
        }
        print!("],\"zones\":[");
        let mut first = true;
        for z in a.zones() {
            if !first {
                print!(",");
            }
            first = false;
            print!(
                "{{\"node\":{},\"zone\":\"{}\",\"spanned\":{},\"present\":{},\"managed\":{},\"free\":{},\"uninitialised\":{}}}",
                z.node.0,
                z.zone.name(),
                z.spanned,
                z.present,
                z.managed,
                z.free,
                z.uninitialised
            );
        }
        println!("]}}");
    }
}

impl Report<'_> {
    /// The spike's fields of the JSON line (zeros and nulls without a spike):
    /// what was reported to the host, through which device, and whether the host
    /// discarded it.
    fn print_spike_json(&self) {
        let s = self.spike.unwrap_or_default();
        if let Some(f) = &self.files {
            print!(
                "\"files\":{},\"files_kept\":{},\"meta_pages_peak\":{},\"meta_pages_kept\":{},\"last_return_ns\":{},\"tick_passes\":{},",
                f.files, f.kept, f.meta_pages_peak, f.meta_pages_kept, f.last_return_ns, f.passes
            );
            let c = &f.compact;
            print!(
                "\"compact_pages_moved\":{},\"compact_blocks_refused\":{},\"compact_chunks_emptied\":{},\"compact_rounds\":{},\"compact_done_ns\":{},\"files_bad\":{},",
                c.pages_moved,
                c.blocks_refused,
                c.chunks_emptied,
                f.compact_rounds,
                f.compact_done_ns,
                f.files_bad
            );
        }
        let freed = match &self.files {
            Some(f) => f.freed_bytes,
            None => s.pages * 4096,
        };
        print!("\"freed_bytes\":{freed},");
        print!(
            "\"spike_bytes\":{},\"spike_pages\":{},\"reported_bytes\":{},\"reported_blocks\":{},\"report_calls\":{},\"report_passes\":{},\"chunks_given_back\":{},\"memmap_bytes_released\":{},\"memmap_reported_bytes\":{},",
            s.bytes,
            s.pages,
            s.reported_bytes,
            s.reported_blocks,
            s.report_calls,
            s.passes,
            s.chunks_given_back,
            s.memmap_bytes_released,
            s.memmap_reported_bytes
        );
        match s.balloon {
            Some(f) => print!("\"balloon\":\"{f}\","),
            None => print!("\"balloon\":null,"),
        }
        // Error messages hold no double quotes or backslashes.
        match s.error {
            Some(e) => print!("\"report_error\":\"{e}\","),
            None => print!("\"report_error\":null,"),
        }
        match s.reported_zeroed {
            Some(z) => print!("\"reported_zeroed\":{z},"),
            None => print!("\"reported_zeroed\":null,"),
        }
    }
}

/// Microseconds, or "never".
struct Us(u64);

impl core::fmt::Display for Us {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("never")
        } else {
            write!(f, "in {} µs", self.0 / 1000)
        }
    }
}
