//! The simulated boot: start the allocator, make the allocations Linux makes early
//! (each sized as Linux sizes it), run the deferred workers on threads, run a
//! workload, and measure each step from outside.
//!
//! One [`run`] measures every strategy asked for on the same machine, in the same
//! process, one after another, and measures the physical limit (a plain fill of the
//! same number of memmap bytes on fresh memory) beside each.

use std::time::Instant;

use meminit::{
    AllocPath, AllocRequest, Allocator, Config, Constraint, CpuCache, CpuId, FreeRequest,
    Granularity, Layout, NodeId, Pfn, SectionSlot, Strategy,
};
use meminit_boot::{early_requests, BootParams, EarlyKind, Size, XorShift};
use std::sync::Arc;

use crate::backing::HostBacking;
use crate::machine::Machine;
use crate::region::Region;
use crate::size;

pub use crate::limit::{
    chunked_fill_time, fill_time, limit_fill, parallel_fill_split, parallel_fill_time, Fills,
};
use crate::smp::smp_workload;
use crate::spike::spike_workload;

pub use crate::report::{EarlyResult, Latency, Report, StrategyReport, ZoneRow};

const PAGE: u64 = 4096;
const DESCRIPTOR: u64 = 64;

pub use meminit_boot::{BadWorkload, Workload};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Strategies, in the order to run them.
    pub strategies: Vec<Strategy>,
    /// Deferred worker threads in all, spread over nodes (at least one per node).
    pub threads: usize,
    /// `trace_buf_size=`: ring-buffer bytes per CPU allocated at boot. `None`: the
    /// buffer is not expanded at boot, one page per CPU.
    pub trace_buf_size: Option<u64>,
    /// `crashkernel=`: bytes reserved below 4 GiB at boot.
    pub crashkernel: Option<u64>,
    /// What runs after boot.
    pub workload: Workload,
    /// Host memory a strategy may commit; above it the strategy is skipped.
    pub memory_budget: u64,
    /// Bytes of memory per chunk, the unit of initialisation.
    pub chunk_size: u64,
    /// How the memmap is committed: a section's at once (huge pages) or each
    /// chunk's (small pages).
    pub granularity: Granularity,
    /// Commit the whole memmap at start instead (as a kernel with a static
    /// memmap), so that the grow path's latency is initialisation alone.
    pub premapped: bool,
    /// Whether each chunk of simulated memory is accepted (zeroed) before its
    /// first use, as a confidential guest's memory must be.
    pub accept: bool,
    /// Whether chunks that stay free are given back ([`Config::give_back`]);
    /// `None`: the strategy's default (on for on-demand only). Only the idle
    /// passes of the `spike` workload give anything back.
    pub give_back: Option<bool>,
    /// Initialised free memory each zone keeps when giving back
    /// ([`Config::give_back_reserve`]); `None`: the crate's default.
    pub give_back_reserve: Option<u64>,
}

impl Options {
    /// Every strategy, the host's cores as threads, an idle workload, half the
    /// host's available memory as budget.
    pub fn new() -> Options {
        Options {
            strategies: Strategy::ALL.to_vec(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            trace_buf_size: None,
            crashkernel: None,
            workload: Workload::Idle,
            memory_budget: default_memory_budget(),
            chunk_size: meminit::DEFAULT_CHUNK_SIZE,
            granularity: Granularity::Section,
            premapped: false,
            accept: false,
            give_back: None,
            give_back_reserve: None,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// Half of `MemAvailable` from `/proc/meminfo` (4 GiB if unreadable).
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024 / 2)
}

fn constraint_name(c: Constraint) -> &'static str {
    match c {
        Constraint::Any => "any",
        Constraint::Dma32 => "dma32",
        Constraint::Dma => "dma",
    }
}

/// Steps of a run, for a progress display.
pub trait Progress {
    /// A step starts.
    fn step(&self, what: &str);
}

impl Progress for () {
    fn step(&self, _: &str) {}
}

fn now_ns() -> u64 {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Host bytes a strategy commits for the memmap, at least (a section's worth
/// under on-demand: the most a section-granular backing commits for one chunk).
fn memmap_need(layout: &Layout, strategy: Strategy) -> u64 {
    let per_section = layout.section_pages() * DESCRIPTOR;
    match strategy {
        Strategy::Eager | Strategy::Deferred => {
            layout
                .memmap_sections()
                .filter(|&i| layout.section_has_present(i))
                .count() as u64
                * per_section
        }
        Strategy::OnDemand => per_section,
    }
}

/// Runs every strategy of `opts` on `machine`.
pub fn run(
    machine: &Machine,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Report, crate::machine::MachineError> {
    let layout = machine.layout()?;
    // Fresh guest memory is far slower to touch the first time on a virtualised
    // host; touch as much as the largest run will need, once, so that whichever
    // strategy runs first is not charged for it.
    let warm = opts
        .strategies
        .iter()
        .map(|&s| memmap_need(&layout, s))
        .filter(|&need| need <= opts.memory_budget)
        .max()
        .unwrap_or(0);
    progress.step(&format!("{}: warming host memory", machine.name));
    let _ = fill_time(warm);
    let strategies = opts
        .strategies
        .iter()
        .map(|&s| run_strategy(machine, &layout, s, opts, progress))
        .collect();
    Ok(Report {
        machine: machine.name.clone(),
        present_bytes: layout.present_pages() * PAGE,
        nodes: layout.nodes().count(),
        cpus: machine.cpus,
        section_bytes: layout.section_pages() * PAGE,
        workload: opts.workload.to_string(),
        strategies,
    })
}

/// Runs one strategy: boot, deferred init, workload, then the physical limit.
pub fn run_strategy(
    machine: &Machine,
    layout: &Layout,
    strategy: Strategy,
    opts: &Options,
    progress: &dyn Progress,
) -> StrategyReport {
    let workload_bytes = match opts.workload {
        Workload::Container { bytes } => bytes,
        // Written, with its memmap, before any of it is freed.
        Workload::Spike { bytes } => bytes + bytes / (PAGE / DESCRIPTOR),
        _ => 0,
    };
    let need = memmap_need(layout, strategy) + workload_bytes;
    if need > opts.memory_budget {
        return StrategyReport::skipped(
            strategy,
            format!(
                "needs {} of host memory (memmap and working set), over the budget of {} (--memory-budget)",
                size::format(need),
                size::format(opts.memory_budget)
            ),
        );
    }
    match measure(machine, layout, strategy, opts, progress) {
        Ok(r) => r,
        Err(e) => StrategyReport::skipped(strategy, format!("the host refused: {e}")),
    }
}

fn measure(
    machine: &Machine,
    layout: &Layout,
    strategy: Strategy,
    opts: &Options,
    progress: &dyn Progress,
) -> std::io::Result<StrategyReport> {
    let name = strategy.name();
    // The physical limit: each fill once before the run and once after, and the
    // best method by its mean, in the order of `limit::AROUND_RUN`.
    // The deferred workers, per node: `--threads` spread over the nodes, at
    // least one each; the parallel fill runs as many threads.
    let node_count = layout.node_count().max(1);
    let per_node: Vec<usize> = (0..node_count)
        .map(|i| (opts.threads / node_count + usize::from(i < opts.threads % node_count)).max(1))
        .collect();
    let limit_parallel_threads: usize = per_node.iter().sum();
    let limit_before = Fills::before_run(
        memmap_need(layout, strategy).min(opts.memory_budget),
        limit_parallel_threads,
    )?;
    let physical = Arc::new(Region::reserve(layout.end_pfn().0 * PAGE)?);
    let backing = if opts.premapped {
        HostBacking::premapped(layout)?
    } else {
        HostBacking::with_granularity(layout, opts.granularity)?
    };
    let backing = if opts.accept {
        backing.accepting(physical.clone())
    } else {
        backing
    };
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    progress.step(&format!("{}: {name}: start-up", machine.name));

    let t0 = Instant::now();
    // The workload runs on this thread, as CPU 0; one cache per simulated CPU, as a
    // kernel would lend them.
    let cpus: Vec<CpuCache<parking_lot::RawMutex>> =
        (0..machine.cpus.max(1)).map(|_| CpuCache::new()).collect();
    let defaults = Config::new(strategy);
    let config = Config {
        clock: Some(now_ns),
        chunk_size: opts.chunk_size,
        context: Some(crate::backing::thread_context),
        // Waiters on another thread's populate give their core away.
        wait: Some(std::thread::yield_now),
        give_back: opts.give_back.unwrap_or(defaults.give_back),
        give_back_reserve: opts.give_back_reserve.unwrap_or(defaults.give_back_reserve),
        ..defaults
    };
    let allocator: Allocator<'_, HostBacking, parking_lot::RawMutex> =
        Allocator::new(layout.clone(), backing, &slots, &cpus, config)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    let ready_ns = t0.elapsed().as_nanos() as u64;
    let populate_ready_ns = allocator.backing().populate_time_ns();
    let accepted_ready_bytes = allocator.backing().accepted_bytes();

    let mut fast = Vec::new();
    let mut slow = Vec::new();
    let mut failures = 0;
    let mut timed_alloc = |order: u32, constraint: Constraint, node: NodeId| {
        let t = Instant::now();
        let r = allocator.alloc_traced(
            AllocRequest::order(order)
                .on(CpuId(0))
                .within(constraint)
                .node(node),
        );
        let ns = t.elapsed().as_nanos() as u64;
        match r {
            Ok((pfn, AllocPath::Grew)) => {
                slow.push(ns);
                Some(pfn)
            }
            Ok((pfn, _)) => {
                fast.push(ns);
                Some(pfn)
            }
            Err(_) => {
                failures += 1;
                None
            }
        }
    };

    progress.step(&format!("{}: {name}: boot allocations", machine.name));
    let mut boot = Vec::new();
    let params = BootParams {
        cpus: machine.cpus,
        trace_buf_size: opts.trace_buf_size,
        crashkernel: opts.crashkernel,
    };
    for request in early_requests(layout, &params).into_iter().flatten() {
        let mut failed = 0;
        for (node, &blocks) in request.blocks_per_node.iter().enumerate() {
            // Below MAX_NODES (16): fits in u32.
            let node = NodeId(node as u32);
            for _ in 0..blocks {
                if timed_alloc(request.order, request.constraint, node).is_none() {
                    failed += 1;
                }
            }
        }
        let name = match (request.kind, opts.trace_buf_size) {
            (EarlyKind::TraceBuffer, Some(b)) => format!("trace buffer ({} per CPU)", Size(b)),
            (EarlyKind::TraceBuffer, None) => "trace buffer (unexpanded)".to_string(),
            (kind, _) => kind.name().to_string(),
        };
        boot.push(EarlyResult {
            name,
            bytes: request.bytes,
            order: request.order,
            blocks_per_node: request.blocks_per_node[..layout.node_count()].to_vec(),
            constraint: constraint_name(request.constraint),
            failures: failed,
        });
    }

    let nodes: Vec<NodeId> = layout.nodes().map(|(n, _)| n).collect();
    let mut worker_threads = 0;
    let mut workers_ns = 0;
    let mut populate_workers_ns = 0;
    if strategy == Strategy::Deferred {
        progress.step(&format!("{}: {name}: deferred workers", machine.name));
        worker_threads = limit_parallel_threads;
        let populate_before_workers_ns = allocator.backing().populate_time_ns();
        let tw = Instant::now();
        std::thread::scope(|s| {
            for (&node, &threads) in nodes.iter().zip(&per_node) {
                for _ in 0..threads {
                    let allocator = &allocator;
                    s.spawn(move || allocator.run_deferred_worker(node));
                }
            }
        });
        workers_ns = tw.elapsed().as_nanos() as u64;
        populate_workers_ns = allocator.backing().populate_time_ns() - populate_before_workers_ns;
    }
    let full_init_ns = allocator
        .stats()
        .fully_initialised
        .then(|| t0.elapsed().as_nanos() as u64);
    let full_init_ns = match strategy {
        Strategy::Eager => Some(ready_ns),
        Strategy::Deferred => full_init_ns,
        Strategy::OnDemand => None,
    };
    // What initialisation populated, before the workload gives any back: the
    // bytes the fills after the run write (on-demand initialises during the
    // workload too: its figure is taken at the end).
    let memmap_init_bytes = allocator.stats().memmap_bytes;
    let memmap_resident_boot_bytes = allocator.backing().resident_bytes()?;
    let accepted_boot_bytes = allocator.backing().accepted_bytes();

    progress.step(&format!(
        "{}: {name}: workload {}",
        machine.name, opts.workload
    ));
    let mut smp_samples = None;
    let mut spike = None;
    match opts.workload {
        Workload::Idle => {}
        Workload::Files { .. } => {
            return Err(std::io::Error::other(
                "the files workload runs in the guest kernel only (meminit vm --workload files)",
            ))
        }
        Workload::Spike { bytes } => {
            spike = Some(spike_workload(
                &allocator,
                &physical,
                &nodes,
                bytes,
                &mut timed_alloc,
            )?);
        }
        Workload::Smp { ops } => {
            smp_samples = Some(smp_workload(&allocator, machine.cpus, ops, &nodes));
        }
        Workload::Container { bytes } => {
            for i in 0..bytes.div_ceil(PAGE) {
                let node = nodes[(i as usize) % nodes.len()];
                if let Some(pfn) = timed_alloc(0, Constraint::Any, node) {
                    // SAFETY: the page is ours until freed, and it is never freed
                    // while this run lasts.
                    unsafe { physical.fill(pfn.addr() as usize, PAGE as usize, 0xa5) };
                }
            }
        }
        Workload::Random { ops } => {
            let mut held: Vec<(Pfn, u32)> = Vec::new();
            let mut rng = XorShift::new();
            for _ in 0..ops {
                let x = rng.next_u64();
                if held.len() < 4096 && (x.is_multiple_of(2) || held.is_empty()) {
                    let order = (x >> 8) as u32 % 4;
                    let node = nodes[(x >> 16) as usize % nodes.len()];
                    if let Some(pfn) = timed_alloc(order, Constraint::Any, node) {
                        held.push((pfn, order));
                    }
                } else {
                    let (pfn, order) = held.swap_remove((x >> 24) as usize % held.len());
                    allocator
                        .free(FreeRequest::pfn(pfn).on(CpuId(0)).order(order))
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                }
            }
        }
    }
    if let Some(smp) = smp_samples {
        let smp = smp?;
        fast.extend(smp.fast);
        slow.extend(smp.slow);
        failures += smp.failures;
    }
    let memmap_resident_end_bytes = allocator.backing().resident_bytes()?;
    let accepted_end_bytes = allocator.backing().accepted_bytes();
    let stats = allocator.stats();
    let zones = allocator
        .zones()
        .map(|z| ZoneRow {
            // Below MAX_NODES (16): fits in u8.
            node: z.node.0 as u8,
            zone: z.zone.name(),
            spanned: z.spanned,
            present: z.present,
            managed: z.managed,
            free: z.free,
            uninitialised: z.uninitialised,
        })
        .collect();
    let init_ns = match strategy {
        Strategy::Eager => ready_ns,
        Strategy::Deferred => workers_ns + stats.grow_time,
        Strategy::OnDemand => stats.grow_time,
    };
    // The host's populate within `init_ns`, as a time on the clock that
    // measured it: the workers' commits ran side by side, so their mean (the
    // sum over the workers) counts; other growth is summed as `grow_time` is.
    let populate_growth_ns =
        allocator.backing().populate_time_ns() - populate_ready_ns - populate_workers_ns;
    let init_populate_ns = match strategy {
        Strategy::Eager => populate_ready_ns,
        Strategy::Deferred => {
            populate_growth_ns + populate_workers_ns / worker_threads.max(1) as u64
        }
        Strategy::OnDemand => populate_growth_ns,
    }
    .min(init_ns);
    drop(allocator);
    drop(physical);

    progress.step(&format!("{}: {name}: physical limit", machine.name));
    let fill_bytes = match strategy {
        Strategy::OnDemand => stats.memmap_bytes,
        Strategy::Eager | Strategy::Deferred => memmap_init_bytes,
    };
    let limit_after = Fills::after_run(fill_bytes, limit_parallel_threads)?;
    let parallel = match limit_after.parallel.or(limit_before.parallel) {
        Some(split) => split,
        None => parallel_fill_split(fill_bytes, limit_parallel_threads)?,
    };
    let limit_parallel_fill_ns = parallel.total_ns;
    let same_bytes = fill_bytes == memmap_need(layout, strategy);
    let (limit_fill_ns, limit_method) = if same_bytes {
        limit_before.best_mean_with(&limit_after)
    } else {
        // The run populated less than it might have: only the fills after it
        // are of the same bytes.
        limit_after.best()
    };
    // Deferred workers' writes against as many threads', the rest against
    // one core's.
    let limit_writes_ns = if strategy == Strategy::Deferred {
        parallel.writes_ns()
    } else if same_bytes {
        limit_before.chunked_writes_mean_with(&limit_after)
    } else {
        limit_after.chunked_writes_mean_with(&limit_after)
    };
    let init_writes_ns = init_ns - init_populate_ns;
    // Writes alone compare only where the run wrote the descriptors of the
    // bytes the fill wrote: every chunk once (not on-demand's few chunks in a
    // populated section, nor chunks given back and written again).
    // And only where the fill commits and writes memory as the run does:
    // acceptance zeroes simulated memory inside initialisation, a premapped
    // memmap is not populated by the run, and a chunk-granular one is
    // committed in small pages.
    let wrote_every_chunk_once =
        stats.by_boot + stats.by_workers + stats.by_growth + stats.by_lookup
            == stats.chunks_present;
    let writes_compare = wrote_every_chunk_once
        && !opts.accept
        && !opts.premapped
        && opts.granularity == Granularity::Section;
    Ok(StrategyReport {
        strategy: name,
        skipped: None,
        ready_ns,
        full_init_ns,
        worker_threads,
        init_ns,
        grows: stats.grows,
        grow_ns: stats.grow_time,
        chunk_bytes: stats.chunk_bytes,
        chunks_by_boot: stats.by_boot,
        chunks_by_workers: stats.by_workers,
        chunks_by_growth: stats.by_growth,
        chunks_by_lookup: stats.by_lookup,
        chunks_present: stats.chunks_present,
        memmap_populated_bytes: stats.memmap_bytes,
        memmap_resident_boot_bytes,
        memmap_resident_end_bytes,
        memmap_full_bytes: memmap_need(layout, Strategy::Eager),
        accept: opts.accept,
        accepted_ready_bytes,
        accepted_boot_bytes,
        accepted_end_bytes,
        give_back: config.give_back,
        give_back_reserve_bytes: config.give_back_reserve,
        spike,
        alloc_fast: Latency::of(&mut fast),
        alloc_slow: Latency::of(&mut slow),
        alloc_failures: failures,
        limit_fill_ns,
        limit_method,
        limit_ratio: if init_ns > 0 {
            limit_fill_ns as f64 / init_ns as f64
        } else {
            0.0
        },
        limit_parallel_fill_ns,
        limit_parallel_threads,
        init_populate_ns,
        limit_writes_ns,
        limit_writes_ratio: if same_bytes && writes_compare && init_writes_ns > 0 {
            limit_writes_ns as f64 / init_writes_ns as f64
        } else {
            0.0
        },
        boot,
        zones,
    })
}
