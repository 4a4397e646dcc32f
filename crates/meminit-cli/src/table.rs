//! The report's tables for people: the figures of each strategy side by side,
//! the boot allocations and the zones, with the spread over repeated runs. It
//! only formats what the simulation measured; the command line and the JSON
//! are `main`'s, the spike's rows `spike`'s.

use meminit_host::sim::{self, Options, StrategyReport};
use meminit_host::size;

use crate::Repeated;

/// A time for people: `830 ns`, `12.3 µs`, `4.5 ms`, `1.25 s`.
pub(crate) fn format_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

/// One row of the report table: how to print a strategy's figure.
pub(crate) type Cell<'a> = Box<dyn Fn(&StrategyReport) -> String + 'a>;

pub(crate) fn print_report(repeated: &Repeated, opts: &Options) {
    let report = &repeated.first;
    println!(
        "machine {}: {} present on {} node{}, {} CPU{}, {} sections, {} chunks; workload {}; {} deferred worker thread{}",
        report.machine,
        size::format(report.present_bytes),
        report.nodes,
        if report.nodes == 1 { "" } else { "s" },
        report.cpus,
        if report.cpus == 1 { "" } else { "s" },
        size::format(report.section_bytes),
        size::format(opts.chunk_size),
        report.workload,
        opts.threads,
        if opts.threads == 1 { "" } else { "s" },
    );
    println!(
        "  times: median [min–max] of {} run{}; the rest from the first run",
        repeated.runs,
        if repeated.runs == 1 { "" } else { "s" }
    );
    let ran: Vec<&StrategyReport> = report
        .strategies
        .iter()
        .filter(|s| s.skipped.is_none())
        .collect();
    for s in report.strategies.iter().filter(|s| s.skipped.is_some()) {
        println!(
            "  {} skipped: {}",
            s.strategy,
            s.skipped.as_deref().unwrap_or("")
        );
    }
    if ran.is_empty() {
        return;
    }
    let spread = |s: &StrategyReport, metric: &str, f: &dyn Fn(f64) -> String| -> Option<String> {
        let sp = repeated.spread.get(s.strategy)?.get(metric)?;
        Some(if sp.n <= 1 || sp.min == sp.max {
            f(sp.median)
        } else {
            format!("{} [{}–{}]", f(sp.median), f(sp.min), f(sp.max))
        })
    };
    let ns = |v: f64| format_ns(v.round() as u64);
    let rows: Vec<(&str, Cell)> = vec![
        (
            "time until ready",
            Box::new(move |s| spread(s, "ready_ns", &ns).unwrap_or_else(|| format_ns(s.ready_ns))),
        ),
        (
            "time until all initialised",
            Box::new(move |s| match s.full_init_ns {
                None => "never".into(),
                Some(t) => spread(s, "full_init_ns", &ns).unwrap_or_else(|| format_ns(t)),
            }),
        ),
        (
            "time growing (allocations that grew)",
            Box::new(|s| format!("{} ({})", format_ns(s.grow_ns), s.grows)),
        ),
        (
            "chunks: boot/workers/growth/look-up",
            Box::new(|s| {
                format!(
                    "{}/{}/{}/{} of {}",
                    s.chunks_by_boot,
                    s.chunks_by_workers,
                    s.chunks_by_growth,
                    s.chunks_by_lookup,
                    s.chunks_present
                )
            }),
        ),
        (
            "memory accepted: ready/boot/workload",
            Box::new(|s| {
                if s.accept {
                    format!(
                        "{}/{}/{}",
                        size::format(s.accepted_ready_bytes),
                        size::format(s.accepted_boot_bytes),
                        size::format(s.accepted_end_bytes)
                    )
                } else {
                    "-".into()
                }
            }),
        ),
        (
            "memmap resident after boot",
            Box::new(|s| size::format(s.memmap_resident_boot_bytes)),
        ),
        (
            "memmap resident after workload",
            Box::new(|s| size::format(s.memmap_resident_end_bytes)),
        ),
        (
            "memmap if all initialised",
            Box::new(|s| size::format(s.memmap_full_bytes)),
        ),
        (
            "alloc fast path p50/p99/max",
            Box::new(|s| latency(&s.alloc_fast)),
        ),
        (
            "alloc slow path p50/p99/max",
            Box::new(|s| latency(&s.alloc_slow)),
        ),
        (
            "allocations (fast/slow/failed)",
            Box::new(|s| {
                format!(
                    "{}/{}/{}",
                    s.alloc_fast.count, s.alloc_slow.count, s.alloc_failures
                )
            }),
        ),
        (
            "time initialising memmap",
            Box::new(move |s| spread(s, "init_ns", &ns).unwrap_or_else(|| format_ns(s.init_ns))),
        ),
        (
            "physical limit: best 1-core fill, same bytes",
            Box::new(move |s| {
                format!(
                    "{} ({})",
                    spread(s, "limit_fill_ns", &ns).unwrap_or_else(|| format_ns(s.limit_fill_ns)),
                    s.limit_method
                )
            }),
        ),
        (
            "limit / initialising (1.0 = at limit)",
            Box::new(move |s| {
                if s.init_ns == 0 {
                    "-".into()
                } else {
                    spread(s, "limit_ratio", &|v| format!("{v:.2}"))
                        .unwrap_or_else(|| format!("{:.2}", s.limit_ratio))
                }
            }),
        ),
        (
            "parallel limit: all workers' cores fill",
            Box::new(move |s| {
                format!(
                    "{} ({} thread{})",
                    spread(s, "limit_parallel_fill_ns", &ns)
                        .unwrap_or_else(|| format_ns(s.limit_parallel_fill_ns)),
                    s.limit_parallel_threads,
                    if s.limit_parallel_threads == 1 {
                        ""
                    } else {
                        "s"
                    }
                )
            }),
        ),
        (
            "parallel limit / deferred init",
            Box::new(|s| {
                if s.strategy == "deferred" && s.init_ns > 0 {
                    format!("{:.2}", s.limit_parallel_fill_ns as f64 / s.init_ns as f64)
                } else {
                    "-".into()
                }
            }),
        ),
    ];
    let headers: Vec<&str> = ran.iter().map(|s| s.strategy).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, ran.iter().map(|s| cell(s)).collect()))
        .collect();
    print_columns(&headers, &table);
    crate::spike::print(repeated, &ran);
    println!("  boot allocations (sized as Linux sizes them):");
    for b in &ran[0].boot {
        let blocks: u64 = b.blocks_per_node.iter().sum();
        let failed: Vec<String> = ran
            .iter()
            .filter(|s| s.boot.iter().any(|x| x.name == b.name && x.failures > 0))
            .map(|s| s.strategy.to_string())
            .collect();
        println!(
            "    {:<40} {:>8} in {} block{} of order {}{}",
            b.name,
            size::format(b.bytes),
            blocks,
            if blocks == 1 { "" } else { "s" },
            b.order,
            if failed.is_empty() {
                String::new()
            } else {
                format!("  FAILED under {}", failed.join(", "))
            }
        );
    }
    println!("  zones after the workload (pages): free / uninitialised per strategy");
    print!(
        "    {:>4} {:<6} {:>11} {:>11} {:>11}",
        "node", "zone", "spanned", "present", "managed"
    );
    for s in &ran {
        print!("  {:>23}", format!("{} free/uninit", s.strategy));
    }
    println!();
    for (i, z) in ran[0].zones.iter().enumerate() {
        print!(
            "    {:>4} {:<6} {:>11} {:>11} {:>11}",
            z.node, z.zone, z.spanned, z.present, z.managed
        );
        for s in &ran {
            let row = &s.zones[i];
            print!("  {:>23}", format!("{}/{}", row.free, row.uninitialised));
        }
        println!();
    }
}

/// Prints rows of labelled cells under column headers, right-aligned.
pub(crate) fn print_columns(headers: &[&str], rows: &[(&str, Vec<String>)]) {
    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|(_, cells)| cells[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    print!("  {:label_width$}", "");
    for (h, w) in headers.iter().zip(&widths) {
        print!("  {h:>w$}");
    }
    println!();
    for (label, cells) in rows {
        print!("  {label:label_width$}");
        for (cell, w) in cells.iter().zip(&widths) {
            print!("  {cell:>w$}");
        }
        println!();
    }
}

fn latency(l: &sim::Latency) -> String {
    if l.count == 0 {
        "-".into()
    } else {
        format!(
            "{}/{}/{}",
            format_ns(l.median_ns),
            format_ns(l.p99_ns),
            format_ns(l.max_ns)
        )
    }
}
