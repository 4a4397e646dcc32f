//! `meminit vm`: the guest kernel (and Linux) under QEMU, measured from outside.
//!
//! This module owns `vm`'s command line, its checks, and the order of the
//! boots; running and measuring QEMU is the `meminit-vm` crate's, the figures
//! kept of each run `figures`', the table `table`'s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use meminit_boot::{check_bounds, BootParams};
use meminit_host::sim::Workload;
use meminit_host::size;
use meminit_vm::{self as vm, Accel, Finish, PeerOptions, VmShape, GUEST_SUCCESS};
use serde_json::Value;

use crate::args::StrategyArg;

mod figures;
mod hotplug;
mod table;

use figures::{column, Column, Sample, VmReport};
use table::print_table;

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
    #[arg(long, default_value = "2G", value_parser = crate::args::parse_size)]
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
    #[arg(long, value_parser = crate::args::parse_size)]
    trace_buf_size: Option<u64>,
    /// The guest's `crashkernel=` (given to Linux too).
    #[arg(long, value_parser = crate::args::parse_size)]
    crashkernel: Option<u64>,
    /// The guest's `workload=`: `idle`, `container[:SIZE]`, `random[:OPS]`,
    /// `spike[:SIZE]` (SIZE written, freed and reported to the host; QEMU's memory
    /// is measured after boot, at the peak and after the release; Linux runs it
    /// too, from the initramfs scripts/setup --vm builds), or `files[:COUNT]`
    /// (COUNT small files written, 99% deleted at random, then a rest; Linux
    /// runs it on a tmpfs, from the same initramfs).
    #[arg(long, default_value = "idle", value_parser = crate::args::parse_workload)]
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
    /// The guest's `memmap=`: map each chunk's memmap on 4 KiB pages of a pool
    /// outside the chunks, so that residency follows chunks up and down (the
    /// guest's default), or a section's at once on a 2 MiB page of the section,
    /// which stays once populated.
    #[arg(long, visible_alias = "memmap", value_enum, default_value = "chunk")]
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
    /// Grow the guest by SIZE through virtio-mem after boot (QMP qom-set of
    /// requested-size), write and free that much in it, and shrink it back to
    /// nothing plugged; measure each step (one meminit strategy, ondemand unless
    /// --strategy says, and Linux beside it with --peer linux).
    #[arg(long, value_parser = crate::args::parse_size, value_name = "SIZE")]
    hotplug: Option<u64>,
    /// With --hotplug: write only this much of the plugged memory (default: all
    /// of it), so that a plug far larger than the guest or the host can hold
    /// is measured (`--memory 256M --hotplug 64G --hotplug-use 1G`).
    #[arg(long, value_parser = crate::args::parse_size, value_name = "SIZE")]
    hotplug_use: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    check_args(args)?;
    if let Some(bytes) = args.hotplug {
        hotplug::check(bytes, args.hotplug_use, args.workload, args.nodes)?;
        let strategy = match args.strategy {
            Some(StrategyArg::Eager) => "eager",
            Some(StrategyArg::Deferred) => "deferred",
            Some(StrategyArg::Ondemand) | None => "ondemand",
        };
        return hotplug::run(&hotplug::HotplugArgs {
            bytes,
            used: args.hotplug_use.unwrap_or(bytes),
            memory: args.memory,
            cpus: args.cpus,
            strategy,
            guest_append: guest_append(args, strategy),
            guest_dir: repo_dir().join("guest"),
            linux: args.peer.map(|Peer::Linux| {
                (
                    args.kernel
                        .clone()
                        .unwrap_or_else(|| repo_dir().join("target/linux/vmlinuz")),
                    args.initramfs.clone(),
                    repo_dir().join("target/linux/initramfs.cpio"),
                )
            }),
            accel: match args.accel {
                AccelArg::Auto => None,
                AccelArg::Kvm => Some(Accel::Kvm),
                AccelArg::Tcg => Some(Accel::Tcg),
            },
            trace_buf_size: args.trace_buf_size,
            crashkernel: args.crashkernel,
            no_balloon: args.no_balloon,
            runs: args.runs,
            timeout: args.timeout,
            json: args.json,
        });
    }
    let linux_kernel = linux_kernel(args)?;
    let (initramfs, initramfs_note) = initramfs(args, linux_kernel.is_some())?;
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
    let boot = Boot {
        args,
        shape: &shape,
        accel,
        ram_kib: &ram_kib,
    };
    let strategies: Vec<&str> = match args.strategy {
        Some(StrategyArg::Eager) => vec!["eager"],
        Some(StrategyArg::Deferred) => vec!["deferred"],
        Some(StrategyArg::Ondemand) => vec!["ondemand"],
        None => vec!["eager", "deferred", "ondemand"],
    };
    let mut columns = Vec::new();
    for s in strategies {
        columns.push(boot.meminit(&guest, s)?);
    }
    let (linux_append, mut linux_notes) = vm::linux_append(&PeerOptions {
        trace_buf_size: args.trace_buf_size,
        crashkernel: args.crashkernel,
        workload: args.workload != Workload::Idle,
        spike: match args.workload {
            Workload::Spike { bytes } => Some(bytes),
            _ => None,
        },
        files: match args.workload {
            Workload::Files { files } => Some(files),
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
        columns.push(boot.linux(&kernel, initramfs.as_deref(), &linux_append)?);
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

/// The checks on the command line that need no guest: each option within its
/// bounds, and none given that could not apply.
fn check_args(args: &VmArgs) -> Result<()> {
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
    if let (None, Some(used)) = (args.hotplug, args.hotplug_use) {
        bail!(
            "--hotplug-use {}: bounds what --hotplug's workload writes; add --hotplug SIZE",
            size::format(used)
        );
    }
    if args.peer.is_none() {
        if let Some(k) = &args.kernel {
            bail!(
                "--kernel {}: only the Linux peer boots a kernel of its own; add --peer linux",
                k.display()
            );
        }
        if let Some(i) = &args.initramfs {
            bail!(
                "--initramfs {}: only the Linux peer boots an initramfs; add --peer linux",
                i.display()
            );
        }
    }
    check_sizes(args)
}

/// The Linux peer's kernel, if there is a peer: `--kernel`, or the one
/// scripts/setup --vm unpacked.
fn linux_kernel(args: &VmArgs) -> Result<Option<PathBuf>> {
    let kernel = match (args.peer, &args.kernel) {
        (Some(Peer::Linux), Some(k)) => k.clone(),
        (Some(Peer::Linux), None) => repo_dir().join("target/linux/vmlinuz"),
        (None, _) => return Ok(None),
    };
    if !kernel.is_file() {
        bail!(
            "no Linux kernel at {}: run scripts/setup --vm (it unpacks Debian's package there) or give --kernel",
            kernel.display()
        );
    }
    Ok(Some(kernel))
}

/// The Linux peer's initramfs (only a spike boots one), and a note where the
/// default one is missing.
fn initramfs(args: &VmArgs, linux: bool) -> Result<(Option<PathBuf>, Option<String>)> {
    let spike = matches!(
        args.workload,
        Workload::Spike { .. } | Workload::Files { .. }
    );
    Ok(match (linux, &args.initramfs) {
        (false, _) => (None, None),
        (true, Some(i)) if !spike => bail!(
            "--initramfs {}: only a spike or files (--workload spike:SIZE or files:COUNT) boots Linux with an initramfs",
            i.display()
        ),
        (true, None) if !spike => (None, None),
        (true, Some(i)) if !i.is_file() => bail!("--initramfs {}: no such file", i.display()),
        (true, Some(i)) => (Some(i.clone()), None),
        (true, None) => {
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
    })
}

/// The meminit guest's kernel command line for strategy `s`.
fn guest_append(args: &VmArgs, s: &str) -> String {
    let mut append = format!("meminit={s} workload={} hold=serial", args.workload);
    if let Some(t) = args.trace_buf_size {
        append.push_str(&format!(" trace_buf_size={t}"));
    }
    if let Some(c) = args.crashkernel {
        append.push_str(&format!(" crashkernel={c}"));
    }
    append.push_str(match args.memmap_granularity {
        GuestGranularity::Chunk => " memmap=chunk",
        GuestGranularity::Section => " memmap=section",
    });
    if args.accept_memory {
        append.push_str(" accept=zero");
    }
    if let Some(extra) = &args.append {
        append.push(' ');
        append.push_str(extra);
    }
    append
}

/// What every boot of every guest shares.
struct Boot<'a> {
    args: &'a VmArgs,
    shape: &'a VmShape,
    accel: Accel,
    ram_kib: &'a [u64],
}

impl Boot<'_> {
    /// QEMU's arguments for `kernel` with `append`, and the balloon unless it
    /// is left off.
    fn qemu_args(&self, kernel: &Path, append: &str) -> Vec<String> {
        let mut qemu_args = vm::qemu_args(self.shape, self.accel, kernel, append);
        if !self.args.no_balloon {
            qemu_args.extend(vm::balloon_args());
        }
        qemu_args
    }

    /// Prints what the run is at every ten seconds.
    fn progress(what: &str) -> impl Fn(Duration, &str) + '_ {
        move |elapsed: Duration, line: &str| {
            eprintln!("  {what}: {} s so far; last: {line}", elapsed.as_secs())
        }
    }

    /// The meminit guest under strategy `s`, `--runs` times (fewer if it fails).
    fn meminit(&self, guest: &Path, s: &str) -> Result<Column> {
        let args = self.args;
        let qemu_args = self.qemu_args(guest, &guest_append(args, s));
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
                    accel: self.accel,
                    ram_kib: self.ram_kib,
                    finish: Finish::Release,
                    limit: Duration::from_secs(args.timeout),
                    release_settle: Duration::ZERO,
                },
                &Self::progress(s),
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
        column(s.to_string(), samples)
    }

    /// Linux, `--runs` times (fewer if it fails).
    fn linux(&self, kernel: &Path, initramfs: Option<&Path>, append: &str) -> Result<Column> {
        let args = self.args;
        let spike = matches!(
            args.workload,
            Workload::Spike { .. } | Workload::Files { .. }
        );
        let mut qemu_args = self.qemu_args(kernel, append);
        if let Some(i) = initramfs {
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
                    accel: self.accel,
                    ram_kib: self.ram_kib,
                    // With the initramfs, /init waits at its end to be measured;
                    // without, Linux waits at its root-mount panic.
                    finish: if initramfs.is_some() {
                        Finish::Release
                    } else {
                        Finish::StopAtPanic
                    },
                    limit: Duration::from_secs(args.timeout),
                    // Linux reports in passes 2 s apart: wait until three in a
                    // row hand nothing more back.
                    release_settle: Duration::from_secs(6),
                },
                &Self::progress("linux"),
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
        column("linux".into(), samples)
    }
}
