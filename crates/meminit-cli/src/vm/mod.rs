//! `meminit vm`: the guest kernel (and Linux) under QEMU, measured from outside.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use meminit_boot::{check_bounds, BootParams};
use meminit_host::sim::Workload;
use meminit_host::size;
use meminit_vm::{self as vm, Accel, Finish, PeerOptions, VmRun, VmShape, GUEST_SUCCESS};
use serde::Serialize;
use serde_json::Value;

use crate::{format_ns, StrategyArg};

#[derive(Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// KVM if a trial guest boots under it, software emulation otherwise.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GuestGranularity {
    Section,
    Chunk,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Peer {
    /// A Linux kernel under the same QEMU configuration.
    Linux,
}

/// The most runs of each guest `--runs` asks for.
pub(crate) const MAX_RUNS: u32 = 100;

#[derive(Args)]
pub struct VmArgs {
    /// Guest memory.
    #[arg(long, default_value = "2G", value_parser = crate::parse_size)]
    memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// NUMA nodes.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Only this strategy [default: all three].
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Also boot this peer under the same configuration.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The Linux kernel for `--peer linux` [default: the one scripts/setup --vm
    /// unpacked from Debian's package into target/linux/].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// The guest's `trace_buf_size=` (given to Linux too, with `ftrace=nop` so
    /// that Linux allocates it at boot as well).
    #[arg(long, value_parser = crate::parse_size)]
    trace_buf_size: Option<u64>,
    /// The guest's `crashkernel=` (given to Linux too).
    #[arg(long, value_parser = crate::parse_size)]
    crashkernel: Option<u64>,
    /// The guest's `workload=`: `idle`, `container[:SIZE]`, `random[:OPS]`, or
    /// `spike[:SIZE]` (SIZE written, freed and reported to the host; QEMU's memory
    /// is measured after boot, at the peak and after the release; Linux runs it
    /// too, from the initramfs scripts/setup --vm builds).
    #[arg(long, default_value = "idle", value_parser = crate::parse_workload)]
    workload: Workload,
    /// Leave the virtio-balloon device (free page reporting) off the QEMU command
    /// line, for meminit and Linux alike.
    #[arg(long)]
    no_balloon: bool,
    /// The initramfs for `--peer linux` with `--workload spike:SIZE`, whose /init
    /// runs the spike [default: the one scripts/setup --vm builds in
    /// target/linux/, where it did; without one, Linux stops at its root-mount
    /// panic]. Other workloads boot Linux without one.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Boot each guest this many times; tables and JSON give the minimum, median
    /// and maximum.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The guest's `memmap=`: map a section's memmap at once on a 2 MiB page of the
    /// section, or each chunk's on 4 KiB pages, so that residency follows chunks.
    #[arg(long, visible_alias = "memmap", value_enum, default_value = "section")]
    memmap_granularity: GuestGranularity,
    /// The guest's `accept=zero`: zero each chunk before its first use, as a
    /// confidential guest accepts its memory, and report the bytes accepted.
    #[arg(long)]
    accept_memory: bool,
    /// Extra text for the guest's command line (to test its checking).
    #[arg(long, hide = true)]
    append: Option<String>,
    /// Give up on a guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One boot of one guest.
#[derive(Serialize)]
struct Sample {
    #[serde(flatten)]
    host: VmRun,
    /// What the guest printed (meminit: its JSON line; Linux: its console figures).
    guest: Value,
    ok: bool,
    /// Why the guest did not succeed, from its console; absent when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

/// Minimum, median and maximum of one figure over the runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Spread {
    pub(crate) fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Spread {
            min: values[0],
            median,
            max: values[n - 1],
            n,
        })
    }
}

/// One column of the table: a meminit strategy or the peer, over its runs.
#[derive(Serialize)]
struct Column {
    name: String,
    /// The first run's figures, flattened; `samples` holds every run and `spread`
    /// the minimum, median and maximum of each figure over them.
    #[serde(flatten)]
    first: Sample,
    samples: Vec<Sample>,
    spread: BTreeMap<&'static str, Spread>,
    /// Whether every run succeeded.
    all_ok: bool,
}

#[derive(Serialize)]
struct VmReport {
    memory_bytes: u64,
    cpus: u32,
    nodes: u32,
    accel: Accel,
    accel_reason: String,
    runs_each: u32,
    /// The guests' workload (`spike:BYTES` for a spike).
    workload: String,
    /// Whether the balloon device (free page reporting) was on QEMU's command line.
    balloon: bool,
    /// Which figure the memory comparison is about.
    memory_compared: &'static str,
    /// What Linux was and was not given of the meminit guests' options.
    linux_notes: Vec<String>,
    runs: Vec<Column>,
}

/// The figures whose spread is reported: name, and how to read it from a sample.
type Metric = (&'static str, fn(&Sample) -> Option<f64>);

const METRICS: [Metric; 19] = [
    ("qemu_rss_boot_bytes", |s| {
        s.host.qemu_rss_boot_bytes.map(|b| b as f64)
    }),
    ("qemu_rss_peak_bytes", |s| {
        s.host.qemu_rss_peak_bytes.map(|b| b as f64)
    }),
    ("qemu_rss_after_release_bytes", |s| {
        s.host.qemu_rss_after_release_bytes.map(|b| b as f64)
    }),
    ("reported_bytes", |s| s.guest["reported_bytes"].as_f64()),
    ("guest_ram_rss_bytes", |s| {
        Some(s.host.guest_ram_rss_bytes as f64)
    }),
    ("qemu_own_rss_bytes", |s| {
        Some(s.host.qemu_own_rss_bytes as f64)
    }),
    ("qemu_rss_bytes", |s| Some(s.host.qemu_rss_bytes as f64)),
    ("qemu_peak_rss_bytes", |s| {
        Some(s.host.qemu_peak_rss_bytes as f64)
    }),
    ("wall_ns", |s| Some(s.host.wall_ns as f64)),
    ("ready_ns", |s| s.guest["ready_ns"].as_f64()),
    ("workers_ns", |s| s.guest["workers_ns"].as_f64()),
    ("boot_allocs_ns", |s| s.guest["boot_allocs_ns"].as_f64()),
    ("ap_start_ns", |s| s.guest["ap_start_ns"].as_f64()),
    ("full_init_ns", |s| s.guest["full_init_ns"].as_f64()),
    ("grow_ns", |s| s.guest["grow_ns"].as_f64()),
    ("tsc_hz", |s| s.guest["tsc_hz"].as_f64()),
    ("early_memmap_ns", |s| {
        s.guest["early_memmap_ms"].as_f64().map(|m| m * 1e6)
    }),
    // The slowest node's deferred-init threads: Linux's deferred initialisation
    // ends when the last of them does.
    ("deferred_init_ns", |s| {
        s.guest["deferred_init_ms"]
            .as_array()?
            .iter()
            .filter_map(|p| p[1].as_f64())
            .reduce(f64::max)
            .map(|m| m * 1e6)
    }),
    ("tsc_khz", |s| s.guest["tsc_khz"].as_f64()),
];

fn column(name: String, samples: Vec<Sample>) -> Result<Column> {
    let mut spread = BTreeMap::new();
    for (metric, read) in METRICS {
        if let Some(s) = Spread::of(samples.iter().filter_map(read).collect()) {
            spread.insert(metric, s);
        }
    }
    let all_ok = samples.iter().all(|s| s.ok);
    let mut samples = samples.into_iter();
    let first = samples.next().context("a column with no runs")?;
    Ok(Column {
        name,
        first,
        samples: samples.collect(),
        spread,
        all_ok,
    })
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Checks what the guests are asked for against the memory they will have, so
/// that an absurd size fails here, at once, rather than keep a guest busy.
fn check_sizes(args: &VmArgs) -> Result<()> {
    // QEMU's `pc` puts RAM past 3.5 GiB above 4 GiB, keeping 3 GiB below.
    let below_4g = if args.memory >= 0xe000_0000 {
        3 << 30
    } else {
        args.memory
    };
    let params = BootParams {
        cpus: args.cpus,
        trace_buf_size: args.trace_buf_size,
        crashkernel: args.crashkernel,
    };
    check_bounds(args.memory, below_4g, &params, args.workload).map_err(|e| {
        let option = match e.option {
            "trace_buf_size" => "--trace-buf-size",
            "crashkernel" => "--crashkernel",
            _ => "--workload",
        };
        anyhow::anyhow!(
            "{option}: {e}{}",
            if e.option == "trace_buf_size" {
                format!(
                    " ({} per vCPU, {} vCPUs)",
                    size::format(params.trace_buf_size.unwrap_or(0)),
                    args.cpus
                )
            } else {
                String::new()
            }
        )
    })
}

pub fn run(args: &VmArgs) -> Result<ExitCode> {
    if args.cpus == 0 || args.nodes == 0 || u64::from(args.nodes) > u64::from(args.cpus) * 64 {
        bail!("--cpus and --nodes must be at least 1");
    }
    if args.memory < 64 << 20 {
        bail!("--memory must be at least 64M");
    }
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    if let Some(extra) = &args.append {
        if let Some(o) = extra
            .split_ascii_whitespace()
            .find(|o| o.starts_with("meminit="))
        {
            bail!("--append '{o}': choose the strategy with --strategy, so that each column runs what it is labelled");
        }
    }
    check_sizes(args)?;
    let linux_kernel = match (args.peer, &args.kernel) {
        (Some(Peer::Linux), Some(k)) => Some(k.clone()),
        (Some(Peer::Linux), None) => Some(repo_dir().join("target/linux/vmlinuz")),
        (None, _) => None,
    };
    if let Some(kernel) = &linux_kernel {
        if !kernel.is_file() {
            bail!(
                "no Linux kernel at {}: run scripts/setup --vm (it unpacks Debian's package there) or give --kernel",
                kernel.display()
            );
        }
    }
    let spike = matches!(args.workload, Workload::Spike { .. });
    let (initramfs, initramfs_note) = match (&linux_kernel, &args.initramfs) {
        (None, _) => (None, None),
        (Some(_), Some(i)) if !spike => bail!(
            "--initramfs {}: only a spike (--workload spike:SIZE) boots Linux with an initramfs",
            i.display()
        ),
        (Some(_), None) if !spike => (None, None),
        (Some(_), Some(i)) if !i.is_file() => bail!("--initramfs {}: no such file", i.display()),
        (Some(_), Some(i)) => (Some(i.clone()), None),
        (Some(_), None) => {
            let default = repo_dir().join("target/linux/initramfs.cpio");
            if default.is_file() {
                (Some(default), None)
            } else {
                let why =
                    std::fs::read_to_string(repo_dir().join("target/linux/initramfs.missing"))
                        .unwrap_or_else(|_| "scripts/setup --vm has not built it".into());
                (
                    None,
                    Some(format!(
                        "initramfs: none at {} ({}): Linux runs without it and stops at its root-mount panic",
                        default.display(),
                        why.trim()
                    )),
                )
            }
        }
    };
    let guest = vm::build_guest(&repo_dir().join("guest"))?;
    let (accel, reason) = match args.accel {
        AccelArg::Auto => vm::choose_accel(&guest),
        AccelArg::Kvm => (Accel::Kvm, "asked for with --accel kvm".into()),
        AccelArg::Tcg => (Accel::Tcg, "asked for with --accel tcg".into()),
    };
    let shape = VmShape {
        memory: args.memory,
        cpus: args.cpus,
        nodes: args.nodes,
    };
    let ram_kib = vm::guest_ram_kib(&shape);
    let limit = Duration::from_secs(args.timeout);
    let strategies: Vec<&str> = match args.strategy {
        Some(StrategyArg::Eager) => vec!["eager"],
        Some(StrategyArg::Deferred) => vec!["deferred"],
        Some(StrategyArg::Ondemand) => vec!["ondemand"],
        None => vec!["eager", "deferred", "ondemand"],
    };
    let progress = |what: &str| {
        let what = what.to_string();
        move |elapsed: Duration, line: &str| {
            eprintln!("  {what}: {} s so far; last: {line}", elapsed.as_secs())
        }
    };
    let mut columns = Vec::new();
    for s in strategies {
        let mut append = format!("meminit={s} workload={} hold=serial", args.workload);
        if let Some(t) = args.trace_buf_size {
            append.push_str(&format!(" trace_buf_size={t}"));
        }
        if let Some(c) = args.crashkernel {
            append.push_str(&format!(" crashkernel={c}"));
        }
        if let GuestGranularity::Chunk = args.memmap_granularity {
            append.push_str(" memmap=chunk");
        }
        if args.accept_memory {
            append.push_str(" accept=zero");
        }
        if let Some(extra) = &args.append {
            append.push(' ');
            append.push_str(extra);
        }
        let mut qemu_args = vm::qemu_args(&shape, accel, &guest, &append);
        if !args.no_balloon {
            qemu_args.extend(vm::balloon_args());
        }
        let mut samples = Vec::new();
        for i in 0..args.runs {
            if !args.json {
                eprintln!(
                    "booting the meminit guest: {} {s} (run {} of {})",
                    size::format(args.memory),
                    i + 1,
                    args.runs
                );
            }
            let run = vm::run_qemu(
                &vm::Run {
                    args: &qemu_args,
                    accel,
                    ram_kib: &ram_kib,
                    finish: Finish::Release,
                    limit,
                    release_settle: Duration::ZERO,
                },
                &progress(s),
            )?;
            let json = vm::guest_json(&run.console);
            let ok = run.exit_status == Some(GUEST_SUCCESS) && json.is_some();
            let failure = (!ok).then(|| vm::failure_reason(&run.console));
            if !ok && !args.json {
                eprintln!(
                    "the {s} guest did not succeed (exit {:?}); its console:\n{}",
                    run.exit_status, run.console
                );
            }
            samples.push(Sample {
                guest: json.unwrap_or(Value::Null),
                host: run,
                ok,
                failure,
            });
            if !ok {
                // A guest that fails once will fail again: say so now.
                break;
            }
        }
        columns.push(column(s.to_string(), samples)?);
    }
    let (linux_append, mut linux_notes) = vm::linux_append(&PeerOptions {
        trace_buf_size: args.trace_buf_size,
        crashkernel: args.crashkernel,
        workload: args.workload != Workload::Idle,
        spike: match args.workload {
            Workload::Spike { bytes } => Some(bytes),
            _ => None,
        },
        initramfs: initramfs.is_some(),
        tsc_khz: columns
            .iter()
            .find_map(|c| c.spread.get("tsc_hz"))
            .map(|s| (s.median / 1000.0).round() as u64),
    });
    linux_notes.extend(initramfs_note);
    if args.no_balloon && linux_kernel.is_some() {
        linux_notes
            .push("balloon: left off (--no-balloon): Linux reports nothing to the host".into());
    }
    if let Some(kernel) = linux_kernel {
        let mut qemu_args = vm::qemu_args(&shape, accel, &kernel, &linux_append);
        if !args.no_balloon {
            qemu_args.extend(vm::balloon_args());
        }
        if let Some(i) = &initramfs {
            qemu_args.extend(["-initrd".into(), i.display().to_string()]);
        }
        let mut samples = Vec::new();
        for i in 0..args.runs {
            if !args.json {
                eprintln!(
                    "booting Linux: {} (run {} of {})",
                    kernel.display(),
                    i + 1,
                    args.runs
                );
            }
            let run = vm::run_qemu(
                &vm::Run {
                    args: &qemu_args,
                    accel,
                    ram_kib: &ram_kib,
                    // With the initramfs, /init waits at its end to be measured;
                    // without, Linux waits at its root-mount panic.
                    finish: if initramfs.is_some() {
                        Finish::Release
                    } else {
                        Finish::StopAtPanic
                    },
                    limit,
                    // Linux reports in passes 2 s apart: wait until three in a
                    // row hand nothing more back.
                    release_settle: Duration::from_secs(6),
                },
                &progress("linux"),
            )
            .context("running Linux")?;
            let linux = vm::parse_linux_console(&run.console);
            let ok = run.at_rest
                && if initramfs.is_some() {
                    // /init ran to its end and, with a spike, was measured at
                    // each of its markers.
                    linux.reached_init
                        && (!spike
                            || (run.qemu_rss_boot_bytes.is_some()
                                && run.qemu_rss_peak_bytes.is_some()
                                && run.qemu_rss_after_release_bytes.is_some()))
                } else {
                    linux.reached_rootfs
                };
            samples.push(Sample {
                guest: serde_json::to_value(&linux)?,
                failure: (!ok).then(|| vm::failure_reason(&run.console)),
                host: run,
                ok,
            });
            if !ok {
                break;
            }
        }
        columns.push(column("linux".into(), samples)?);
    }
    let report = VmReport {
        memory_bytes: args.memory,
        cpus: args.cpus,
        nodes: args.nodes,
        accel,
        accel_reason: reason,
        runs_each: args.runs,
        workload: args.workload.to_string(),
        balloon: !args.no_balloon,
        memory_compared: "guest_ram_rss_bytes: the guest's RAM resident on the host, at rest (smaps of QEMU's guest-RAM mapping); QEMU's own memory beside it differs between guests for reasons of QEMU's (under emulation: its translation cache)",
        linux_notes,
        runs: columns,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.runs.iter().all(|r| r.all_ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `median [min–max]`, or the value alone for one run, formatted by `f`.
fn spread_cell(c: &Column, metric: &str, f: &dyn Fn(u64) -> String) -> Option<String> {
    let s = c.spread.get(metric)?;
    let v = |x: f64| f(x.round() as u64);
    Some(if s.n <= 1 || s.min == s.max {
        v(s.median)
    } else {
        format!("{} [{}–{}]", v(s.median), v(s.min), v(s.max))
    })
}

/// Whether the column is the Linux peer's.
fn is_linux(c: &Column) -> bool {
    c.name == "linux"
}

/// A meminit guest's time `metric` with its spread; `for_linux` in Linux's column.
fn guest_time(c: &Column, metric: &str, for_linux: &str) -> String {
    if is_linux(c) {
        for_linux.into()
    } else {
        spread_cell(c, metric, &format_ns).unwrap_or("-".into())
    }
}

fn print_table(r: &VmReport) {
    println!(
        "guest {}, {} vCPU{}, {} node{}, workload {}, balloon {}, under {} ({}); median [min–max] of {} run{} each",
        size::format(r.memory_bytes),
        r.cpus,
        if r.cpus == 1 { "" } else { "s" },
        r.nodes,
        if r.nodes == 1 { "" } else { "s" },
        r.workload,
        if r.balloon { "on" } else { "off" },
        r.accel.name(),
        r.accel_reason,
        r.runs_each,
        if r.runs_each == 1 { "" } else { "s" },
    );
    let bytes = |b: u64| size::format(b);
    let mhz = |hz: u64| format!("{:.0} MHz", hz as f64 / 1e6);
    type Row = (&'static str, Box<dyn Fn(&Column) -> String>);
    let mut rows: Vec<Row> = vec![
        (
            "guest RAM resident, at rest (compared)",
            Box::new(move |c| spread_cell(c, "guest_ram_rss_bytes", &bytes).unwrap_or("-".into())),
        ),
        (
            "QEMU's own memory, at rest",
            Box::new(move |c| spread_cell(c, "qemu_own_rss_bytes", &bytes).unwrap_or("-".into())),
        ),
        (
            "QEMU resident in all, at rest",
            Box::new(move |c| spread_cell(c, "qemu_rss_bytes", &bytes).unwrap_or("-".into())),
        ),
        (
            "QEMU peak, with start-up transient",
            Box::new(move |c| spread_cell(c, "qemu_peak_rss_bytes", &bytes).unwrap_or("-".into())),
        ),
        (
            "wall time (host)",
            Box::new(|c| spread_cell(c, "wall_ns", &format_ns).unwrap_or("-".into())),
        ),
        (
            "TSC frequency the guest uses",
            Box::new(move |c| {
                if is_linux(c) {
                    spread_cell(c, "tsc_khz", &|k| mhz(k * 1000))
                } else {
                    spread_cell(c, "tsc_hz", &mhz)
                }
                .unwrap_or("-".into())
            }),
        ),
        (
            "memmap init before the allocator serves",
            Box::new(move |c| {
                if is_linux(c) {
                    spread_cell(c, "early_memmap_ns", &format_ns)
                } else {
                    spread_cell(c, "ready_ns", &format_ns)
                }
                .unwrap_or("-".into())
            }),
        ),
        (
            "memmap init after, in the background",
            Box::new(move |c| {
                if is_linux(c) {
                    spread_cell(c, "deferred_init_ns", &format_ns).unwrap_or("-".into())
                } else {
                    match c.first.guest["strategy"].as_str() {
                        Some("deferred") => {
                            spread_cell(c, "workers_ns", &format_ns).unwrap_or("-".into())
                        }
                        Some("eager") => "none (all before)".into(),
                        Some("ondemand") => "none (on use)".into(),
                        _ => "-".into(),
                    }
                }
            }),
        ),
        (
            "memmap init on use (growth)",
            Box::new(move |c| guest_time(c, "grow_ns", "-")),
        ),
        (
            "boot allocations, written as Linux does",
            Box::new(move |c| guest_time(c, "boot_allocs_ns", "(not timed)")),
        ),
        (
            "all initialised, from allocator start",
            Box::new(move |c| {
                if is_linux(c) {
                    "-".into()
                } else if c.first.guest["full_init_ns"].is_null() {
                    "never".into()
                } else {
                    spread_cell(c, "full_init_ns", &format_ns).unwrap_or("-".into())
                }
            }),
        ),
        (
            "memmap populated (guest)",
            Box::new(|c| match c.first.guest["memmap_populated_bytes"].as_u64() {
                Some(b) => size::format(b),
                None if c.name == "linux" => "all (Linux)".into(),
                None => "-".into(),
            }),
        ),
        (
            "chunks: boot/workers/growth/look-up (guest)",
            Box::new(|c| {
                let n = |by: &str| c.first.guest[format!("chunks_by_{by}")].as_u64();
                match (n("boot"), n("workers"), n("growth"), n("lookup")) {
                    (Some(b), Some(w), Some(g), Some(l)) => format!("{b}/{w}/{g}/{l}"),
                    _ => "-".into(),
                }
            }),
        ),
        (
            "slow path p50 / p99 (guest)",
            Box::new(move |c| {
                let slow = &c.first.guest["alloc_slow"];
                match (slow["median_ns"].as_u64(), slow["p99_ns"].as_u64()) {
                    (Some(a), Some(b)) if slow["count"].as_u64() > Some(0) => {
                        format!("{} / {}", format_ns(a), format_ns(b))
                    }
                    _ => "-".into(),
                }
            }),
        ),
        (
            "memory accepted (guest)",
            Box::new(|c| match c.first.guest["accepted_bytes"].as_u64() {
                Some(b) if c.first.guest["accept"] == "zero" => size::format(b),
                _ => "-".into(),
            }),
        ),
        (
            "allocation failures (guest)",
            Box::new(|c| {
                c.first.guest["alloc_failures"]
                    .as_u64()
                    .map_or("-".into(), |f| f.to_string())
            }),
        ),
        (
            "how it ended",
            Box::new(|c| {
                let how = if c.first.host.stopped_by_host {
                    "stopped at rest".to_string()
                } else {
                    c.first
                        .host
                        .exit_status
                        .map_or("killed".into(), |s| format!("exit {s}"))
                };
                format!("{how}{}", if c.all_ok { " ok" } else { " FAILED" })
            }),
        ),
    ];
    if r.runs
        .iter()
        .any(|c| c.spread.contains_key("qemu_rss_boot_bytes"))
    {
        // A spike: QEMU's resident memory at its three points comes first.
        let spike_rows: Vec<Row> = vec![
            (
                "QEMU resident after boot (spike)",
                Box::new(move |c| {
                    spread_cell(c, "qemu_rss_boot_bytes", &bytes).unwrap_or("-".into())
                }),
            ),
            (
                "QEMU resident at the spike's peak",
                Box::new(move |c| {
                    spread_cell(c, "qemu_rss_peak_bytes", &bytes).unwrap_or("-".into())
                }),
            ),
            (
                "QEMU resident after release",
                Box::new(move |c| {
                    spread_cell(c, "qemu_rss_after_release_bytes", &bytes).unwrap_or("-".into())
                }),
            ),
            (
                "reported free to the host (guest)",
                Box::new(move |c| {
                    if is_linux(c) {
                        "(not counted)".into()
                    } else {
                        spread_cell(c, "reported_bytes", &bytes).unwrap_or("-".into())
                    }
                }),
            ),
        ];
        rows.splice(0..0, spike_rows);
    }
    let headers: Vec<&str> = r.runs.iter().map(|c| c.name.as_str()).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, r.runs.iter().map(cell).collect()))
        .collect();
    crate::print_columns(&headers, &table);
    println!(
        "  the memory comparison is \"guest RAM resident, at rest\": the guest's RAM on the host; QEMU's"
    );
    println!(
        "  own memory (under emulation mostly its translation cache) is QEMU's, not the guest's."
    );
    println!("  before the allocator serves: meminit's start (its bootstrap) against Linux's memmap init");
    println!(
        "  of the part it does not defer; in the background: meminit's deferred workers against"
    );
    println!("  Linux's deferred-init threads (the slowest node). \"all initialised\" also counts the boot");
    println!("  allocations and, with several vCPUs, their start-up.");
    for n in &r.linux_notes {
        println!("  {n}");
    }
    for c in &r.runs {
        for s in std::iter::once(&c.first).chain(&c.samples) {
            if let Some(f) = &s.failure {
                println!("  {} failed: {f}", c.name);
            }
        }
    }
}
