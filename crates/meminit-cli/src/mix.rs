//! `meminit report --workload mixed:..|churn:..`: runs the mix `--runs` times
//! (seeds 1 to N) and prints what went back to the host, each figure as median
//! [min–max] over the runs, or the runs and their spread as JSON. The runs are
//! `meminit_host::mix`'s; this module prints.

use std::process::ExitCode;

use anyhow::{Context, Result};
use meminit_host::machine::Machine;
use meminit_host::mix::{run_mix, Mix, MixOptions, MixReport};
use meminit_host::size;
use serde::Serialize;

use crate::repeated::Spread;

/// `on` or `off`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

/// A figure of the table: its name, how to read it, whether it is a plain number.
type Figure = (&'static str, fn(&MixReport) -> f64, bool);

const FIGURES: [Figure; 10] = [
    ("live", |r| r.live_bytes as f64, false),
    ("freed", |r| r.freed_bytes as f64, false),
    ("returned", |r| r.returned_bytes as f64, false),
    ("ideal", |r| r.ideal_bytes as f64, false),
    ("returned % of freed", MixReport::of_freed, true),
    ("returned % of ideal", MixReport::of_ideal, true),
    ("memmap at the peak", |r| r.memmap_peak_bytes as f64, false),
    ("memmap kept", |r| r.memmap_kept_bytes as f64, false),
    ("blocks migrated", |r| r.migrated_blocks as f64, true),
    (
        "chunks emptied by compaction",
        |r| r.chunks_emptied as f64,
        true,
    ),
];

#[derive(Serialize)]
struct Json<'a> {
    machine: &'a str,
    present_bytes: u64,
    workload: String,
    options: &'a MixOptions,
    runs: &'a [MixReport],
    spread: std::collections::BTreeMap<&'static str, Spread>,
}

fn text(value: f64, plain: bool) -> String {
    if plain {
        if value.fract() == 0.0 {
            format!("{value}")
        } else {
            format!("{value:.1}")
        }
    } else {
        size::format(value.round() as u64)
    }
}

/// Runs `mix` `runs` times on `machine` and prints the figures.
pub(crate) fn report(
    machine: &Machine,
    mix: &Mix,
    opts: &MixOptions,
    runs: u32,
    json: bool,
) -> Result<ExitCode> {
    let mut reports = Vec::new();
    for seed in 1..=u64::from(runs) {
        let opts = MixOptions { seed, ..*opts };
        reports.push(
            run_mix(machine, mix, &opts)
                .with_context(|| format!("{mix} on {} (seed {seed})", machine.name))?,
        );
    }
    let spread = FIGURES
        .iter()
        .filter_map(|&(name, read, _)| {
            Some((name, Spread::of(reports.iter().map(read).collect())?))
        })
        .collect();
    let present = machine.layout()?.present_pages() * meminit::PAGE_SIZE;
    let failures: u64 = reports.iter().map(|r| r.failures).sum();
    if json {
        let out = Json {
            machine: &machine.name,
            present_bytes: present,
            workload: mix.to_string(),
            options: opts,
            runs: &reports,
            spread,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} ({} present): workload {mix}, hints {}{}, compaction {}; {runs} run{} (seeds 1-{runs}), median [min-max]",
            machine.name,
            size::format(present),
            if opts.hints { "on" } else { "off" },
            if opts.wrong_hints > 0.0 {
                format!(" ({}% wrong)", opts.wrong_hints * 100.0)
            } else {
                String::new()
            },
            if opts.compact { "on" } else { "off" },
            if runs == 1 { "" } else { "s" },
        );
        for &(name, read, plain) in &FIGURES {
            let s = spread[name];
            let cell = if s.min == s.max {
                text(s.median, plain)
            } else {
                format!(
                    "{} [{}-{}]",
                    text(s.median, plain),
                    text(s.min, plain),
                    text(s.max, plain)
                )
            };
            let _ = read;
            println!("  {name:<30} {cell}");
        }
        println!(
            "  returned: chunks given back to uninitialised plus free memory reported to the host after {} idle passes; ideal: all freed memory but the free part of the fewest 4 MiB chunks that hold the live pages",
            meminit_host::spike::SPIKE_PASSES
        );
    }
    if failures > 0 {
        eprintln!("meminit: {mix}: {failures} allocations failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
