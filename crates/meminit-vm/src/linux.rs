//! The Linux peer: its kernel command line and what its console says.
//!
//! Owns the command line Linux boots with for the meminit guests' options (and
//! the notes on what Linux is and is not given), and reading Linux's console for
//! its memory figures, TSC frequency and how far it got. It does not run QEMU
//! (`run`'s); Linux's boot-log memory map is `meminit_host::dmesg`'s.

use serde::Serialize;

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
    /// What `/init` freed in its workload (`MEMINIT-INIT freed_kib N`: Linux's
    /// free memory after the rest less before the free), bytes.
    pub freed_bytes: Option<u64>,
}

fn timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest[..rest.find(']')?].trim().parse().ok()
}

/// Reads a Linux console.
pub fn parse_linux_console(console: &str) -> LinuxBoot {
    let mut out = LinuxBoot::default();
    let figures = meminit_host::dmesg::parse(console).map(|l| l.figures).ok();
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
        if let Some(kib) = line
            .split_once("MEMINIT-INIT freed_kib ")
            .and_then(|(_, n)| n.split_whitespace().next()?.parse::<u64>().ok())
        {
            out.freed_bytes = Some(kib * 1024);
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
    /// The meminit guests' `workload=files:COUNT`: files.
    pub files: Option<u64>,
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
        if let Some(files) = opts.files {
            append.push_str(&format!(" meminit_files={files}"));
            notes.push(format!(
                "files: Linux's initramfs /init writes {files} tmpfs files of 4 KiB, deletes each but with probability 1% (awk's rand, at random), and rests while Linux reports the freed pages"
            ));
        }
    }
    if opts.workload {
        notes.push(if opts.initramfs {
            "workload: only a spike or files is run by Linux's /init; other workloads are not given to Linux, which has no such option".into()
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
}
