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

use crate::args::{parse_size, parse_workload, StrategyArg};
use crate::repeated::Repeated;
use crate::{plot, spike, table, vm};

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
    /// `random[:OPS]`, `smp[:OPS]`, or `spike[:SIZE]` (SIZE allocated page by page
    /// and written, all freed, then idle passes that report free memory to the host
    /// and give chunks back).
    #[arg(long, default_value = "idle", value_parser = parse_workload)]
    workload: Workload,
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
    json: bool,
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
    runs: u32,
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
    if args.runs == 0 || args.runs > vm::MAX_RUNS {
        bail!("--runs must be between 1 and {}", vm::MAX_RUNS);
    }
    let mut reports = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for machine in &machines {
        let (report, c) = report_one(args, machine)?;
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

/// The simulation's options for `machine` from the command line, each checked
/// against the machine.
fn options_of(args: &ReportArgs, machine: &Machine) -> Result<Options> {
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
    opts.workload = args.workload;
    let params = meminit_boot::BootParams {
        cpus: machine.cpus,
        trace_buf_size: args.trace_buf_size,
        crashkernel: args.crashkernel,
    };
    if let Err(e) = meminit_boot::check_bounds_for(&layout, &params, args.workload) {
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
    if !matches!(args.workload, Workload::Spike { .. }) {
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
fn report_one(args: &ReportArgs, machine: &Machine) -> Result<(Repeated, ExitCode)> {
    let opts = options_of(args, machine)?;
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
