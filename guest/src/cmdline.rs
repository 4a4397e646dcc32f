//! The kernel command line: `meminit=`, `trace_buf_size=`, `crashkernel=`,
//! `workload=`, `memmap=`, `accept=`. Anything else is an error that names the option.

use core::fmt;

use meminit::{Granularity, Strategy};
use meminit_boot::{parse_size, Workload};

/// The options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `meminit=eager|deferred|ondemand` (default: deferred).
    pub strategy: Strategy,
    /// `trace_buf_size=SIZE`: ring buffer per CPU.
    pub trace_buf_size: Option<u64>,
    /// `crashkernel=SIZE`.
    pub crashkernel: Option<u64>,
    /// `workload=idle|container[:SIZE]|random[:OPS]|smp[:OPS]`.
    pub workload: Workload,
    /// `memmap=section|chunk`: the memmap's granularity (default: section).
    pub memmap: Granularity,
    /// `accept=zero|off`: zero each chunk before its first use (default: off).
    pub accept_zero: bool,
}

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
pub fn parse(cmdline: &str) -> Result<Options, BadOption<'_>> {
    let mut o = Options {
        strategy: Strategy::Deferred,
        trace_buf_size: None,
        crashkernel: None,
        workload: Workload::Idle,
        memmap: Granularity::Section,
        accept_zero: false,
    };
    for option in cmdline.split_ascii_whitespace() {
        let bad = |why| BadOption { option, why };
        let (key, value) = option.split_once('=').ok_or(bad("expected key=value"))?;
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
                o.crashkernel = Some(parse_size(value).map_err(|_| bad("not a size"))?)
            }
            "workload" => {
                o.workload = value.parse().map_err(|_| {
                    bad("expected idle, container[:SIZE], random[:OPS] or smp[:OPS]")
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
            _ => {
                return Err(bad(
                    "unknown option (known: meminit, trace_buf_size, crashkernel, workload, memmap, accept)",
                ))
            }
        }
    }
    Ok(o)
}
