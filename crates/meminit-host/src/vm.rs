//! Guests under QEMU, measured from outside.
//!
//! Runs the meminit guest kernel (or a Linux kernel, for comparison) under
//! `qemu-system-x86_64` with guest RAM reserved lazily on the host
//! (`memory-backend-ram,reserve=off`), and reads the guest's figures from its
//! serial console. QEMU's memory is measured with the guest at rest: once the
//! meminit guest has printed its report it waits (`hold=serial`) for a byte on the
//! serial line, and Linux stops at its root-mount panic (`panic=0`), so the host
//! samples QEMU's resident memory until it settles and reads, from
//! `/proc/PID/smaps`, how much of it is the guest's RAM mapping and how much is
//! QEMU's own (under emulation, mostly the translation cache). The peak
//! (`VmHWM`) is kept too, but it carries QEMU's start-up transient. The accelerator is chosen by a real trial:
//! KVM only where a guest actually boots under it (on `kvm_pvm` hosts `/dev/kvm`
//! exists but cannot run an ordinary guest), software emulation (TCG) otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod marks;

pub use marks::Mark;

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
    /// QEMU's exit status (`None` when the host stopped it, or it was killed).
    pub exit_status: Option<i32>,
    /// Whether the guest reached its end (meminit: its report; Linux: the
    /// root-mount panic) and was measured there, at rest.
    pub at_rest: bool,
    /// Whether the host stopped QEMU once it had measured it (Linux, which waits
    /// at its panic).
    pub stopped_by_host: bool,
    /// QEMU's peak resident memory (`VmHWM`), bytes: includes QEMU's start-up
    /// transient.
    pub qemu_peak_rss_bytes: u64,
    /// QEMU's resident memory with the guest at rest, once it stopped changing
    /// (or the last sample, if the guest never got there), bytes.
    pub qemu_rss_bytes: u64,
    /// Of that, the guest's RAM: the resident part of QEMU's guest-RAM mappings
    /// (`Rss` in `/proc/PID/smaps`), bytes.
    pub guest_ram_rss_bytes: u64,
    /// The rest: QEMU's own memory (code, heap, translation cache), bytes.
    pub qemu_own_rss_bytes: u64,
    /// Wall time from QEMU's start until the guest said it was done (or until
    /// QEMU exited, if it never did), ns.
    pub wall_ns: u64,
    /// Whether the run was stopped at the time limit.
    pub timed_out: bool,
    /// What the host measured at each marker the guest printed
    /// (`MEMINIT-MARK NAME`: a spike's `boot`, `peak`, `released`), in order.
    pub marks: Vec<Mark>,
    /// QEMU's resident memory at the `boot` marker, bytes.
    pub qemu_rss_boot_bytes: Option<u64>,
    /// At the `peak` marker, with the spike written.
    pub qemu_rss_peak_bytes: Option<u64>,
    /// At the `released` marker, with the spike freed and reported.
    pub qemu_rss_after_release_bytes: Option<u64>,
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

/// The virtio-balloon device with free page reporting, on its legacy PCI
/// interface (which the meminit guest drives; Linux drives either), to add to
/// [`qemu_args`].
pub fn balloon_args() -> [String; 2] {
    [
        "-device".into(),
        "virtio-balloon-pci,disable-modern=on,free-page-reporting=on".into(),
    ]
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

/// The sizes, in KiB, of the guest-RAM mappings QEMU makes for `shape` (one
/// memory backend per node), to find them in `/proc/PID/smaps`.
pub fn guest_ram_kib(shape: &VmShape) -> Vec<u64> {
    let mib = shape.memory >> 20;
    let nodes = u64::from(shape.nodes.max(1));
    let per_node = mib / nodes;
    (0..nodes)
        .map(|n| {
            if n == nodes - 1 {
                (mib - per_node * n) * 1024
            } else {
                per_node * 1024
            }
        })
        .collect()
}

/// The resident KiB of the anonymous mappings in `smaps` whose sizes are
/// `sizes_kib`, each size matched to one mapping (the guest's RAM backends).
pub fn smaps_rss_kib(smaps: &str, sizes_kib: &[u64]) -> u64 {
    let mut wanted: Vec<u64> = sizes_kib.to_vec();
    let mut total = 0;
    let mut size = None;
    let mut anonymous = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if !first.ends_with(':') && first.contains('-') {
            // A mapping's header: range, perms, offset, device, inode, [path].
            anonymous = words.nth(3) == Some("0") && words.next().is_none();
            size = None;
        } else if first == "Size:" {
            size = words.next().and_then(|w| w.parse::<u64>().ok());
        } else if first == "Rss:" && anonymous {
            let rss = words.next().and_then(|w| w.parse::<u64>().ok());
            if let (Some(sz), Some(rss)) = (size, rss) {
                if let Some(i) = wanted.iter().position(|&w| w == sz) {
                    wanted.swap_remove(i);
                    total += rss;
                }
            }
        }
    }
    total
}

/// How a run ends, once the guest has said it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The meminit guest, booted with `hold=serial`: on its `MEMINIT-HOLD` line,
    /// measure, then send it a byte so that it powers off.
    Release,
    /// Linux, booted with `panic=0`: on its root-mount panic, measure, then stop
    /// QEMU. It waits (at most [`REFINE_WAIT`] after the panic) for Linux's
    /// refined TSC calibration, which Linux prints about a second after it
    /// registers the TSC clocksource, and only when it agrees within 1% with the
    /// frequency it started with.
    StopAtPanic,
}

/// How long after its panic Linux is given to print its refined TSC calibration.
pub const REFINE_WAIT: Duration = Duration::from_secs(3);

impl Finish {
    fn is_done(self, line: &str) -> bool {
        match self {
            Finish::Release => line.starts_with("MEMINIT-HOLD"),
            Finish::StopAtPanic => line.contains("Kernel panic - not syncing"),
        }
    }

    /// Whether the guest has nothing more worth waiting for.
    fn is_final(self, line: &str) -> bool {
        match self {
            Finish::Release => true,
            Finish::StopAtPanic => line.contains("Refined TSC clocksource calibration"),
        }
    }
}

/// What to run and how to measure it.
pub struct Run<'a> {
    /// QEMU's arguments ([`qemu_args`]).
    pub args: &'a [String],
    /// The accelerator they name.
    pub accel: Accel,
    /// Sizes of the guest's RAM mappings ([`guest_ram_kib`]).
    pub ram_kib: &'a [u64],
    /// How the run ends.
    pub finish: Finish,
    /// Give up after this long.
    pub limit: Duration,
    /// At the `released` marker, how long QEMU's memory must stay flat (within
    /// 1 MiB) before it is measured, at most [`RELEASE_SETTLE_LIMIT`]: Linux
    /// reports free memory in passes two seconds apart, each a sixteenth of a free
    /// list or so, so what it hands back keeps falling for a while. Zero: the
    /// usual brief settling (the meminit guest reports before it prints the
    /// marker).
    pub release_settle: Duration,
}

/// The longest the host waits at the `released` marker for QEMU's memory to stop
/// falling.
pub const RELEASE_SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Resident KiB of QEMU and of its guest RAM once QEMU's resident memory stayed
/// within 1 MiB for `window` (sampled every 250 ms), or after `limit`.
fn settle_for(pid: u32, ram_kib: &[u64], window: Duration, limit: Duration) -> (u64, u64) {
    let started = Instant::now();
    let mut flat_since = Instant::now();
    let mut low = status_kib(pid, "VmRSS:").unwrap_or(0);
    let mut high = low;
    while flat_since.elapsed() < window && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        let now = status_kib(pid, "VmRSS:").unwrap_or(low);
        low = low.min(now);
        high = high.max(now);
        if high - low > 1024 {
            flat_since = Instant::now();
            (low, high) = (now, now);
        }
    }
    settle(pid, ram_kib)
}

/// Resident KiB of QEMU and of its guest RAM, sampled until two samples 100 ms
/// apart agree within 256 KiB (or a second and a half has passed): the steady
/// state once the guest is done, free of QEMU's start-up transient.
fn settle(pid: u32, ram_kib: &[u64]) -> (u64, u64) {
    let started = Instant::now();
    let mut prev = status_kib(pid, "VmRSS:").unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = status_kib(pid, "VmRSS:").unwrap_or(prev);
        if now.abs_diff(prev) <= 256 || started.elapsed() > Duration::from_millis(1500) {
            let guest = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
                .map(|s| smaps_rss_kib(&s, ram_kib))
                .unwrap_or(0);
            return (now, guest);
        }
        prev = now;
    }
}

fn last_line(console: &str) -> &str {
    console
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// Runs QEMU until the guest is done (then measures it at rest and ends it as
/// `run.finish` says), exits, or `run.limit` passes. `progress` is called every
/// ten seconds with the time so far and the guest's last console line.
pub fn run_qemu(run: &Run<'_>, progress: &dyn Fn(Duration, &str)) -> Result<VmRun, VmError> {
    let started = Instant::now();
    let mut child = Command::new(qemu()?)
        .args(run.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("QEMU's standard output was not piped"))?;
    // The console so far, whether the guest has said it is done, whether it
    // has printed all it will that is worth waiting for, and the markers it
    // printed that the host has yet to measure (with when).
    let console = Arc::new(Mutex::new((
        String::new(),
        false,
        false,
        Vec::<(String, Duration)>::new(),
    )));
    let reader = {
        let console = Arc::clone(&console);
        let finish = run.finish;
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(lines.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                let done = finish.is_done(text.trim_end());
                let last = finish.is_final(text.trim_end());
                let mark = marks::mark_in(text.trim_end()).map(str::to_string);
                if let Ok(mut c) = console.lock() {
                    c.0.push_str(&text);
                    c.1 |= done;
                    c.2 |= last;
                    if let Some(m) = mark {
                        c.3.push((m, started.elapsed()));
                    }
                }
                line.clear();
            }
        })
    };
    let (mut peak, mut last) = (0, 0);
    let mut measured = None;
    let mut timed_out = false;
    let mut stopped_by_host = false;
    let mut next_progress = Duration::from_secs(10);
    let mut done_at = None;
    // When the guest said it was done: its wall time, not counting the wait to
    // measure it at rest.
    let mut done_wall = None;
    let mut marks = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let pending = console
            .lock()
            .map(|mut c| std::mem::take(&mut c.3))
            .unwrap_or_default();
        for (name, at) in pending {
            // The guest waits at its marker for a byte: measure it at rest there,
            // then let it go on.
            let (rss, guest) = if name == marks::RELEASED && !run.release_settle.is_zero() {
                settle_for(pid, run.ram_kib, run.release_settle, RELEASE_SETTLE_LIMIT)
            } else {
                settle(pid, run.ram_kib)
            };
            marks.push(Mark {
                name,
                qemu_rss_bytes: rss * 1024,
                guest_ram_rss_bytes: guest * 1024,
                at_ns: at.as_nanos() as u64,
            });
            if let Some(input) = stdin.as_mut() {
                let _ = input.write_all(b"\n");
                let _ = input.flush();
            }
        }
        if let Some(kib) = status_kib(pid, "VmRSS:") {
            last = kib;
        }
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            peak = peak.max(kib);
        }
        let (done, last_said) = console.lock().map(|c| (c.1, c.2)).unwrap_or((false, false));
        if done && done_at.is_none() {
            done_at = Some(Instant::now());
            done_wall = Some(started.elapsed());
        }
        let waited = done_at.is_some_and(|t| {
            last_said || run.finish == Finish::Release || t.elapsed() > REFINE_WAIT
        });
        if waited && measured.is_none() {
            let (rss, guest) = settle(pid, run.ram_kib);
            last = last.max(rss);
            measured = Some((rss, guest));
            match run.finish {
                Finish::Release => {
                    if let Some(mut input) = stdin.take() {
                        let _ = input.write_all(b"\n");
                        let _ = input.flush();
                    }
                }
                Finish::StopAtPanic => {
                    stopped_by_host = true;
                    let _ = child.kill();
                }
            }
        }
        let elapsed = started.elapsed();
        if elapsed > run.limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        if elapsed >= next_progress {
            next_progress += Duration::from_secs(10);
            let line = console
                .lock()
                .map(|c| last_line(&c.0).to_string())
                .unwrap_or_default();
            progress(elapsed, &line);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall_ns = done_wall.unwrap_or_else(|| started.elapsed()).as_nanos() as u64;
    drop(stdin);
    let _ = reader.join();
    let mut console = console.lock().map(|c| c.0.clone()).unwrap_or_default();
    if let Some(mut err) = child.stderr.take() {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        if !e.trim().is_empty() {
            console.push_str("\n[qemu stderr] ");
            console.push_str(e.trim());
        }
    }
    let (rss, guest) = measured.unwrap_or((last, 0));
    Ok(VmRun {
        accel: run.accel,
        exit_status: if stopped_by_host { None } else { status.code() },
        at_rest: measured.is_some(),
        stopped_by_host,
        qemu_peak_rss_bytes: peak.max(last) * 1024,
        qemu_rss_bytes: rss * 1024,
        guest_ram_rss_bytes: guest * 1024,
        qemu_own_rss_bytes: rss.saturating_sub(guest) * 1024,
        wall_ns,
        timed_out,
        console,
        qemu_rss_boot_bytes: marks::rss_at(&marks, marks::BOOT),
        qemu_rss_peak_bytes: marks::rss_at(&marks, marks::PEAK),
        qemu_rss_after_release_bytes: marks::rss_at(&marks, marks::RELEASED),
        marks,
    })
}

/// Why a guest did not succeed, from its console: the lines that say so (the
/// guest's own `meminit guest:` lines, a panic, QEMU's complaints), else its
/// last lines.
pub fn failure_reason(console: &str) -> String {
    let telling: Vec<&str> = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            (l.starts_with("meminit guest:") && !l.contains(" on `") && !l.contains("note:"))
                || l.contains("panic")
                || l.starts_with("[qemu stderr]")
        })
        .collect();
    let lines: Vec<&str> = if telling.is_empty() {
        let all: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        telling[telling.len().saturating_sub(5)..].to_vec()
    };
    if lines.is_empty() {
        "no output on the console".into()
    } else {
        lines.join("\n")
    }
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
    let run = Run {
        args: &args,
        accel: Accel::Kvm,
        ram_kib: &guest_ram_kib(&shape),
        finish: Finish::Release,
        limit: Duration::from_secs(20),
        release_settle: Duration::ZERO,
    };
    match run_qemu(&run, &|_, _| {}) {
        Ok(run) if run.exit_status == Some(GUEST_SUCCESS) && guest_json(&run.console).is_some() => {
            (Accel::Kvm, "a trial guest booted under KVM".into())
        }
        Ok(run) => {
            let why = match last_line(&run.console) {
                "" => "no output".to_string(),
                line => line.chars().take(160).collect::<String>(),
            };
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
    /// Whether the kernel reached the root-mount panic (the end of a run without
    /// an initramfs).
    pub reached_rootfs: bool,
    /// Whether the initramfs's `/init` ran to its end (`MEMINIT-INIT done`).
    pub reached_init: bool,
    /// What `/init` said went wrong (`MEMINIT-INIT error: ...`), if anything.
    pub init_error: Option<String>,
    /// The TSC frequency Linux settled on, kHz: its refined calibration where it
    /// printed one, else the frequency it detected at boot.
    pub tsc_khz: Option<u64>,
    /// Whether `tsc_khz` is Linux's refined calibration (its own measurement,
    /// even where it was told a frequency to start with).
    pub tsc_refined: bool,
    /// The command line Linux says it booted with.
    pub command_line: Option<String>,
    /// `Reserving NMB of memory at ...MB for crashkernel`: N MiB.
    pub crashkernel_mib: Option<u64>,
    /// Whether Linux started a tracer at boot (`ftrace=`), which expands its ring
    /// buffer to `trace_buf_size=` there.
    pub tracer_started_at_boot: bool,
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
        let refined = line.split_once("tsc: Refined TSC clocksource calibration: ");
        if let Some(mhz) = refined
            .or_else(|| line.split_once("tsc: Detected "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|m| m.parse::<f64>().ok())
        {
            // The refined figure comes later and wins.
            out.tsc_khz = Some((mhz * 1000.0).round() as u64);
            out.tsc_refined = refined.is_some();
        }
        if let Some((_, cmd)) = line.split_once("] Command line: ") {
            out.command_line = Some(cmd.trim_end().to_string());
        }
        if let Some(mib) = line
            .split_once("Reserving ")
            .filter(|(_, r)| r.contains("of memory at") && r.contains("for crashkernel"))
            .and_then(|(_, r)| r.split_once("MB"))
            .and_then(|(n, _)| n.trim().parse().ok())
        {
            out.crashkernel_mib = Some(mib);
        }
        if line.contains("MEMINIT-INIT done") {
            out.reached_init = true;
        }
        if let Some((_, why)) = line.split_once("MEMINIT-INIT error: ") {
            out.init_error = Some(why.trim_end().to_string());
        }
        if line.contains("Starting tracer '") {
            out.tracer_started_at_boot = true;
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
/// made with (`fixtures/linux-boot/README.md`), less `tsc_early_khz=2100000`
/// (a TSC frequency this host's TSC does not run at, which made every Linux time
/// too long by their ratio), and with `panic=0`, so that Linux waits at its
/// root-mount panic to be measured at rest and then stopped. [`linux_append`]
/// adds `tsc_early_khz=` with the frequency measured on this host, where known.
pub const LINUX_APPEND: &str =
    "console=ttyS0 loglevel=7 ignore_loglevel panic=0 mminit_loglevel=4 tsc=reliable";

/// What the meminit guest is asked for, to be given to Linux too where Linux
/// understands it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerOptions {
    /// `trace_buf_size=`.
    pub trace_buf_size: Option<u64>,
    /// `crashkernel=`.
    pub crashkernel: Option<u64>,
    /// Whether the meminit guests run a workload after boot.
    pub workload: bool,
    /// The TSC frequency the meminit guest measured on this host, kHz.
    pub tsc_khz: Option<u64>,
    /// The meminit guests' `workload=spike:SIZE`: bytes.
    pub spike: Option<u64>,
    /// Whether Linux boots with the project's initramfs, whose `/init` runs the
    /// spike (`scripts/setup --vm` builds it).
    pub initramfs: bool,
}

/// Linux's command line for `opts`, and what it says about each option Linux is
/// given or not.
pub fn linux_append(opts: &PeerOptions) -> (String, Vec<String>) {
    let mut append = LINUX_APPEND.to_string();
    let mut notes = Vec::new();
    match opts.tsc_khz {
        Some(khz) => {
            // Without it, Linux has no clock for its first timestamps, and its
            // early memmap initialisation reads as taking no time.
            append.push_str(&format!(" tsc_early_khz={khz}"));
            notes.push(format!(
                "tsc_early_khz={khz}: the TSC frequency the meminit guest measured here, so that Linux's early timestamps run on this TSC's clock; tsc_khz is Linux's own later calibration"
            ));
        }
        None => notes.push(
            "no TSC frequency known to give Linux: its timestamps before it calibrates its TSC read 0".into(),
        ),
    }
    if let Some(t) = opts.trace_buf_size {
        // Linux sizes its ring buffer with trace_buf_size= but allocates one page
        // per CPU until tracing starts; `ftrace=nop` starts the (empty) nop tracer
        // at boot, which expands the buffer there, as the meminit guest does.
        append.push_str(&format!(" trace_buf_size={t} ftrace=nop"));
        notes.push(
            "trace_buf_size: given to Linux with ftrace=nop, without which Linux would keep one page per CPU until tracing starts".into(),
        );
    }
    if let Some(c) = opts.crashkernel {
        append.push_str(&format!(" crashkernel={c}"));
        notes.push("crashkernel: given to Linux, which reserves it and leaves it unwritten, as the meminit guest does".into());
    }
    if opts.initramfs {
        // Its /init powers off at its end; if it dies, Linux panics and reboots
        // at once, which -no-reboot turns into QEMU's exit.
        append = append.replace(" panic=0", " panic=-1");
        append.push_str(" rdinit=/init");
        if let Some(bytes) = opts.spike {
            // An unknown `name=value` option is handed to /init as its environment.
            append.push_str(&format!(" meminit_spike={bytes}"));
            notes.push(format!(
                "spike: Linux's initramfs /init loads virtio_balloon (free page reporting on), writes a tmpfs file of {bytes} bytes, removes it, and waits for Linux to report the freed pages (order >= pageblock, about 2 s after they are freed)"
            ));
        }
    }
    if opts.workload {
        notes.push(if opts.initramfs {
            "workload: only a spike is run by Linux's /init; other workloads are not given to Linux, which has no such option".into()
        } else {
            "workload: not given to Linux, which has no such option and, without an initramfs, stops at its root-mount panic, before any user space".into()
        });
    }
    (append, notes)
}

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
        // That log was made on a host whose TSC ran at 2.1 GHz; Linux's refined
        // calibration is the figure taken.
        assert_eq!(l.tsc_khz, Some(2_100_001));
        assert!(l.tsc_refined);
    }

    #[test]
    fn linux_is_not_told_a_tsc_frequency_and_its_own_is_read() {
        assert!(!LINUX_APPEND.contains("tsc_early_khz"));
        let console = "[    0.000000] tsc: Detected 2596.102 MHz processor\n\
                       [    1.020000] tsc: Refined TSC clocksource calibration: 2595.998 MHz\n";
        assert_eq!(parse_linux_console(console).tsc_khz, Some(2_595_998));
        assert!(parse_linux_console(console).tsc_refined);
        let console = "[    0.000000] tsc: Detected 2596.102 MHz processor\n";
        assert_eq!(parse_linux_console(console).tsc_khz, Some(2_596_102));
    }

    #[test]
    fn what_linux_did_with_its_options_is_read() {
        let console = "[    0.000000] Command line: console=ttyS0 crashkernel=67108864 ftrace=nop\n\
                       [    0.004000] Reserving 64MB of memory at 2960MB for crashkernel (System RAM: 2047MB)\n\
                       [    0.400000] Starting tracer 'nop'\n";
        let l = parse_linux_console(console);
        assert_eq!(
            l.command_line.as_deref(),
            Some("console=ttyS0 crashkernel=67108864 ftrace=nop")
        );
        assert_eq!(l.crashkernel_mib, Some(64));
        assert!(l.tracer_started_at_boot);
    }

    #[test]
    fn linux_is_given_what_it_understands_and_told_what_it_is_not() {
        let (append, notes) = linux_append(&PeerOptions {
            trace_buf_size: Some(64 << 20),
            crashkernel: Some(128 << 20),
            workload: true,
            tsc_khz: Some(2_449_123),
            ..PeerOptions::default()
        });
        assert!(append.contains(" tsc_early_khz=2449123"), "{append}");
        assert!(
            append.contains(" trace_buf_size=67108864 ftrace=nop"),
            "{append}"
        );
        assert!(append.contains(" crashkernel=134217728"), "{append}");
        assert_eq!(notes.len(), 4);
        assert!(notes[3].starts_with("workload: not given to Linux"));
        let (append, notes) = linux_append(&PeerOptions::default());
        assert_eq!(append, LINUX_APPEND);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn linux_with_the_initramfs_runs_the_spike_and_reboots_rather_than_hang() {
        let (append, notes) = linux_append(&PeerOptions {
            spike: Some(64 << 20),
            initramfs: true,
            workload: true,
            ..PeerOptions::default()
        });
        assert!(append.contains(" panic=-1"), "{append}");
        assert!(!append.contains(" panic=0"), "{append}");
        assert!(
            append.ends_with(" rdinit=/init meminit_spike=67108864"),
            "{append}"
        );
        assert!(notes.iter().any(|n| n.starts_with("spike: ")), "{notes:?}");
        // Without the initramfs, Linux is told nothing of the spike.
        let (append, notes) = linux_append(&PeerOptions {
            spike: Some(64 << 20),
            workload: true,
            ..PeerOptions::default()
        });
        assert!(!append.contains("meminit_spike"), "{append}");
        assert!(notes.last().unwrap().contains("without an initramfs"));
        let l = parse_linux_console(
            "MEMINIT-INIT error: no virtio_balloon.ko\n[ 2.0] x MEMINIT-INIT done\n",
        );
        assert!(l.reached_init);
        assert_eq!(l.init_error.as_deref(), Some("no virtio_balloon.ko"));
    }

    #[test]
    fn guest_ram_is_read_from_its_mappings_in_smaps() {
        let smaps = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:               2048 kB
Rss:                2048 kB
7f0000000000-7f0080000000 rw-p 00000000 00:00 0 
Size:            2097152 kB
Rss:                8192 kB
7f0080000000-7f0080001000 ---p 00000000 00:00 0 
Size:                  4 kB
Rss:                   0 kB
7f1000000000-7f1080000000 rw-p 00000000 00:00 0 
Size:            2097152 kB
Rss:               40000 kB
";
        let shape = VmShape {
            memory: 2 << 30,
            cpus: 1,
            nodes: 1,
        };
        let sizes = guest_ram_kib(&shape);
        assert_eq!(sizes, [2097152]);
        // One backend: one mapping of its size counts, the first found.
        assert_eq!(smaps_rss_kib(smaps, &sizes), 8192);
        // Two backends of that size: both.
        assert_eq!(smaps_rss_kib(smaps, &[2097152, 2097152]), 48192);
        let three = VmShape {
            memory: 3 << 30,
            cpus: 3,
            nodes: 2,
        };
        assert_eq!(guest_ram_kib(&three), [1536 * 1024, 1536 * 1024]);
    }

    #[test]
    fn a_failing_guest_says_why() {
        let console =
            "meminit guest: deferred on `meminit=deferred bogus=1`, TSC 2596 MHz (PIT)\r\n\
                       meminit guest: bad kernel command line option 'bogus=1': unknown option\r\n";
        assert_eq!(
            failure_reason(console),
            "meminit guest: bad kernel command line option 'bogus=1': unknown option"
        );
        assert_eq!(failure_reason(""), "no output on the console");
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
