//! `meminit`: boot any machine's memory map on this host and compare eager, deferred
//! and on-demand memmap initialisation side by side.
//!
//! This file owns the commands and how an error is told; each command is its own
//! module (`report`, `layout`, `vm`; `report --hotplug` is `hotplug`'s), the tables for people are `table`'s (the
//! spike's rows `spike`'s), the simulation is `meminit_host::sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

mod args;
mod hotplug;
mod layout;
mod mix;
mod plot;
mod repeated;
mod report;
mod spike;
mod table;
mod vm;

use report::{report, ReportArgs};

#[derive(Parser)]
#[command(
    name = "meminit",
    version,
    about = "Boot a machine's memory map on this host and compare eager, deferred and on-demand memmap initialisation",
    long_about = "Boot a machine's memory map on this host and compare eager, deferred and on-demand \
memmap initialisation.\n\nWith no command, runs `report` on each built-in machine that fits this host."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a machine under each strategy and report the figures side by side.
    Report(ReportArgs),
    /// Print a memory map's per-node, per-zone layout in Linux's words.
    Layout(LayoutArgs),
    /// Boot the guest kernel (and Linux) under QEMU and measure what it costs its host.
    Vm(vm::VmArgs),
}

#[derive(Args)]
struct LayoutArgs {
    /// A memory-map file: JSON, or a Linux boot log.
    file: PathBuf,
}

fn main() -> ExitCode {
    // Like any Unix filter, end quietly when the reader goes away (`| head`)
    // rather than panic on a write to a closed pipe.
    // SAFETY: called first thing in main, before any thread starts; restoring
    // the default disposition of SIGPIPE installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        None => default_run(),
        Some(Command::Report(args)) => report(&args),
        Some(Command::Layout(args)) => layout::layout(&args.file),
        Some(Command::Vm(args)) => vm::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meminit: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each said once: `anyhow`'s `{:#}` appends every cause,
/// but most of our errors already end with their cause's text (`"{path}: {source}"`),
/// which would print it twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.ends_with(&cause) {
            out = format!("{out}: {cause}");
        }
    }
    out
}

/// `meminit` alone: `meminit report` with its defaults, which runs every
/// built-in machine.
fn default_run() -> Result<ExitCode> {
    match Cli::parse_from(["meminit", "report"]).command {
        Some(Command::Report(args)) => report(&args),
        _ => bail!("the default report's arguments did not parse"),
    }
}
