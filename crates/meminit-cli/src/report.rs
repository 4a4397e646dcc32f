//! `meminit report`: its command line, the checks of each option against the
//! machine, the runs, and the progress shown while they go. The simulation is
//! `meminit_host::sim`'s; the tables are `table`'s and `spike`'s, the charts
//! `plot`'s, the figures over repeated runs `repeated`'s.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meminit::PAGE_SIZE;
use meminit_host::machine::{Machine, BUILT_IN};
use meminit_host::sim::{self, Options, Workload};
use meminit_host::size;

use crate::args::{parse_fraction, parse_report_workload, parse_size, StrategyArg, WorkloadArg};
use crate::repeated::Repeated;
use crate::{mix, plot, spike, table, vm};

#[derive(Args)]
struct MachineArgs {
    /// A built-in machine: container (2G, 1 CPU), server (64G, 2 nodes, 16 CPUs),
    /// large (1T, 4 nodes, 64 CPUs).
    #[arg(long, conflicts_with_all = ["memory", "map"])]
    machine: Option<String>,
    /// Memory of a QEMU-like machine, e.g. 8G.
    #[arg(long, value_parser = parse_size, conflicts_with = "map")]
    memory: Option<u64>,
    /// NUMA nodes of that machine.
    #[arg(long, default_value_t = 1, requires = "memory")]
    nodes: u32,
    /// CPUs of that machine (or of a map file that does not say).
    #[arg(long)]
    cpus: Option<u32>,
    /// A memory-map file: JSON, or a Linux boot log.
    #[arg(long)]
    map: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Run only this strategy.
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Deferred worker threads in all, spread over nodes [default: this host's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Trace ring buffer per CPU allocated at boot, like the kernel parameter.
    #[arg(long, value_parser = parse_size)]
    trace_buf_size: Option<u64>,
    /// Crash-kernel reservation below 4 GiB, like `crashkernel=`.
    #[arg(long, value_parser = parse_size)]
    crashkernel: Option<u64>,
    /// After boot: `idle`, `container[:SIZE]` (default 100M, touched page by page),
    /// `random[:OPS]`, `smp[:OPS]`, `spike[:SIZE]` (SIZE allocated page by page
    /// and written, all freed, then idle passes that report free memory to the host
    /// and give chunks back), `mixed:SIZE:KEEP` (SIZE of pages, a fraction KEEP
    /// such as 1% kept, the rest freed) or `churn:SIZE:KEEP[:huge]` (orders 0-3
    /// living 1-100 rounds, a trickle KEEP kept; `huge`: 0.3% of order 9). The
    /// last two measure what goes back to the host (on-demand, two CPUs).
    #[arg(long, default_value = "idle", value_parser = parse_report_workload)]
    pub(crate) workload: WorkloadArg,
    /// With `mixed` or `churn`: `on`, kept allocations are unmovable and the
    /// rest movable; `off`, every allocation is movable (the kernel cannot tell).
    #[arg(long, value_enum)]
    pub(crate) hints: Option<mix::OnOff>,
    /// With `mixed` or `churn` and hints on: the fraction of allocations given
    /// the wrong class, e.g. 1%.
    #[arg(long, value_parser = parse_fraction)]
    pub(crate) wrong_hints: Option<f64>,
    /// With `mixed` or `churn`: run a compaction pass (the simulator's hook
    /// moves blocks) before the idle passes: `on` or `off` (the default).
    #[arg(long, value_enum)]
    pub(crate) compact: Option<mix::OnOff>,
    /// Give chunks that stayed free back to uninitialised, releasing their memmap,
    /// in the idle passes of the `spike` workload: `on` or `off` for every
    /// strategy, or `default` (on for on-demand only).
    #[arg(long, value_enum, default_value = "default")]
    give_back: GiveBackArg,
    /// Initialised free memory each zone keeps when giving back, in whole pages,
    /// e.g. 16M [default: 16M, four chunks].
    #[arg(long, value_parser = parse_size)]
    give_back_reserve: Option<u64>,
    /// Host memory a strategy may commit before it is skipped [default: half of
    /// MemAvailable].
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write charts (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The unit of initialisation: a power of two from 4M (one max-order block,
    /// the default) up to a section.
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// How the memmap is committed: `section` (a section's 2 MiB at once, on a
    /// huge page), `chunk` (each chunk's part, on small pages), or `premapped` (all
    /// of it at start, as a kernel with a static memmap: the grow path then pays
    /// for initialisation alone, and residency is eager's).
    #[arg(long, value_enum, default_value = "section")]
    memmap_granularity: GranularityArg,
    /// Accept (zero) each chunk of simulated memory before its first use, as a
    /// confidential guest (TDX, SNP) must, and report the bytes accepted.
    #[arg(long)]
    accept_memory: bool,
    /// Run each strategy this many times; times are given as median [min–max].
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: u32,
    /// Declare SIZE more memory hot-pluggable and run the hot-plug schedule instead
    /// of a boot: add_memory after start-up, SIZE of movable pages written in it
    /// (at most what --memory-budget allows) and freed, give-back, remove_memory.
    /// One strategy for the boot memory (on-demand unless --strategy says).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    hotplug: Option<u64>,
    /// With --hotplug: write only this much of the plugged memory (default: all
    /// of it, within --memory-budget), as `vm --hotplug-use` does.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    hotplug_use: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GiveBackArg {
    On,
    Off,
    Default,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GranularityArg {
    Section,
    Chunk,
    Premapped,
}

fn machine_of(args: &MachineArgs) -> Result<Machine> {
    let mut machine = if let Some(name) = &args.machine {
        Machine::built_in(name)?
    } else if let Some(memory) = args.memory {
        Machine::qemu_like(memory, args.nodes, args.cpus.unwrap_or(1))?
    } else if let Some(path) = &args.map {
        Machine::from_file(path)?
    } else {
        Machine::built_in("container")?
    };
    if let Some(cpus) = args.cpus {
        machine.cpus = meminit_host::machine::check_cpus(cpus, "--cpus")?;
    }
    Ok(machine)
}

/// `meminit report`: the machine given, or, with none, every built-in machine
/// (as `meminit` alone does).
pub(crate) fn report(args: &ReportArgs) -> Result<ExitCode> {
    let m = &args.machine;
    if args.runs == 0 || args.runs > vm::MAX_RUNS {
        bail!("--runs must be between 1 and {}", vm::MAX_RUNS);
    }
    if let (None, Some(used)) = (args.hotplug, args.hotplug_use) {
        bail!(
            "--hotplug-use {}: bounds what --hotplug's workload writes; add --hotplug SIZE",
            size::format(used)
        );
    }
    if let Some(bytes) = args.hotplug {
        return crate::hotplug::report(&hotplug_of(args, bytes)?);
    }
    let workload = match args.workload {
        WorkloadArg::Mix(m) => return mix_report(args, m),
        WorkloadArg::Boot(w) => w,
    };
    for (given, option) in [
        (args.hints.is_some(), "--hints"),
        (args.wrong_hints.is_some(), "--wrong-hints"),
        (args.compact.is_some(), "--compact"),
    ] {
        if given {
            bail!("{option}: only the mixed and churn workloads (--workload mixed:SIZE:KEEP, churn:SIZE:KEEP) take it, not {workload}");
        }
    }
    let machines = if m.machine.is_none() && m.memory.is_none() && m.map.is_none() {
        if args.plot.is_some() {
            bail!("--plot: name one machine (--machine, --memory or --map)");
        }
        BUILT_IN
            .iter()
            .map(|name| {
                let mut machine = Machine::built_in(name)?;
                if let Some(cpus) = m.cpus {
                    machine.cpus = cpus;
                }
                Ok(machine)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![machine_of(m)?]
    };
    let mut reports = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for machine in &machines {
        let (report, c) = report_one(args, machine, workload)?;
        if !args.json && machines.len() > 1 {
            println!();
        }
        if c != ExitCode::SUCCESS {
            code = c;
        }
        reports.push(report);
    }
    if args.json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_string_pretty(&reports[0])?);
        } else {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
    }
    Ok(code)
}

/// `--hotplug`'s run from the command line: every option that cannot apply to
/// it refused.
fn hotplug_of(args: &ReportArgs, bytes: u64) -> Result<crate::hotplug::SimHotplug> {
    let m = &args.machine;
    if m.machine.is_none() && m.memory.is_none() && m.map.is_none() {
        bail!("--hotplug: name one machine (--machine, --memory or --map)");
    }
    if !matches!(args.workload, WorkloadArg::Boot(Workload::Idle)) {
        bail!("--workload: --hotplug runs its own workload (SIZE written in the new memory, then freed); leave --workload out");
    }
    for (given, option) in [
        (args.threads.is_some(), "--threads"),
        (args.trace_buf_size.is_some(), "--trace-buf-size"),
        (args.crashkernel.is_some(), "--crashkernel"),
        (args.hints.is_some(), "--hints"),
        (args.wrong_hints.is_some(), "--wrong-hints"),
        (args.compact.is_some(), "--compact"),
        (args.give_back != GiveBackArg::Default, "--give-back"),
        (args.give_back_reserve.is_some(), "--give-back-reserve"),
        (args.plot.is_some(), "--plot"),
        (args.chunk_size.is_some(), "--chunk-size"),
        (args.accept_memory, "--accept-memory"),
        (
            matches!(args.memmap_granularity, GranularityArg::Premapped),
            "--memmap-granularity premapped",
        ),
    ] {
        if given {
            bail!("{option}: does not apply to --hotplug (its schedule: add_memory, a workload in the new memory, free, give-back, remove_memory)");
        }
    }
    let machine = machine_of(m)?;
    if bytes == 0 || !bytes.is_multiple_of(machine.section_size) {
        bail!(
            "--hotplug {bytes}: a size of whole sections ({} on machine {}), above 0",
            size::format(machine.section_size),
            machine.name
        );
    }
    let budget = args
        .memory_budget
        .unwrap_or_else(sim::default_memory_budget);
    if budget == 0 {
        bail!("--memory-budget 0: nothing could be measured; give the host memory the workload may commit, e.g. 4G");
    }
    // The workload's pages and their memmap must fit the budget.
    let most = budget / (PAGE_SIZE + 64) * PAGE_SIZE / (2 << 20) * (2 << 20);
    let used = match args.hotplug_use {
        Some(u) if u == 0 || !u.is_multiple_of(PAGE_SIZE) || u > bytes => bail!(
            "--hotplug-use {u}: whole 4 KiB pages, above 0 and at most the plug ({})",
            size::format(bytes)
        ),
        Some(u) => u,
        None => bytes,
    };
    let workload_bytes = used.min(most);
    let capped = (workload_bytes < used).then(|| {
        format!(
            "the workload writes {} of the {} plugged: the host memory budget is {} (--memory-budget; default half of MemAvailable)",
            size::format(workload_bytes),
            size::format(bytes),
            size::format(budget)
        )
    });
    Ok(crate::hotplug::SimHotplug {
        options: meminit_host::hotplug::HotplugOptions {
            bytes,
            workload_bytes,
            strategy: args
                .strategy
                .map_or(meminit::Strategy::OnDemand, Into::into),
            granularity: match args.memmap_granularity {
                GranularityArg::Chunk => meminit::Granularity::Chunk,
                _ => meminit::Granularity::Section,
            },
        },
        machine,
        runs: args.runs,
        json: args.json,
        capped,
    })
}

/// The simulation's options for `machine` from the command line, each checked
/// against the machine.
fn options_of(args: &ReportArgs, machine: &Machine, workload: Workload) -> Result<Options> {
    if machine.cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    let layout = machine.layout()?;
    let mut opts = Options::new();
    if let Some(s) = args.strategy {
        opts.strategies = vec![s.into()];
    }
    // A machine runs at most one deferred worker per CPU (and at least one per
    // node); more would only measure this host's scheduler.
    let most = (machine.cpus as usize).max(layout.node_count());
    // By default, this host's cores, but no more workers than the machine has CPUs.
    opts.threads = opts.threads.min(most);
    if let Some(t) = args.threads {
        if t == 0 || t > most {
            bail!(
                "--threads {t}: must be between 1 and {most} (machine {} has {} CPU{} on {} node{})",
                machine.name,
                machine.cpus,
                if machine.cpus == 1 { "" } else { "s" },
                layout.node_count(),
                if layout.node_count() == 1 { "" } else { "s" },
            );
        }
        opts.threads = t;
    }
    opts.trace_buf_size = args.trace_buf_size;
    opts.crashkernel = args.crashkernel;
    opts.workload = workload;
    let params = meminit_boot::BootParams {
        cpus: machine.cpus,
        trace_buf_size: args.trace_buf_size,
        crashkernel: args.crashkernel,
    };
    if let Err(e) = meminit_boot::check_bounds_for(&layout, &params, workload) {
        let option = match e.option {
            "trace_buf_size" => "--trace-buf-size",
            "crashkernel" => "--crashkernel",
            _ => "--workload",
        };
        bail!(
            "{option}: {e} (machine {}, {} CPUs)",
            machine.name,
            machine.cpus
        );
    }
    if let Some(b) = args.memory_budget {
        if b == 0 {
            bail!("--memory-budget 0: nothing could be measured; give the host memory a strategy may commit, e.g. 4G");
        }
        opts.memory_budget = b;
    }
    if let Some(c) = args.chunk_size {
        opts.chunk_size = c;
        let config = meminit::Config {
            chunk_size: c,
            ..meminit::Config::new(meminit::Strategy::OnDemand)
        };
        config.chunk_shift(&machine.layout()?)?;
    }
    opts.granularity = match args.memmap_granularity {
        GranularityArg::Section | GranularityArg::Premapped => meminit::Granularity::Section,
        GranularityArg::Chunk => meminit::Granularity::Chunk,
    };
    opts.premapped = matches!(args.memmap_granularity, GranularityArg::Premapped);
    opts.accept = args.accept_memory;
    if !matches!(workload, Workload::Spike { .. }) {
        if args.give_back != GiveBackArg::Default {
            bail!(
                "--give-back: only the spike workload (--workload spike:SIZE) has the idle passes that give chunks back"
            );
        }
        if args.give_back_reserve.is_some() {
            bail!(
                "--give-back-reserve: only the spike workload (--workload spike:SIZE) has the idle passes that give chunks back"
            );
        }
    }
    opts.give_back = match args.give_back {
        GiveBackArg::On => Some(true),
        GiveBackArg::Off => Some(false),
        GiveBackArg::Default => None,
    };
    if let Some(reserve) = args.give_back_reserve {
        if args.give_back == GiveBackArg::Off {
            bail!("--give-back-reserve: give-back is off (--give-back off); drop one of them");
        }
        if reserve % PAGE_SIZE != 0 {
            bail!(
                "--give-back-reserve {}: not a whole number of {} pages",
                size::format(reserve),
                size::format(PAGE_SIZE)
            );
        }
        let present = layout.present_pages() * PAGE_SIZE;
        if reserve > present {
            bail!(
                "--give-back-reserve {}: more than the {} of machine {}; nothing would ever be given back",
                size::format(reserve),
                size::format(present),
                machine.name
            );
        }
        opts.give_back_reserve = Some(reserve);
    }
    Ok(opts)
}

/// `meminit report` on one machine: `--runs` runs, the table or nothing (the
/// JSON is printed by the caller), the charts, and the exit status.
fn report_one(
    args: &ReportArgs,
    machine: &Machine,
    workload: Workload,
) -> Result<(Repeated, ExitCode)> {
    let opts = options_of(args, machine, workload)?;
    let progress = Spinner::new();
    let mut all = Vec::new();
    for _ in 0..args.runs {
        all.push(sim::run(machine, &opts, &progress)?);
    }
    progress.clear();
    let report = Repeated::of(all, args.runs).context("no run")?;
    if !args.json {
        table::print_report(&report, &opts);
        spike::print(&report);
        table::print_boot_and_zones(&report);
    }
    if let Some(dir) = &args.plot {
        let written = plot::write_all(dir, machine, &opts, args.runs, &progress)
            .with_context(|| format!("writing charts into {}", dir.display()))?;
        progress.clear();
        for f in written {
            eprintln!("wrote {}", f.display());
        }
    }
    let failed = report.first.strategies.iter().any(|s| {
        s.alloc_failures > 0
            || s.spike
                .as_ref()
                .is_some_and(|p| p.reuse_not_zeroed_pages > 0)
    });
    for s in &report.first.strategies {
        if let Some(p) = s.spike.as_ref().filter(|p| p.reuse_not_zeroed_pages > 0) {
            eprintln!(
                "meminit: {}: {} pages reported to the host and allocated again did not read zeroes",
                s.strategy, p.reuse_not_zeroed_pages
            );
        }
    }
    let code = if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    Ok((report, code))
}

/// A spinner on stderr, shown only on a terminal and only once a run has taken
/// more than a second.
struct Spinner {
    bar: ProgressBar,
    started: Instant,
    terminal: bool,
}

impl Spinner {
    fn new() -> Spinner {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("template"));
        Spinner {
            bar,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn clear(&self) {
        self.bar.set_draw_target(ProgressDrawTarget::hidden());
    }
}

impl sim::Progress for Spinner {
    fn step(&self, what: &str) {
        if self.terminal && self.started.elapsed() > Duration::from_secs(1) && self.bar.is_hidden()
        {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(120));
        }
        self.bar.set_message(what.to_string());
    }
}

/// `meminit report --workload mixed:..|churn:..`: the machine named (the
/// built-in container if none), the options that do not apply refused.
fn mix_report(args: &ReportArgs, workload: meminit_host::mix::Mix) -> Result<ExitCode> {
    for (given, option) in [
        (args.strategy.is_some(), "--strategy"),
        (args.threads.is_some(), "--threads"),
        (args.trace_buf_size.is_some(), "--trace-buf-size"),
        (args.crashkernel.is_some(), "--crashkernel"),
        (args.give_back != GiveBackArg::Default, "--give-back"),
        (args.give_back_reserve.is_some(), "--give-back-reserve"),
        (args.plot.is_some(), "--plot"),
        (args.chunk_size.is_some(), "--chunk-size"),
        (args.accept_memory, "--accept-memory"),
        (args.memory_budget.is_some(), "--memory-budget"),
    ] {
        if given {
            bail!("{option}: the {workload} workload runs on-demand with give-back, with the defaults; drop {option}");
        }
    }
    let machine = machine_of(&args.machine)?;
    let present = machine.layout()?.present_pages() * PAGE_SIZE;
    if matches!(workload.kind, meminit_host::mix::MixKind::Mixed) && workload.bytes > present {
        bail!(
            "--workload {workload}: {} of pages held at once is more than the {} of machine {}",
            size::format(workload.bytes),
            size::format(present),
            machine.name
        );
    }
    let hints = args.hints.is_none_or(|h| h == mix::OnOff::On);
    if !hints && args.wrong_hints.is_some() {
        bail!("--wrong-hints: with --hints off every allocation is movable; there is no hint to get wrong");
    }
    let opts = meminit_host::mix::MixOptions {
        hints,
        wrong_hints: args.wrong_hints.unwrap_or(0.0),
        compact: args.compact == Some(mix::OnOff::On),
        seed: 0,
    };
    mix::report(&machine, &workload, &opts, args.runs, args.json)
}
