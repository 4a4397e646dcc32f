//! The kernel command line: `meminit=`, `trace_buf_size=`, `crashkernel=`,
//! `workload=`, `hold=`, `memmap=`, `accept=`, `virtio_mem=`, `hotplug=` and
//! `hotplug_use=`. Options a monitor or a Linux-minded user passes by habit
//! (`console=ttyS0`, `quiet`, `loglevel=7`, ...) are ignored and noted; anything
//! else is an error that names the option.

use core::fmt;

use meminit::{Granularity, Strategy};
use meminit_boot::{parse_size, Workload};

/// The most ignored options kept to be noted.
pub const MAX_IGNORED: usize = 16;

/// The options.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// `meminit=eager|deferred|ondemand` (default: deferred).
    pub strategy: Strategy,
    /// `trace_buf_size=SIZE`: ring buffer per CPU.
    pub trace_buf_size: Option<u64>,
    /// `crashkernel=SIZE` (or Linux's `SIZE@OFFSET`, whose offset is ignored).
    pub crashkernel: Option<u64>,
    /// `workload=idle|container[:SIZE]|random[:OPS]|smp[:OPS]|spike[:SIZE]|files[:COUNT]`.
    pub workload: Workload,
    /// `hold=serial`: once the report is printed, wait (at most a minute) for a
    /// byte on the serial line before powering off, so that whoever runs the guest
    /// can measure it at rest.
    pub hold: bool,
    /// Linux options taken but ignored, to be noted.
    pub ignored: [&'a str; MAX_IGNORED],
    /// How many.
    pub ignored_count: usize,
    /// Notes on options taken in part (`crashkernel=X@Y`).
    pub crash_offset_ignored: bool,
    /// `memmap=chunk|section`: the memmap's granularity (default: chunk, so that
    /// the memmap of chunks given back goes back to the host too).
    pub memmap: Granularity,
    /// `accept=zero|off`: zero each chunk before its first use (default: off).
    pub accept_zero: bool,
    /// `virtio_mem=auto|on|off`: drive a virtio-mem device (default: auto).
    pub virtio_mem: VirtioMemMode,
    /// `hotplug=SIZE`: after the workload, `meminit vm --hotplug`'s schedule
    /// (the host grows the virtio-mem device by SIZE and shrinks it back; the
    /// guest uses the memory in between). Needs a device; waits at its markers
    /// whatever `hold=` says.
    pub hotplug: Option<u64>,
    /// `hotplug_use=SIZE`: how much of the plug the schedule's workload writes
    /// (default: all of it); at most `hotplug=`'s SIZE.
    pub hotplug_use: Option<u64>,
}

/// Whether to drive a virtio-mem device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioMemMode {
    /// Drive one if PCI has one (`1af4:1058`); say nothing otherwise.
    Auto,
    /// Drive one, and fail if there is none.
    On,
    /// Leave any alone.
    Off,
}

/// Options of Linux's (or of a monitor's default command line) that mean nothing
/// here: taken and noted, never an error.
const LINUX_OPTIONS: [&str; 22] = [
    "console",
    "earlycon",
    "earlyprintk",
    "loglevel",
    "ignore_loglevel",
    "quiet",
    "debug",
    "panic",
    "reboot",
    "root",
    "rootfstype",
    "rw",
    "ro",
    "init",
    "nokaslr",
    "noapic",
    "acpi",
    "pci",
    "tsc",
    "tsc_early_khz",
    "mminit_loglevel",
    "i8042.noaux",
];

/// A command-line option that could not be taken.
pub struct BadOption<'a> {
    /// The option as written.
    pub option: &'a str,
    /// Why.
    pub why: &'static str,
}

impl fmt::Display for BadOption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad kernel command line option '{}': {}",
            self.option, self.why
        )
    }
}

/// Parses the command line.
pub fn parse(cmdline: &str) -> Result<Options<'_>, BadOption<'_>> {
    let mut o = Options {
        strategy: Strategy::Deferred,
        trace_buf_size: None,
        crashkernel: None,
        workload: Workload::Idle,
        hold: false,
        ignored: [""; MAX_IGNORED],
        ignored_count: 0,
        crash_offset_ignored: false,
        memmap: Granularity::Chunk,
        accept_zero: false,
        hotplug: None,
        hotplug_use: None,
        virtio_mem: VirtioMemMode::Auto,
    };
    for option in cmdline.split_ascii_whitespace() {
        let bad = |why| BadOption { option, why };
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "meminit" => {
                o.strategy = value
                    .parse()
                    .map_err(|_| bad("expected eager, deferred or ondemand"))?
            }
            "trace_buf_size" => {
                o.trace_buf_size = Some(parse_size(value).map_err(|_| bad("not a size"))?)
            }
            "crashkernel" => {
                // Linux's `SIZE@OFFSET`: the size is taken, the offset is not (the
                // reservation is wherever below 4 GiB the allocator finds it).
                let size = match value.split_once('@') {
                    Some((size, offset)) => {
                        parse_size(offset).map_err(|_| bad("not a size@offset"))?;
                        o.crash_offset_ignored = true;
                        size
                    }
                    None => value,
                };
                o.crashkernel = Some(parse_size(size).map_err(|_| bad("not a size"))?)
            }
            "workload" => {
                o.workload = value.parse().map_err(|_| {
                    bad("expected idle, container[:SIZE], random[:OPS], smp[:OPS], spike[:SIZE] or files[:COUNT]")
                })?
            }
            "memmap" => {
                o.memmap = match value {
                    "section" => Granularity::Section,
                    "chunk" => Granularity::Chunk,
                    _ => return Err(bad("expected section or chunk")),
                }
            }
            "accept" => {
                o.accept_zero = match value {
                    "zero" => true,
                    "off" => false,
                    _ => return Err(bad("expected zero or off")),
                }
            }
            "virtio_mem" => {
                o.virtio_mem = match value {
                    "auto" => VirtioMemMode::Auto,
                    "on" => VirtioMemMode::On,
                    "off" => VirtioMemMode::Off,
                    _ => return Err(bad("expected auto, on or off")),
                }
            }
            "hotplug" => {
                let size = parse_size(value).map_err(|_| bad("not a size"))?;
                if size == 0 || !size.is_multiple_of(2 << 20) {
                    return Err(bad("a size of whole 2 MiB blocks, above 0"));
                }
                o.hotplug = Some(size)
            }
            "hotplug_use" => {
                let size = parse_size(value).map_err(|_| bad("not a size"))?;
                if size == 0 || !size.is_multiple_of(4096) {
                    return Err(bad("a size of whole 4 KiB pages, above 0"));
                }
                o.hotplug_use = Some(size)
            }
            "hold" => {
                o.hold = match value {
                    "serial" => true,
                    "none" => false,
                    _ => return Err(bad("expected serial or none")),
                }
            }
            _ if LINUX_OPTIONS.contains(&key) => {
                if o.ignored_count < MAX_IGNORED {
                    o.ignored[o.ignored_count] = option;
                    o.ignored_count += 1;
                }
            }
            _ => {
                return Err(bad(
                    "unknown option (known: meminit, trace_buf_size, crashkernel, workload, hold, memmap, accept, virtio_mem, hotplug, hotplug_use, and Linux's console, quiet, loglevel, ... which are ignored)",
                ))
            }
        }
    }
    if let Some(used) = o.hotplug_use {
        let option = cmdline
            .split_ascii_whitespace()
            .rfind(|w| w.starts_with("hotplug_use="))
            .unwrap_or("hotplug_use");
        match o.hotplug {
            None => {
                return Err(BadOption {
                    option,
                    why: "needs hotplug=SIZE",
                })
            }
            Some(plug) if used > plug => {
                return Err(BadOption {
                    option,
                    why: "more than hotplug=SIZE plugs",
                })
            }
            Some(_) => {}
        }
    }
    Ok(o)
}
