//! `meminit vm --hotplug`: one guest grown and shrunk through virtio-mem, its
//! host measured at each step.
//!
//! Owns QEMU's virtio-mem configuration (`maxmem`, a lazily reserved memory
//! backend for the device's region, `virtio-mem-pci`, a QMP socket), the target
//! schedule and what the host measured of it ([`HotplugRun`]). The guest (the
//! meminit guest with `hotplug=SIZE`, or Linux's /init with
//! `meminit_hotplug=BYTES`) prints `MEMINIT-MARK hp-*` markers and waits at each
//! for a byte; at each the host measures QEMU once its memory settles, at
//! `hp-ready` it asks the device for SIZE (`qom-set requested-size`), at
//! `hp-freed` for 0, and at `hp-plugged` and `hp-unplugged` it reads the plugged
//! size (`qom-get size`); then it sends the byte. The guest's own figures are on its
//! `MEMINIT-HOTPLUG` lines, which [`guest_figures`] reads. It does not build the
//! rest of QEMU's command line (`qemu`'s) nor say what the figures mean to people
//! (the CLI's).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::marks::mark_in;
use crate::qemu::{spawn_qemu, Accel, Spawned, VmError};
use crate::qmp::{Qmp, QmpError};
use crate::run::{settle, settle_for, status_kib, Series, RELEASE_SETTLE_LIMIT};

/// The device's QOM path (`-device virtio-mem-pci,id=vmem0`).
pub const DEVICE: &str = "/machine/peripheral/vmem0";
/// The device's block size: QEMU's default on x86 (the THP size), Firecracker's.
pub const BLOCK_BYTES: u64 = 2 << 20;

/// The markers of the schedule, in order.
pub const STEPS: [&str; 5] = [
    "hp-ready",
    "hp-plugged",
    "hp-peak",
    "hp-freed",
    "hp-unplugged",
];

/// Why a hot-plug run failed outright.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Adds the virtio-mem device to QEMU's arguments `args` (from
/// [`qemu_args`](crate::qemu::qemu_args)): `maxmem` room for `bytes`, a memory
/// backend of `bytes` reserved lazily, the device with nothing requested, and a
/// QMP socket at `qmp`.
pub fn add_device(args: &mut Vec<String>, bytes: u64, qmp: &Path) {
    if let Some(i) = args.iter().position(|a| a == "-m") {
        if let Some(m) = args.get_mut(i + 1) {
            let mib: u64 = m.trim_end_matches('M').parse().unwrap_or(0);
            *m = format!("{mib}M,slots=1,maxmem={}M", mib + (bytes >> 20));
        }
    }
    args.extend([
        "-object".into(),
        format!(
            "memory-backend-ram,id=vmem0mem,size={}M,reserve=off",
            bytes >> 20
        ),
        "-device".into(),
        format!(
            "virtio-mem-pci,id=vmem0,memdev=vmem0mem,requested-size=0,block-size={}M",
            BLOCK_BYTES >> 20
        ),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
}

/// What to run.
pub struct HotplugSpec<'a> {
    /// QEMU's arguments, with [`add_device`]'s.
    pub args: &'a [String],
    pub accel: Accel,
    /// Sizes of the guest's RAM mappings, KiB: boot RAM and the device's region.
    pub ram_kib: &'a [u64],
    /// The plug.
    pub bytes: u64,
    /// The QMP socket [`add_device`] named.
    pub qmp: &'a Path,
    /// At `hp-freed`, how long QEMU's memory must stay flat before it is measured
    /// (Linux reports free memory in passes 2 s apart); zero: a brief settling.
    pub freed_settle: Duration,
    /// Give up after this long.
    pub limit: Duration,
}

/// What the host measured at one step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The marker.
    pub name: String,
    /// QEMU's resident memory (`VmRSS`) once it settled, bytes.
    pub qemu_rss_bytes: u64,
    /// Of that, the guest's RAM (boot RAM and the device's region, from smaps).
    pub guest_ram_rss_bytes: u64,
}

/// One guest grown and shrunk, measured.
#[derive(Clone, Debug, Serialize)]
pub struct HotplugRun {
    pub accel: Accel,
    pub exit_status: Option<i32>,
    /// Every step measured, in order.
    pub steps: Vec<Step>,
    /// The device's plugged size after the grow and after the shrink (`qom-get
    /// size`), bytes.
    pub plugged_bytes: Option<u64>,
    pub plugged_after_bytes: Option<u64>,
    /// What the guest printed on its `MEMINIT-HOTPLUG` lines.
    pub guest: Map<String, Value>,
    pub timed_out: bool,
    /// Wall time of the run, ns.
    pub wall_ns: u64,
    #[serde(skip)]
    pub console: String,
}

impl HotplugRun {
    /// QEMU's resident memory at step `name`.
    pub fn rss_at(&self, name: &str) -> Option<u64> {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.qemu_rss_bytes)
    }

    /// Whether every step was measured and the device took it all back.
    pub fn complete(&self) -> bool {
        self.steps.len() == STEPS.len() && self.plugged_after_bytes == Some(0)
    }
}

/// The guest's `MEMINIT-HOTPLUG` lines, merged: a JSON object (the meminit
/// guest) or `key value` pairs (Linux's /init).
pub fn guest_figures(console: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in console.lines() {
        let Some((_, rest)) = line.trim_end_matches('\r').split_once("MEMINIT-HOTPLUG ") else {
            continue;
        };
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(rest) {
            out.extend(m);
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for pair in words.chunks(2) {
            if let [k, v] = pair {
                if let Ok(n) = v.parse::<u64>() {
                    out.insert((*k).to_string(), n.into());
                }
            }
        }
    }
    out
}

/// A temporary path for the QMP socket of one run.
pub fn qmp_path() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("meminit-qmp.{}.{n}.sock", std::process::id()))
}

/// Runs the schedule. `progress` is called every ten seconds with the time so
/// far and the last console line.
pub fn run_hotplug(
    spec: &HotplugSpec<'_>,
    progress: &dyn Fn(Duration, &str),
) -> Result<HotplugRun, HotplugError> {
    let _ = std::fs::remove_file(spec.qmp);
    let started = Instant::now();
    let Spawned {
        mut child,
        mut stdin,
        stdout,
        pid,
    } = spawn_qemu(spec.args)?;
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
            line.clear();
        }
    });
    let mut out = HotplugRun {
        accel: spec.accel,
        exit_status: None,
        steps: Vec::new(),
        plugged_bytes: None,
        plugged_after_bytes: None,
        guest: Map::new(),
        timed_out: false,
        wall_ns: 0,
        console: String::new(),
    };
    let mut qmp: Option<Qmp> = None;
    let mut next_progress = Duration::from_secs(10);
    let mut failure = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > spec.limit {
            out.timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        if started.elapsed() >= next_progress {
            next_progress += Duration::from_secs(10);
            progress(started.elapsed(), crate::run::last_line(&out.console));
        }
        let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        out.console.push_str(&line);
        let text = line.trim_end();
        let step = mark_in(text)
            .filter(|m| STEPS.contains(m))
            .map(str::to_string);
        let hold = text.contains("MEMINIT-HOLD");
        if let Some(name) = step {
            if let Err(e) = measure_step(spec, pid, &name, &mut qmp, &mut out) {
                // Say why, let the guest go on to its end, and fail the run.
                out.console.push_str(&format!("\n[host] {name}: {e}\n"));
                failure.get_or_insert(e);
            }
        } else if !hold {
            continue;
        }
        if let Some(input) = stdin.as_mut() {
            let _ = input.write_all(b"\n");
            let _ = input.flush();
        }
    };
    out.wall_ns = started.elapsed().as_nanos() as u64;
    drop(stdin);
    let _ = reader.join();
    out.console.extend(lines.try_iter());
    if let Some(mut err) = child.stderr.take() {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        if !e.trim().is_empty() {
            out.console.push_str("\n[qemu stderr] ");
            out.console.push_str(e.trim());
        }
    }
    let _ = std::fs::remove_file(spec.qmp);
    out.exit_status = status.and_then(|s| s.code());
    out.guest = guest_figures(&out.console);
    if let Some(e) = failure {
        out.console.push_str(&format!("\n[host] failed: {e}"));
    }
    Ok(out)
}

/// Measures QEMU at step `name` and drives the device as the schedule says.
fn measure_step(
    spec: &HotplugSpec<'_>,
    pid: u32,
    name: &str,
    qmp: &mut Option<Qmp>,
    out: &mut HotplugRun,
) -> Result<(), QmpError> {
    let (rss_kib, guest_kib) = if name == "hp-freed" && !spec.freed_settle.is_zero() {
        settle_for(
            pid,
            spec.ram_kib,
            spec.freed_settle,
            RELEASE_SETTLE_LIMIT,
            &mut Series::default(),
        )
    } else {
        settle(pid, spec.ram_kib)
    };
    let rss_kib = if rss_kib == 0 {
        status_kib(pid, "VmRSS:").unwrap_or(0)
    } else {
        rss_kib
    };
    out.steps.push(Step {
        name: name.into(),
        qemu_rss_bytes: rss_kib * 1024,
        guest_ram_rss_bytes: guest_kib * 1024,
    });
    let q = match qmp {
        Some(q) => q,
        None => qmp.insert(Qmp::connect(spec.qmp, Duration::from_secs(10))?),
    };
    match name {
        "hp-ready" => q.set(DEVICE, "requested-size", spec.bytes)?,
        "hp-freed" => q.set(DEVICE, "requested-size", 0)?,
        "hp-plugged" => out.plugged_bytes = Some(q.get(DEVICE, "size")?),
        "hp-unplugged" => out.plugged_after_bytes = Some(q.get(DEVICE, "size")?),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_guests_figures_are_read() {
        let console = "x\nMEMINIT-HOTPLUG {\"usable_ns\":5,\"ok\":true}\r\n\
[  1.0] MEMINIT-HOTPLUG usable_ns 7 total_kib 9\nMEMINIT-HOTPLUG removed_ns 3\n";
        let f = guest_figures(console);
        assert_eq!(f["usable_ns"], 7);
        assert_eq!(f["ok"], true);
        assert_eq!(f["total_kib"], 9);
        assert_eq!(f["removed_ns"], 3);
    }

    #[test]
    fn the_device_gets_room_a_backend_and_a_socket() {
        let mut args = vec!["-m".to_string(), "2048M".to_string()];
        add_device(&mut args, 8 << 30, Path::new("/tmp/q.sock"));
        assert_eq!(args[1], "2048M,slots=1,maxmem=10240M");
        let all = args.join(" ");
        assert!(all.contains("memory-backend-ram,id=vmem0mem,size=8192M,reserve=off"));
        assert!(all.contains("virtio-mem-pci,id=vmem0,memdev=vmem0mem,requested-size=0"));
        assert!(all.contains("unix:/tmp/q.sock,server=on,wait=off"));
    }
}
