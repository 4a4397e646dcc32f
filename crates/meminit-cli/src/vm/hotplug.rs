//! `meminit vm --hotplug SIZE`: the meminit guest (and, with `--peer linux`,
//! Linux) grown by SIZE through virtio-mem after boot and shrunk back, measured
//! the same way, side by side.
//!
//! Owns `--hotplug`'s checks, the two guests' command lines for it, and its
//! table and JSON; what the command line says comes from `vm` as [`HotplugArgs`]
//! (this module imports nothing of `vm`'s), and running the schedule and
//! measuring QEMU is `meminit_vm::hotplug`'s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use meminit_host::sim::Workload;
use meminit_host::size;
use meminit_vm::hotplug::{self as hp, HotplugRun, HotplugSpec, BLOCK_BYTES};
use meminit_vm::{self as vm, Accel, PeerOptions, VmShape};
use serde::Serialize;

use crate::table::{format_ns, print_columns, print_legend, print_wrapped, spread_text};

/// The most the guest's virtio-mem driver keeps account of (32768 blocks of 2 MiB).
const MAX_PLUG: u64 = 64 << 30;

/// What `vm` passes on from its command line.
pub(super) struct HotplugArgs {
    /// The plug, and how much of it the workload writes.
    pub bytes: u64,
    pub used: u64,
    pub memory: u64,
    pub cpus: u32,
    /// The meminit guest's strategy, and its command line without `hotplug=`.
    pub strategy: &'static str,
    pub guest_append: String,
    /// The guest's source (`guest/`).
    pub guest_dir: PathBuf,
    /// With `--peer linux`: the kernel, `--initramfs` if given, and the
    /// default initramfs.
    pub linux: Option<(PathBuf, Option<PathBuf>, PathBuf)>,
    /// `None`: decide by a trial boot.
    pub accel: Option<Accel>,
    pub trace_buf_size: Option<u64>,
    pub crashkernel: Option<u64>,
    pub no_balloon: bool,
    pub runs: u32,
    pub timeout: u64,
    pub json: bool,
}

/// What `--hotplug` cannot go with, said before anything boots.
pub(super) fn check(bytes: u64, used: Option<u64>, workload: Workload, nodes: u32) -> Result<()> {
    if bytes == 0 || !bytes.is_multiple_of(BLOCK_BYTES) {
        bail!("--hotplug {bytes}: a size of whole 2 MiB blocks (the device's block size), above 0");
    }
    if bytes > MAX_PLUG {
        bail!(
            "--hotplug {}: at most {} (the guest's virtio-mem driver keeps account of 32768 blocks of 2 MiB)",
            size::format(bytes),
            size::format(MAX_PLUG)
        );
    }
    if let Some(used) = used {
        if used == 0 || !used.is_multiple_of(4096) || used > bytes {
            bail!(
                "--hotplug-use {used}: whole 4 KiB pages, above 0 and at most the plug ({})",
                size::format(bytes)
            );
        }
    }
    if workload != Workload::Idle {
        bail!("--workload {workload}: --hotplug runs its own workload (SIZE written in the new memory and freed); leave --workload out");
    }
    if nodes > 1 {
        bail!("--nodes {nodes}: --hotplug plugs into a guest of one node");
    }
    Ok(())
}

/// The Linux peer's initramfs for `--hotplug`: one whose /init knows the schedule.
fn initramfs(given: Option<&Path>, default: &Path) -> Result<PathBuf> {
    let path = given.unwrap_or(default).to_path_buf();
    let bytes = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "--hotplug with --peer linux needs the initramfs scripts/setup --vm builds: {}: {e}",
            path.display()
        )
    })?;
    if !bytes.windows(19).any(|w| w == b"meminit_hotplug_use") {
        bail!(
            "{}: its /init has no hot-plug schedule, or one without --hotplug-use (built before they were added): run scripts/setup --vm",
            path.display()
        );
    }
    Ok(path)
}

/// One guest's runs.
#[derive(Serialize)]
struct HotplugColumn {
    name: String,
    runs: Vec<HotplugRun>,
    ok: bool,
    /// Why a run failed.
    failure: Option<String>,
}

#[derive(Serialize)]
struct HotplugReport {
    memory_bytes: u64,
    hotplug_bytes: u64,
    /// What the workload writes of it.
    hotplug_used_bytes: u64,
    accel: Accel,
    accel_reason: String,
    linux_memmap: &'static str,
    /// What Linux was given, and why.
    linux_notes: Vec<String>,
    columns: Vec<HotplugColumn>,
}

const LINUX_MEMMAP: &str = "computed, not measured: 64 B of struct page per 4 KiB page Linux onlined (MemTotal's growth), which onlining writes before any of it is usable";

pub(super) fn run(args: &HotplugArgs) -> Result<ExitCode> {
    let bytes = args.bytes;
    let linux = match &args.linux {
        Some((kernel, given, default)) => {
            if !kernel.is_file() {
                bail!(
                    "no Linux kernel at {}: run scripts/setup --vm or give --kernel",
                    kernel.display()
                );
            }
            Some((kernel.clone(), initramfs(given.as_deref(), default)?))
        }
        None => None,
    };
    let guest = vm::build_guest(&args.guest_dir)?;
    let (accel, accel_reason) = match args.accel {
        None => vm::choose_accel(&guest),
        Some(a) => (
            a,
            format!(
                "asked for with --accel {}",
                if a == Accel::Kvm { "kvm" } else { "tcg" }
            ),
        ),
    };
    let shape = VmShape {
        memory: args.memory,
        cpus: args.cpus,
        nodes: 1,
    };
    let mut ram_kib = vm::guest_ram_kib(&shape);
    ram_kib.push(bytes >> 10);
    let strategy = args.strategy;
    let used = args.used;
    let append = format!(
        "{} virtio_mem=on hotplug={bytes} hotplug_use={used}",
        args.guest_append
    );
    let mut columns = vec![column(
        args,
        &format!("meminit {strategy}"),
        &guest_args(args, &shape, accel, &guest, &append, None),
        accel,
        &ram_kib,
        bytes,
        Duration::ZERO,
    )?];
    let mut linux_notes = Vec::new();
    if let Some((kernel, initrd)) = linux {
        let tsc_khz = columns[0]
            .runs
            .iter()
            .find_map(|r| vm::guest_json(&r.console)?.get("tsc_hz")?.as_u64())
            .map(|hz| (hz + 500) / 1000);
        let (mut append, notes) = vm::linux_append(&PeerOptions {
            trace_buf_size: args.trace_buf_size,
            crashkernel: args.crashkernel,
            initramfs: true,
            tsc_khz,
            ..PeerOptions::default()
        });
        append.push_str(&format!(
            " memhp_default_state=online_movable meminit_hotplug={bytes} meminit_hotplug_use={used}"
        ));
        linux_notes = notes;
        linux_notes.push("hot-plug: Linux's initramfs /init loads virtio_mem; memhp_default_state=online_movable onlines hot-added memory movable, so that it can be unplugged".into());
        let qemu = guest_args(args, &shape, accel, &kernel, &append, Some(&initrd));
        // Linux reports free memory in passes 2 s apart: at the free, wait
        // until three in a row hand nothing more back.
        columns.push(column(
            args,
            "linux",
            &qemu,
            accel,
            &ram_kib,
            bytes,
            Duration::from_secs(6),
        )?);
    }
    let report = HotplugReport {
        memory_bytes: args.memory,
        hotplug_bytes: bytes,
        hotplug_used_bytes: args.used,
        accel,
        accel_reason,
        linux_memmap: LINUX_MEMMAP,
        linux_notes,
        columns,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.columns.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// QEMU's arguments for one guest of the schedule (the QMP socket is added per run).
fn guest_args(
    args: &HotplugArgs,
    shape: &VmShape,
    accel: Accel,
    kernel: &Path,
    append: &str,
    initrd: Option<&Path>,
) -> Vec<String> {
    let mut q = vm::qemu_args(shape, accel, kernel, append);
    if !args.no_balloon {
        q.extend(vm::balloon_args());
    }
    if let Some(i) = initrd {
        q.extend(["-initrd".into(), i.display().to_string()]);
    }
    q
}

/// `--runs` runs of one guest (fewer if one fails).
fn column(
    args: &HotplugArgs,
    name: &str,
    qemu_args: &[String],
    accel: Accel,
    ram_kib: &[u64],
    bytes: u64,
    freed_settle: Duration,
) -> Result<HotplugColumn> {
    let mut col = HotplugColumn {
        name: name.into(),
        runs: Vec::new(),
        ok: true,
        failure: None,
    };
    for i in 0..args.runs {
        if !args.json {
            eprintln!(
                "{name}: {} guest, plug of {} (run {} of {})",
                size::format(args.memory),
                size::format(bytes),
                i + 1,
                args.runs
            );
        }
        let qmp = hp::qmp_path();
        let mut q = qemu_args.to_vec();
        hp::add_device(&mut q, bytes, &qmp);
        let run = hp::run_hotplug(
            &HotplugSpec {
                args: &q,
                accel,
                ram_kib,
                bytes,
                qmp: &qmp,
                freed_settle,
                limit: Duration::from_secs(args.timeout),
            },
            &|t, line| eprintln!("  {name}: {} s so far; last: {line}", t.as_secs()),
        )?;
        let guest_ok = run
            .guest
            .get("ok")
            .is_none_or(|v| v.as_bool() == Some(true));
        let ok = run.steps.len() == hp::STEPS.len()
            && guest_ok
            && !run.timed_out
            && (name == "linux" || run.exit_status == Some(vm::GUEST_SUCCESS));
        if !ok {
            let why = vm::failure_reason(&run.console);
            if !args.json {
                eprintln!(
                    "{name} did not succeed (exit {:?}); its console:\n{}",
                    run.exit_status, run.console
                );
            }
            col.failure = Some(why);
            col.ok = false;
            col.runs.push(run);
            break;
        }
        col.runs.push(run);
    }
    Ok(col)
}

/// A figure of each run, as `median [min–max]` (the value alone for one run).
fn cell(
    runs: &[HotplugRun],
    get: &dyn Fn(&HotplugRun) -> Option<f64>,
    f: &dyn Fn(f64) -> String,
) -> String {
    let mut v: Vec<f64> = runs.iter().filter_map(get).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let median = v[v.len() / 2];
    spread_text(median, v[0], v[v.len() - 1], v.len(), f)
}

fn mib(x: f64) -> String {
    format!("{:.1} MiB", x / f64::from(1u32 << 20))
}

fn ns(x: f64) -> String {
    format_ns(x.round() as u64)
}

fn num(r: &HotplugRun, key: &str) -> Option<f64> {
    r.guest.get(key).and_then(serde_json::Value::as_f64)
}

/// Linux's memmap for the memory onlined above `before_kib`, computed.
fn linux_memmap(r: &HotplugRun, total_key: &str) -> Option<f64> {
    Some((num(r, total_key)? - num(r, "before_kib")?).max(0.0) * 1024.0 / 64.0)
}

type Row<'a> = (&'a str, Box<dyn Fn(&HotplugColumn) -> String>);

/// A memmap row: for the meminit guest, the memmap it reports at `field`
/// beyond what it had when the schedule began; for Linux, computed from the
/// memory it had onlined at `linux_total` (marked "(c)").
fn memmap_row(label: &'static str, field: &'static str, linux_total: &'static str) -> Row<'static> {
    (
        label,
        Box::new(move |c| {
            if c.name == "linux" {
                cell(&c.runs, &|r| linux_memmap(r, linux_total), &mib) + " (c)"
            } else {
                cell(
                    &c.runs,
                    &|r| {
                        num(r, field)
                            .zip(num(r, "memmap_ready_bytes"))
                            .map(|(a, b)| (a - b).max(0.0))
                    },
                    &mib,
                )
            }
        }),
    )
}

fn rss_row(label: &'static str, step: &'static str) -> Row<'static> {
    (
        label,
        Box::new(move |c| cell(&c.runs, &|r| r.rss_at(step).map(|b| b as f64), &mib)),
    )
}

fn print_table(r: &HotplugReport) {
    let runs = r.columns.iter().map(|c| c.runs.len()).max().unwrap_or(0);
    print_wrapped(
        "  ",
        &format!(
        "virtio-mem hot-plug: {} plugged into a {} guest after boot, {} of it used, freed and unplugged; {} ({}); median [min–max] of {runs} run(s)",
        size::format(r.hotplug_bytes),
        size::format(r.memory_bytes),
        if r.hotplug_used_bytes == r.hotplug_bytes {
            "all".to_string()
        } else {
            size::format(r.hotplug_used_bytes)
        },
        r.accel.name(),
        r.accel_reason
        ),
    );
    let is_linux = |c: &HotplugColumn| c.name == "linux";
    let rows: Vec<Row<'static>> = vec![
        (
            "usable after the request (guest)",
            Box::new(|c| {
                let usable = cell(&c.runs, &|r| num(r, "usable_ns"), &ns);
                let not = c
                    .runs
                    .iter()
                    .filter(|r| num(r, "usable_ns").is_none())
                    .count();
                if not == 0 {
                    usable
                } else if not == c.runs.len() {
                    "did not become usable".into()
                } else {
                    format!("{usable}; {not} of {} not usable", c.runs.len())
                }
            }),
        ),
        (
            "plugged (QMP size)",
            Box::new(|c| cell(&c.runs, &|r| r.plugged_bytes.map(|b| b as f64), &mib)),
        ),
        (
            "memory gained (guest)",
            Box::new(move |c| {
                if is_linux(c) {
                    cell(
                        &c.runs,
                        &|r| Some((num(r, "total_kib")? - num(r, "before_kib")?) * 1024.0),
                        &mib,
                    )
                } else {
                    cell(&c.runs, &|r| num(r, "plugged_bytes"), &mib)
                }
            }),
        ),
        (
            "  of which add_memory (guest)",
            Box::new(move |c| {
                if is_linux(c) {
                    "-".into()
                } else {
                    cell(&c.runs, &|r| num(r, "add_ns"), &ns)
                }
            }),
        ),
        rss_row("QEMU RSS before the plug", "hp-ready"),
        rss_row("QEMU RSS after the plug", "hp-plugged"),
        rss_row("QEMU RSS at the workload's peak", "hp-peak"),
        rss_row("QEMU RSS after the free", "hp-freed"),
        rss_row("QEMU RSS after the unplug", "hp-unplugged"),
        memmap_row("memmap after the plug", "memmap_plugged_bytes", "total_kib"),
        memmap_row("memmap at the peak", "memmap_peak_bytes", "total_kib"),
        memmap_row(
            "memmap after the unplug",
            "memmap_unplugged_bytes",
            "total_after_kib",
        ),
        (
            "unplug: time until 0 plugged (guest)",
            Box::new(|c| cell(&c.runs, &|r| num(r, "removed_ns"), &ns)),
        ),
        (
            "unplug: plugged after it (QMP size)",
            Box::new(|c| cell(&c.runs, &|r| r.plugged_after_bytes.map(|b| b as f64), &mib)),
        ),
        (
            "unplug fully succeeded",
            Box::new(|c| {
                let done = c.runs.iter().filter(|r| r.complete()).count();
                format!("{} of {}", done, c.runs.len())
            }),
        ),
    ];
    let headers: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, f)| (*label, r.columns.iter().map(f).collect()))
        .collect();
    print_columns(&headers, &table);
    print_legend(&[
        "usable after the request: guest time from the byte the host sends right after QMP qom-set requested-size (the guest then asks the device and plugs) until the plugged size is reached and, for meminit, add_memory has run; for Linux until MemTotal grew by the plug (memory onlined, movable), or not within 120 s: did not become usable.",
        "memory gained: meminit: the plugged size the guest reached (all of it in the allocator); Linux: MemTotal's growth (memory onlined).",
        "QEMU RSS: the QEMU process's resident set size (VmRSS in /proc/PID/status), settled, with the guest waiting at the step.",
        "memmap: meminit's memmap populated (Allocator::stats) above what it was before the plug, as the guest reports it; (c) Linux: computed, 64 B per 4 KiB page onlined, which onlining writes before any of it is usable.",
        "unplug: after the free (and free page reporting), QMP qom-set requested-size 0; fully succeeded: the device's plugged size (qom-get size) is 0 afterwards.",
    ]);
    for note in &r.linux_notes {
        print_wrapped("    ", &format!("linux: {note}"));
    }
    for c in &r.columns {
        if let Some(why) = &c.failure {
            print_wrapped("    ", &format!("{} failed: {why}", c.name));
        }
    }
}
