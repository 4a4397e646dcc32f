//! One QEMU run, measured from outside.
//!
//! Owns starting QEMU, reading its serial console as it comes, measuring QEMU's
//! resident memory at each marker the guest prints and once the guest is at
//! rest, ending the run as [`Finish`] says, and what was measured ([`VmRun`]).
//! It does not build QEMU's arguments (`qemu`'s) nor interpret what a guest
//! printed beyond the markers and its end (`guest`'s and `linux`'s).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::marks::{self, Mark};
use crate::qemu::{smaps_rss_kib, spawn_qemu, Accel, Spawned, VmError};

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
    /// With a `freed` marker (`files`): the guest's RAM resident on the host
    /// there, sampled at once (no wait), bytes.
    pub guest_ram_at_free_bytes: Option<u64>,
    /// From the `freed` marker until 90% of what came back by the `released`
    /// measurement had come back (sampled from smaps every 100 ms or so), ns.
    pub release_90_ns: Option<u64>,
    /// The samples: ns since the `freed` marker, guest RAM resident bytes.
    #[serde(skip)]
    pub release_samples: Vec<(u64, u64)>,
    /// The serial console.
    #[serde(skip)]
    pub console: String,
}

pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
    /// QEMU's arguments ([`qemu_args`](crate::qemu::qemu_args)).
    pub args: &'a [String],
    /// The accelerator they name.
    pub accel: Accel,
    /// Sizes of the guest's RAM mappings ([`guest_ram_kib`](crate::qemu::guest_ram_kib)).
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
pub(crate) fn settle_for(
    pid: u32,
    ram_kib: &[u64],
    window: Duration,
    limit: Duration,
    series: &mut Series,
) -> (u64, u64) {
    let started = Instant::now();
    let mut flat_since = Instant::now();
    let mut low = status_kib(pid, "VmRSS:").unwrap_or(0);
    let mut high = low;
    while flat_since.elapsed() < window && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        series.sample(pid, ram_kib);
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
pub(crate) fn settle(pid: u32, ram_kib: &[u64]) -> (u64, u64) {
    let started = Instant::now();
    let mut prev = status_kib(pid, "VmRSS:").unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = status_kib(pid, "VmRSS:").unwrap_or(prev);
        if now.abs_diff(prev) <= 256 || started.elapsed() > Duration::from_millis(1500) {
            return (now, guest_ram_kib(pid, ram_kib));
        }
        prev = now;
    }
}

/// The guest's RAM resident on the host, KiB (0 if smaps cannot be read).
fn guest_ram_kib(pid: u32, ram_kib: &[u64]) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map(|s| smaps_rss_kib(&s, ram_kib))
        .unwrap_or(0)
}

/// The guest's RAM resident on the host over time, from the `freed` marker
/// until the `released` one is measured.
#[derive(Default)]
pub(crate) struct Series {
    /// When the `freed` marker was read; `None` before it and once done.
    since: Option<Instant>,
    last: Option<Instant>,
    samples: Vec<(u64, u64)>,
}

impl Series {
    /// Takes a sample if the series runs and none was taken in the last 100 ms.
    fn sample(&mut self, pid: u32, ram_kib: &[u64]) {
        let Some(since) = self.since else { return };
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        let now = Instant::now();
        self.last = Some(now);
        let kib = guest_ram_kib(pid, ram_kib);
        self.samples
            .push(((now - since).as_nanos() as u64, kib * 1024));
    }
}

pub(crate) fn last_line(console: &str) -> &str {
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
    let Spawned {
        mut child,
        mut stdin,
        stdout,
        pid,
    } = spawn_qemu(run.args)?;
    let console = Arc::new(Mutex::new(Console::default()));
    let reader = read_console(stdout, run.finish, started, Arc::clone(&console));
    let mut watch = Watch::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        watch.measure_marks(pid, run, &console, stdin.as_mut());
        watch.sample(pid);
        watch.series.sample(pid, run.ram_kib);
        if watch.ready_to_measure(run.finish, &console, started) {
            watch.measure_at_rest(pid, run, &mut child, &mut stdin);
        }
        let elapsed = started.elapsed();
        if elapsed > run.limit {
            watch.timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        if elapsed >= watch.next_progress {
            watch.next_progress += Duration::from_secs(10);
            let line = console
                .lock()
                .map(|c| last_line(&c.text).to_string())
                .unwrap_or_default();
            progress(elapsed, &line);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall_ns = watch
        .done_wall
        .unwrap_or_else(|| started.elapsed())
        .as_nanos() as u64;
    drop(stdin);
    let _ = reader.join();
    let mut console = console.lock().map(|c| c.text.clone()).unwrap_or_default();
    if let Some(mut err) = child.stderr.take() {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        if !e.trim().is_empty() {
            console.push_str("\n[qemu stderr] ");
            console.push_str(e.trim());
        }
    }
    Ok(watch.finish(run.accel, status.code(), wall_ns, console))
}

/// What the console reader has seen, shared with the loop that measures QEMU.
#[derive(Default)]
struct Console {
    /// The console so far.
    text: String,
    /// Whether the guest has said it is done.
    done: bool,
    /// Whether it has printed all it will that is worth waiting for.
    said_all: bool,
    /// The markers it printed that the host has yet to measure, with when.
    pending: Vec<(String, Duration)>,
}

/// Reads QEMU's standard output (the guest's serial console) line by line into
/// `console` until QEMU closes it.
fn read_console(
    stdout: impl Read + Send + 'static,
    finish: Finish,
    started: Instant,
    console: Arc<Mutex<Console>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(lines.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let done = finish.is_done(text.trim_end());
            let last = finish.is_final(text.trim_end());
            let mark = marks::mark_in(text.trim_end()).map(str::to_string);
            if let Ok(mut c) = console.lock() {
                c.text.push_str(&text);
                c.done |= done;
                c.said_all |= last;
                if let Some(m) = mark {
                    c.pending.push((m, started.elapsed()));
                }
            }
            line.clear();
        }
    })
}

/// What the host has measured of a running QEMU so far.
struct Watch {
    /// Peak resident KiB (`VmHWM`).
    peak: u64,
    /// The last resident KiB sampled (`VmRSS`).
    last: u64,
    /// Resident KiB of QEMU and of its guest RAM, at rest, once measured.
    measured: Option<(u64, u64)>,
    timed_out: bool,
    stopped_by_host: bool,
    next_progress: Duration,
    /// When the guest said it was done.
    done_at: Option<Instant>,
    /// Its wall time then, not counting the wait to measure it at rest.
    done_wall: Option<Duration>,
    marks: Vec<Mark>,
    /// Guest RAM from the `freed` marker on.
    series: Series,
    /// What the series ended on: resident guest RAM at the `released` marker.
    release_90_ns: Option<u64>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            peak: 0,
            last: 0,
            measured: None,
            timed_out: false,
            stopped_by_host: false,
            next_progress: Duration::from_secs(10),
            done_at: None,
            done_wall: None,
            marks: Vec::new(),
            series: Series::default(),
            release_90_ns: None,
        }
    }

    /// Measures QEMU at each marker the guest printed since the last call: the
    /// guest waits at its marker for a byte, so it is at rest there; then lets it
    /// go on.
    fn measure_marks(
        &mut self,
        pid: u32,
        run: &Run<'_>,
        console: &Mutex<Console>,
        mut stdin: Option<&mut ChildStdin>,
    ) {
        let pending = console
            .lock()
            .map(|mut c| std::mem::take(&mut c.pending))
            .unwrap_or_default();
        for (name, at) in pending {
            if !marks::waits_at(&name) {
                // The guest goes on: sample at once, and from now on.
                self.series.since = Some(Instant::now());
                self.series.sample(pid, run.ram_kib);
                let guest = self.series.samples.first().map_or(0, |s| s.1);
                self.marks.push(Mark {
                    name,
                    qemu_rss_bytes: status_kib(pid, "VmRSS:").unwrap_or(0) * 1024,
                    guest_ram_rss_bytes: guest,
                    at_ns: at.as_nanos() as u64,
                });
                continue;
            }
            let (rss, guest) = if name == marks::RELEASED && !run.release_settle.is_zero() {
                settle_for(
                    pid,
                    run.ram_kib,
                    run.release_settle,
                    RELEASE_SETTLE_LIMIT,
                    &mut self.series,
                )
            } else {
                settle(pid, run.ram_kib)
            };
            if name == marks::RELEASED && self.series.since.take().is_some() {
                self.release_90_ns = marks::time_to_90(&self.series.samples, guest * 1024);
            }
            self.marks.push(Mark {
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
    }

    /// Samples QEMU's resident memory and its peak.
    fn sample(&mut self, pid: u32) {
        if let Some(kib) = status_kib(pid, "VmRSS:") {
            self.last = kib;
        }
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            self.peak = self.peak.max(kib);
        }
    }

    /// Whether the guest is done and has printed what was worth waiting for (or
    /// waited long enough), and is yet to be measured at rest.
    fn ready_to_measure(
        &mut self,
        finish: Finish,
        console: &Mutex<Console>,
        started: Instant,
    ) -> bool {
        let (done, said_all) = console
            .lock()
            .map(|c| (c.done, c.said_all))
            .unwrap_or((false, false));
        if done && self.done_at.is_none() {
            self.done_at = Some(Instant::now());
            self.done_wall = Some(started.elapsed());
        }
        let waited = self
            .done_at
            .is_some_and(|t| said_all || finish == Finish::Release || t.elapsed() > REFINE_WAIT);
        waited && self.measured.is_none()
    }

    /// Measures the guest at rest, then ends it as `run.finish` says.
    fn measure_at_rest(
        &mut self,
        pid: u32,
        run: &Run<'_>,
        child: &mut Child,
        stdin: &mut Option<ChildStdin>,
    ) {
        let (rss, guest) = settle(pid, run.ram_kib);
        self.last = self.last.max(rss);
        self.measured = Some((rss, guest));
        match run.finish {
            Finish::Release => {
                if let Some(mut input) = stdin.take() {
                    let _ = input.write_all(b"\n");
                    let _ = input.flush();
                }
            }
            Finish::StopAtPanic => {
                self.stopped_by_host = true;
                let _ = child.kill();
            }
        }
    }

    /// The run's figures, once QEMU has exited with `exit`.
    fn finish(self, accel: Accel, exit: Option<i32>, wall_ns: u64, console: String) -> VmRun {
        let (rss, guest) = self.measured.unwrap_or((self.last, 0));
        VmRun {
            accel,
            exit_status: if self.stopped_by_host { None } else { exit },
            at_rest: self.measured.is_some(),
            stopped_by_host: self.stopped_by_host,
            qemu_peak_rss_bytes: self.peak.max(self.last) * 1024,
            qemu_rss_bytes: rss * 1024,
            guest_ram_rss_bytes: guest * 1024,
            qemu_own_rss_bytes: rss.saturating_sub(guest) * 1024,
            wall_ns,
            timed_out: self.timed_out,
            console,
            qemu_rss_boot_bytes: marks::rss_at(&self.marks, marks::BOOT),
            qemu_rss_peak_bytes: marks::rss_at(&self.marks, marks::PEAK),
            qemu_rss_after_release_bytes: marks::rss_at(&self.marks, marks::RELEASED),
            guest_ram_at_free_bytes: self
                .marks
                .iter()
                .find(|m| m.name == marks::FREED)
                .map(|m| m.guest_ram_rss_bytes),
            release_90_ns: self.release_90_ns,
            release_samples: self.series.samples,
            marks: self.marks,
        }
    }
}
