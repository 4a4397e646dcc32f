//! Guests under QEMU, measured from outside.
//!
//! Runs the meminit guest kernel (or a Linux kernel, for comparison) under
//! `qemu-system-x86_64` with guest RAM reserved lazily on the host
//! (`memory-backend-ram,reserve=off`), samples QEMU's resident memory from
//! `/proc/PID/status` while it runs (`VmHWM` for the peak), and reads the guest's
//! figures from its serial console. The accelerator is chosen by a real trial:
//! KVM only where a guest actually boots under it (on `kvm_pvm` hosts `/dev/kvm`
//! exists but cannot run an ordinary guest), software emulation (TCG) otherwise.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

impl Accel {
    /// QEMU's `-accel` argument.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=multi",
        }
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "software emulation (TCG)",
        }
    }
}

/// The guest's shape.
#[derive(Clone, Debug)]
pub struct VmShape {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// NUMA nodes (RAM and vCPUs split evenly).
    pub nodes: u32,
}

/// What QEMU cost its host, and what the guest printed.
#[derive(Clone, Debug, Serialize)]
pub struct VmRun {
    /// The accelerator used.
    pub accel: Accel,
    /// QEMU's exit status.
    pub exit_status: Option<i32>,
    /// QEMU's peak resident memory (`VmHWM`), bytes.
    pub qemu_peak_rss_bytes: u64,
    /// QEMU's resident memory at the last sample before it exited, bytes.
    pub qemu_end_rss_bytes: u64,
    /// Wall time from start to exit, ns.
    pub wall_ns: u64,
    /// Whether the run was stopped at the time limit.
    pub timed_out: bool,
    /// The serial console.
    #[serde(skip)]
    pub console: String,
}

/// Why a guest could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is missing.
    #[error(
        "qemu-system-x86_64 not found: run scripts/setup --vm, or install Debian's qemu-system-x86"
    )]
    NoQemu,
    /// Building the guest failed.
    #[error("building the guest kernel failed: {0}")]
    Build(String),
    /// Some other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Builds the guest kernel (cargo decides whether anything changed) and returns
/// its path. `guest_dir` is the repository's `guest/` directory.
pub fn build_guest(guest_dir: &Path) -> Result<PathBuf, VmError> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Cargo reads the guest's `.cargo/config.toml` (target, code model) from
        // the working directory, not from the manifest's.
        .current_dir(guest_dir)
        .args(["build", "--release", "--quiet"])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()?;
    if !out.status.success() {
        return Err(VmError::Build(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(guest_dir.join("target/x86_64-unknown-none/release/meminit-guest"))
}

fn qemu() -> Result<PathBuf, VmError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or(VmError::NoQemu)
}

/// The QEMU arguments for a guest of `shape`, with memory reserved lazily.
pub fn qemu_args(shape: &VmShape, accel: Accel, kernel: &Path, append: &str) -> Vec<String> {
    let mib = shape.memory >> 20;
    let mut args: Vec<String> = vec![
        "-accel".into(),
        accel.qemu_arg().into(),
        "-cpu".into(),
        cpu_model(shape, accel),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-monitor".into(),
        "none".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-smp".into(),
        shape.cpus.to_string(),
        "-m".into(),
        format!("{mib}M"),
    ];
    if shape.nodes <= 1 {
        args.extend([
            "-object".into(),
            format!("memory-backend-ram,id=m0,size={mib}M,reserve=off"),
            "-M".into(),
            "pc,memory-backend=m0".into(),
        ]);
    } else {
        args.extend(["-M".into(), "pc".into()]);
        let per_node = mib / shape.nodes as u64;
        for n in 0..shape.nodes {
            let size = if n == shape.nodes - 1 {
                mib - per_node * (shape.nodes as u64 - 1)
            } else {
                per_node
            };
            let first = n * shape.cpus / shape.nodes;
            let last = (n + 1) * shape.cpus / shape.nodes;
            args.extend([
                "-object".into(),
                format!("memory-backend-ram,id=m{n},size={size}M,reserve=off"),
                "-numa".into(),
                if last > first {
                    format!("node,nodeid={n},memdev=m{n},cpus={first}-{}", last - 1)
                } else {
                    format!("node,nodeid={n},memdev=m{n}")
                },
            ]);
        }
    }
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        append.into(),
    ]);
    args
}

/// `-cpu host` under KVM, `-cpu max` under emulation; guests whose RAM (plus the
/// 1 GiB PCI hole below 4 GiB) reaches past QEMU's default 40 physical address
/// bits get 46, so that 1 TiB fits. Smaller guests keep QEMU's default, the
/// configuration the Linux fixture logs were made with.
fn cpu_model(shape: &VmShape, accel: Accel) -> String {
    let base = if accel == Accel::Kvm { "host" } else { "max" };
    if shape.memory + (1 << 30) > 1 << 40 {
        format!("{base},phys-bits=46")
    } else {
        base.to_string()
    }
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs QEMU with `args` until it exits or `limit` passes, sampling its memory.
pub fn run_qemu(args: &[String], accel: Accel, limit: Duration) -> Result<VmRun, VmError> {
    let started = Instant::now();
    let mut child = Command::new(qemu()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let (mut peak, mut last) = (0, 0);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kib) = status_kib(pid, "VmRSS:") {
            last = kib;
        }
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            peak = peak.max(kib);
        }
        if started.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall_ns = started.elapsed().as_nanos() as u64;
    let mut console = reader.join().unwrap_or_default();
    if let Some(mut err) = child.stderr.take() {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        if !e.trim().is_empty() {
            console.push_str("\n[qemu stderr] ");
            console.push_str(e.trim());
        }
    }
    Ok(VmRun {
        accel,
        exit_status: status.code(),
        qemu_peak_rss_bytes: peak.max(last) * 1024,
        qemu_end_rss_bytes: last * 1024,
        wall_ns,
        timed_out,
        console,
    })
}

/// The exit status QEMU gives when the guest reports success through
/// `isa-debug-exit` (`(0x10 << 1) | 1`).
pub const GUEST_SUCCESS: i32 = 33;
/// The guest's status for a bad command line.
pub const GUEST_BAD_COMMAND_LINE: i32 = 37;

/// The JSON line a guest printed (`MEMINIT-JSON {...}`).
pub fn guest_json(console: &str) -> Option<serde_json::Value> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("MEMINIT-JSON "))
        .and_then(|j| serde_json::from_str(j).ok())
}

/// Chooses the accelerator by booting the guest under KVM once (a small
/// on-demand guest): KVM if it reports success, software emulation otherwise.
/// Returns the choice and what the trial showed.
pub fn choose_accel(kernel: &Path) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    let shape = VmShape {
        memory: 128 << 20,
        cpus: 1,
        nodes: 1,
    };
    let args = qemu_args(&shape, Accel::Kvm, kernel, "meminit=ondemand");
    match run_qemu(&args, Accel::Kvm, Duration::from_secs(20)) {
        Ok(run) if run.exit_status == Some(GUEST_SUCCESS) && guest_json(&run.console).is_some() => {
            (Accel::Kvm, "a trial guest booted under KVM".into())
        }
        Ok(run) => {
            let why = run
                .console
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .chars()
                .take(160)
                .collect::<String>();
            (
                Accel::Tcg,
                format!(
                    "/dev/kvm exists but a trial guest did not boot under it (exit {:?}{}: {why})",
                    run.exit_status,
                    if run.timed_out { ", timed out" } else { "" }
                ),
            )
        }
        Err(e) => (Accel::Tcg, format!("the KVM trial could not run: {e}")),
    }
}

/// What a Linux kernel printed about its memory, read from its console.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinuxBoot {
    /// Per node, `node N deferred pages initialised in Xms`.
    pub deferred_init_ms: Vec<(u32, u64)>,
    /// Early memmap initialisation: from the first `Initmem setup node` line to
    /// the last `pages in unavailable ranges` line, ms (console timestamps).
    pub early_memmap_ms: Option<f64>,
    /// `Memory: AK/BK available`: B, KiB present.
    pub memory_total_kib: Option<u64>,
    /// A, KiB free when it printed.
    pub memory_available_kib: Option<u64>,
    /// Whether the kernel reached the root-mount panic (the end of our run).
    pub reached_rootfs: bool,
}

fn timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest[..rest.find(']')?].trim().parse().ok()
}

/// Reads a Linux console.
pub fn parse_linux_console(console: &str) -> LinuxBoot {
    let mut out = LinuxBoot::default();
    let figures = crate::dmesg::parse(console).map(|l| l.figures).ok();
    if let Some(f) = figures {
        out.deferred_init_ms = f.deferred_init_ms;
        out.memory_total_kib = f.memory_total_kib;
        out.memory_available_kib = f.memory_available_kib;
    }
    let mut first = None;
    let mut last = None;
    for line in console.lines() {
        if line.contains("Initmem setup node") && first.is_none() {
            first = timestamp(line);
        }
        if line.contains("pages in unavailable ranges") {
            last = timestamp(line);
        }
        if line.contains("Unable to mount root fs") || line.contains("VFS: Cannot open root device")
        {
            out.reached_rootfs = true;
        }
    }
    if let (Some(a), Some(b)) = (first, last) {
        out.early_memmap_ms = Some((b - a) * 1000.0);
    }
    out
}

/// The kernel command line the Linux peer boots with: the one our boot logs were
/// made with (`fixtures/linux-boot/README.md`).
pub const LINUX_APPEND: &str = "console=ttyS0 loglevel=7 ignore_loglevel panic=-1 reboot=t mminit_loglevel=4 tsc_early_khz=2100000 tsc=reliable";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_console_figures() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/linux-boot/debian-6.1-qemu-pc-2G-1c-1n-r1.log"
        ))
        .unwrap();
        let l = parse_linux_console(&text);
        assert_eq!(l.deferred_init_ms, [(0, 72)]);
        assert_eq!(l.memory_total_kib, Some(2096632));
        let early = l.early_memmap_ms.unwrap();
        assert!((early - 13.827).abs() < 0.01, "{early}");
        assert!(l.reached_rootfs);
    }

    #[test]
    fn numa_guests_get_a_backend_per_node() {
        let shape = VmShape {
            memory: 32 << 30,
            cpus: 2,
            nodes: 2,
        };
        let args = qemu_args(&shape, Accel::Tcg, Path::new("k"), "x").join(" ");
        assert!(args.contains("memory-backend-ram,id=m1,size=16384M,reserve=off"));
        assert!(args.contains("node,nodeid=1,memdev=m1,cpus=1-1"));
    }
}
