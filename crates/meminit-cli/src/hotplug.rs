//! `meminit report --hotplug SIZE`: the simulator's memory that arrives after
//! start-up, run `--runs` times and shown as a table (or JSON).
//!
//! The checks of the command line are `report`'s (which knows its options); the
//! schedule is `meminit_host::hotplug`'s. This module runs it and formats it.

use std::process::ExitCode;

use anyhow::Result;
use meminit_host::hotplug::{self, HotplugOptions, HotplugReport, Resident};
use meminit_host::machine::Machine;
use meminit_host::size;
use serde::Serialize;

use crate::table::{format_ns, print_columns, print_legend, print_wrapped, spread_text};

/// What `report` checked.
pub(crate) struct SimHotplug {
    pub machine: Machine,
    pub options: HotplugOptions,
    pub runs: u32,
    pub json: bool,
    /// Why the workload is smaller than the plug, if it is.
    pub capped: Option<String>,
}

#[derive(Serialize)]
struct Out<'a> {
    machine: &'a str,
    hotplug_bytes: u64,
    workload_bytes: u64,
    strategy: &'static str,
    note: Option<&'a str>,
    runs: Vec<HotplugReport>,
}

pub(crate) fn report(h: &SimHotplug) -> Result<ExitCode> {
    let mut runs = Vec::new();
    for i in 0..h.runs {
        if !h.json {
            eprintln!(
                "{}: plug of {} (run {} of {})",
                h.machine.name,
                size::format(h.options.bytes),
                i + 1,
                h.runs
            );
        }
        runs.push(hotplug::run(&h.machine, &h.options)?);
    }
    let ok = runs.iter().all(|r| r.removed_fully && r.failures == 0);
    if h.json {
        let out = Out {
            machine: &h.machine.name,
            hotplug_bytes: h.options.bytes,
            workload_bytes: h.options.workload_bytes,
            strategy: h.options.strategy.name(),
            note: h.capped.as_deref(),
            runs,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(h, &runs);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cell(
    runs: &[HotplugReport],
    get: &dyn Fn(&HotplugReport) -> u64,
    f: &dyn Fn(f64) -> String,
) -> String {
    let mut v: Vec<f64> = runs.iter().map(|r| get(r) as f64).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    spread_text(v[v.len() / 2], v[0], v[v.len() - 1], v.len(), f)
}

fn mib(x: f64) -> String {
    format!("{:.1} MiB", x / f64::from(1u32 << 20))
}

/// How a step's residency is read from a run.
type StepOf = fn(&HotplugReport) -> Resident;

fn print_table(h: &SimHotplug, runs: &[HotplugReport]) {
    let Some(first) = runs.first() else { return };
    print_wrapped(
        "  ",
        &format!(
        "{}: {} hot-pluggable at {:#x}-{:#x}, added after start-up ({} boot memory), {} written in it and freed, then removed; median [min–max] of {} run(s)",
        h.machine.name,
        size::format(h.options.bytes),
        first.range_start,
        first.range_end,
        h.options.strategy.name(),
        size::format(first.workload_bytes),
        runs.len()
    ),
    );
    if let Some(note) = &h.capped {
        print_wrapped("  ", &format!("note: {note}"));
    }
    let steps: [(&str, StepOf); 5] = [
        ("before add_memory", |r| r.before),
        ("after add_memory", |r| r.added),
        ("at the workload's peak", |r| r.peak),
        ("after the free and give-back", |r| r.freed),
        ("after remove_memory", |r| r.removed),
    ];
    let mut rows: Vec<(&str, Vec<String>)> = steps
        .iter()
        .map(|(label, get)| {
            (
                *label,
                vec![
                    cell(runs, &|r| get(r).memmap_bytes, &mib),
                    cell(runs, &|r| get(r).memory_bytes, &mib),
                ],
            )
        })
        .collect();
    print_columns(&["memmap resident", "memory resident"], &rows);
    let ns = |x: f64| format_ns(x.round() as u64);
    let count = |x: f64| format!("{x:.0}");
    let full = runs.iter().filter(|r| r.removed_fully).count();
    rows = vec![
        (
            "add_memory (usable after)",
            vec![cell(runs, &|r| r.add_ns, &ns)],
        ),
        ("remove_memory", vec![cell(runs, &|r| r.remove_ns, &ns)]),
        ("workload pages", vec![cell(runs, &|r| r.pages, &count)]),
        (
            "  of them in the new memory",
            vec![cell(runs, &|r| r.range_pages, &count)],
        ),
        (
            "remove fully succeeded",
            vec![format!("{full} of {}", runs.len())],
        ),
        (
            "  memory kept by remove_memory",
            vec![cell(runs, &|r| r.kept_pages * 4096, &mib)],
        ),
    ];
    print_columns(&["value"], &rows);
    print_legend(&[
        "memmap resident: the memmap's pages resident on the host (mincore); memory resident: the simulated physical memory's (the host discards what free page reporting hands it, and the hot-pluggable range once removed).",
        "add_memory and remove_memory: wall time of the call; memory is usable once add_memory returns. Remove fully succeeded: it kept no page (Removed::is_complete).",
    ]);
}
