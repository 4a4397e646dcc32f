//! `meminit vm`: the guest kernel (and Linux) under QEMU, measured from outside.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use meminit_host::size;
use meminit_host::vm::{self, Accel, VmRun, VmShape, GUEST_SUCCESS};
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
    /// The guest's `trace_buf_size=`.
    #[arg(long, value_parser = crate::parse_size)]
    trace_buf_size: Option<u64>,
    /// The guest's `crashkernel=`.
    #[arg(long, value_parser = crate::parse_size)]
    crashkernel: Option<u64>,
    /// The guest's `workload=`: `idle`, `container[:SIZE]` or `random[:OPS]`.
    #[arg(long, default_value = "idle", value_parser = crate::parse_workload)]
    workload: meminit_host::sim::Workload,
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

/// One column of the table: a meminit strategy or the peer.
#[derive(Serialize)]
struct Column {
    name: String,
    #[serde(flatten)]
    host: VmRun,
    /// What the guest printed (meminit: its JSON line; Linux: its console figures).
    guest: Value,
    ok: bool,
}

#[derive(Serialize)]
struct VmReport {
    memory_bytes: u64,
    cpus: u32,
    nodes: u32,
    accel: Accel,
    accel_reason: String,
    runs: Vec<Column>,
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(args: &VmArgs) -> Result<ExitCode> {
    if args.cpus == 0 || args.nodes == 0 || u64::from(args.nodes) > u64::from(args.cpus) * 64 {
        bail!("--cpus and --nodes must be at least 1");
    }
    if args.memory < 64 << 20 {
        bail!("--memory must be at least 64M");
    }
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
    let limit = Duration::from_secs(args.timeout);
    let strategies: Vec<&str> = match args.strategy {
        Some(StrategyArg::Eager) => vec!["eager"],
        Some(StrategyArg::Deferred) => vec!["deferred"],
        Some(StrategyArg::Ondemand) => vec!["ondemand"],
        None => vec!["eager", "deferred", "ondemand"],
    };
    let mut runs = Vec::new();
    for s in strategies {
        let mut append = format!("meminit={s} workload={}", args.workload);
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
        if !args.json {
            eprintln!(
                "booting the meminit guest: {} {s}",
                size::format(args.memory)
            );
        }
        let run = vm::run_qemu(&vm::qemu_args(&shape, accel, &guest, &append), accel, limit)?;
        let json = vm::guest_json(&run.console);
        let ok = run.exit_status == Some(GUEST_SUCCESS) && json.is_some();
        if !ok && !args.json {
            eprintln!(
                "the {s} guest did not succeed (exit {:?}); its console:\n{}",
                run.exit_status, run.console
            );
        }
        runs.push(Column {
            name: s.to_string(),
            guest: json.unwrap_or(Value::Null),
            host: run,
            ok,
        });
    }
    if let Some(kernel) = linux_kernel {
        if !args.json {
            eprintln!("booting Linux: {}", kernel.display());
        }
        let run = vm::run_qemu(
            &vm::qemu_args(&shape, accel, &kernel, vm::LINUX_APPEND),
            accel,
            limit,
        )
        .context("running Linux")?;
        let linux = vm::parse_linux_console(&run.console);
        let ok = linux.reached_rootfs;
        runs.push(Column {
            name: "linux".into(),
            guest: serde_json::to_value(&linux)?,
            host: run,
            ok,
        });
    }
    let report = VmReport {
        memory_bytes: args.memory,
        cpus: args.cpus,
        nodes: args.nodes,
        accel,
        accel_reason: reason,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.runs.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(r: &VmReport) {
    println!(
        "guest {}, {} vCPU{}, {} node{}, under {} ({})",
        size::format(r.memory_bytes),
        r.cpus,
        if r.cpus == 1 { "" } else { "s" },
        r.nodes,
        if r.nodes == 1 { "" } else { "s" },
        r.accel.name(),
        r.accel_reason
    );
    let ms = |v: &Value| v.as_u64().map(format_ns);
    type Row = (&'static str, Box<dyn Fn(&Column) -> String>);
    let rows: Vec<Row> = vec![
        (
            "QEMU peak resident (host)",
            Box::new(|c| size::format(c.host.qemu_peak_rss_bytes)),
        ),
        (
            "QEMU resident at exit (host)",
            Box::new(|c| size::format(c.host.qemu_end_rss_bytes)),
        ),
        ("wall time (host)", Box::new(|c| format_ns(c.host.wall_ns))),
        (
            "allocator ready / early memmap init",
            Box::new(move |c| {
                if c.name == "linux" {
                    c.guest["early_memmap_ms"]
                        .as_f64()
                        .map_or("-".into(), |m| format!("{m:.1} ms"))
                } else {
                    ms(&c.guest["ready_ns"]).unwrap_or("-".into())
                }
            }),
        ),
        (
            "all memory initialised / deferred init",
            Box::new(move |c| {
                if c.name == "linux" {
                    let per_node: Vec<String> = c.guest["deferred_init_ms"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|p| format!("{} ms", p[1].as_u64().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    if per_node.is_empty() {
                        "-".into()
                    } else {
                        per_node.join(", ")
                    }
                } else {
                    ms(&c.guest["full_init_ns"]).unwrap_or("never".into())
                }
            }),
        ),
        (
            "memmap populated (guest)",
            Box::new(|c| match c.guest["memmap_populated_bytes"].as_u64() {
                Some(b) => size::format(b),
                None if c.name == "linux" => "all (Linux)".into(),
                None => "-".into(),
            }),
        ),
        (
            "chunks: boot/workers/growth/look-up (guest)",
            Box::new(|c| {
                let n = |by: &str| c.guest[format!("chunks_by_{by}")].as_u64();
                match (n("boot"), n("workers"), n("growth"), n("lookup")) {
                    (Some(b), Some(w), Some(g), Some(l)) => format!("{b}/{w}/{g}/{l}"),
                    _ => "-".into(),
                }
            }),
        ),
        (
            "slow path p50 / p99 (guest)",
            Box::new(move |c| {
                let slow = &c.guest["alloc_slow"];
                match (ms(&slow["median_ns"]), ms(&slow["p99_ns"])) {
                    (Some(a), Some(b)) if slow["count"].as_u64() > Some(0) => {
                        format!("{a} / {b}")
                    }
                    _ => "-".into(),
                }
            }),
        ),
        (
            "memory accepted (guest)",
            Box::new(|c| match c.guest["accepted_bytes"].as_u64() {
                Some(b) if c.guest["accept"] == "zero" => size::format(b),
                _ => "-".into(),
            }),
        ),
        (
            "allocation failures (guest)",
            Box::new(|c| {
                c.guest["alloc_failures"]
                    .as_u64()
                    .map_or("-".into(), |f| f.to_string())
            }),
        ),
        (
            "exit status",
            Box::new(|c| {
                format!(
                    "{}{}",
                    c.host
                        .exit_status
                        .map_or("killed".into(), |s| s.to_string()),
                    if c.ok { " ok" } else { " FAILED" }
                )
            }),
        ),
    ];
    let headers: Vec<&str> = r.runs.iter().map(|c| c.name.as_str()).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, r.runs.iter().map(cell).collect()))
        .collect();
    crate::print_columns(&headers, &table);
}
