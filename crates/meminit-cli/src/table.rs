//! The report's tables for people: the figures of each strategy side by side,
//! the boot allocations and the zones, with the spread over repeated runs, and
//! the layout every table shares: [`WIDTH`] columns at most, rows that say
//! nothing left out, a legend for every row whose label needs one. It only
//! formats what the simulation measured; the command line and the JSON are
//! `report`'s, the spike's rows `spike`'s, the guests' table `vm`'s.

use meminit_host::sim::{self, Options, StrategyReport};
use meminit_host::size;

use crate::repeated::{Repeated, PARALLEL_RATIO};

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

/// The widest a line of the tables may be, in characters.
pub(crate) const WIDTH: usize = 120;

/// `median [min–max]` as people read it: the median with its unit, then the
/// range with the unit once where both ends share it (`281.4 ms [270.1–290.0 ms]`,
/// `1.5G [1.4–1.6G]`); the median alone where the runs agree as far as shown.
pub(crate) fn spread_text(
    median: f64,
    min: f64,
    max: f64,
    n: usize,
    f: &dyn Fn(f64) -> String,
) -> String {
    if n <= 1 || min == max {
        return f(median);
    }
    let (lo, hi) = (f(min), f(max));
    if lo == hi {
        // The runs differ by less than the figure shows.
        return f(median);
    }
    match (split_unit(&lo), split_unit(&hi)) {
        ((a, u), (b, w)) if u == w && !u.trim().is_empty() => {
            format!("{} [{a}–{b}{u}]", f(median))
        }
        _ => format!("{} [{lo}–{hi}]", f(median)),
    }
}

/// A formatted figure's number and unit: `("281.4", " ms")`, `("1.5", "G")`.
fn split_unit(text: &str) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(text.len(), |(i, _)| i);
    text.split_at(end)
}

/// Prints each line of `text` after `indent`; a line wider than [`WIDTH`] is
/// wrapped at word boundaries, its continuation lines indented two more spaces.
pub(crate) fn print_wrapped(indent: &str, text: &str) {
    for line in wrap(indent, text) {
        println!("{line}");
    }
}

fn wrap(indent: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.lines() {
        if indent.chars().count() + para.chars().count() <= WIDTH {
            out.push(format!("{indent}{para}"));
            continue;
        }
        let mut line = indent.to_string();
        let mut empty = true;
        for word in para.split_whitespace() {
            if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
                out.push(std::mem::replace(&mut line, format!("{indent}  ")));
                empty = true;
            }
            if !empty {
                line.push(' ');
            }
            line.push_str(word);
            empty = false;
        }
        out.push(line);
    }
    out
}

/// Prints the legend under a table: what its labels' words and ratios mean.
pub(crate) fn print_legend(lines: &[&str]) {
    for line in lines {
        print_wrapped("    ", line);
    }
}

pub(crate) fn print_report(repeated: &Repeated, opts: &Options) {
    let report = &repeated.first;
    print_header(repeated, opts);
    let ran: Vec<&StrategyReport> = report
        .strategies
        .iter()
        .filter(|s| s.skipped.is_none())
        .collect();
    for s in report.strategies.iter().filter(|s| s.skipped.is_some()) {
        print_wrapped(
            "  ",
            &format!(
                "{} skipped: {}",
                s.strategy,
                s.skipped.as_deref().unwrap_or("")
            ),
        );
    }
    if ran.is_empty() {
        return;
    }
    let rows = strategy_rows(repeated, opts);
    let headers: Vec<&str> = ran.iter().map(|s| s.strategy).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, ran.iter().map(|s| cell(s)).collect()))
        .collect();
    print_columns(&headers, &table);
    let mut legend = vec![
        "ready: the allocator serves; all initialised: every chunk's descriptors written.",
        "chunks by boot/workers/growth/look-up: who initialised them: start-up, the deferred workers, \
         allocations that found their zone empty, or a descriptor look-up.",
        "p50/p99/max: median, 99th percentile and slowest allocation; fast path: from a per-CPU cache \
         or a free list; slow path: everything else (refill, growth).",
        "fill limit: one core writing the same number of memmap bytes on fresh memory, the best of \
         three methods (named) by its mean of one fill before the run and one after; parallel: as many threads as deferred \
         workers, filling together.",
        "speed, x of limit: the limit's time over the time initialising (1.00x: as fast as the fill, \
         below: slower); it can pass 1.00x, since the limit is measured beside it, not a bound.",
        "the host's populate: its kernel committing and zeroing the memmap's pages, most of both sides and \
         not the allocator's doing; less populate: the fill's writes (deferred: the parallel fill's) over \
         initialisation's time without it (descriptor writes and bookkeeping against memset; - where \
         they differ in work: on-demand, acceptance, a premapped or chunk-granular memmap).",
    ];
    if opts.accept {
        legend.push(
            "accepted: memory accepted (zeroed) before its first use, by the time the allocator \
             served, after the boot allocations, and after the workload.",
        );
    }
    print_legend(&legend);
}

/// The boot allocations and the zones, for the strategies that ran.
pub(crate) fn print_boot_and_zones(repeated: &Repeated) {
    let ran: Vec<&StrategyReport> = repeated
        .first
        .strategies
        .iter()
        .filter(|s| s.skipped.is_none())
        .collect();
    if ran.is_empty() {
        return;
    }
    print_boot_allocations(&ran);
    print_zones(&ran);
}

/// The machine, the workload and the workers, and how times are given.
fn print_header(repeated: &Repeated, opts: &Options) {
    let report = &repeated.first;
    let s = |n: u64| if n == 1 { "" } else { "s" };
    print_wrapped(
        "",
        &format!(
            "machine {}: {} present on {} node{}, {} CPU{}",
            report.machine,
            size::format(report.present_bytes),
            report.nodes,
            s(report.nodes as u64),
            report.cpus,
            s(report.cpus as u64),
        ),
    );
    // At least one worker per node, whatever `--threads` asked for.
    let workers = opts.threads.max(report.nodes);
    println!(
        "  {} sections, {} chunks; workload {}; {} deferred worker thread{}",
        size::format(report.section_bytes),
        size::format(opts.chunk_size),
        report.workload,
        workers,
        s(workers as u64),
    );
    println!(
        "  times: median [min–max] of {} run{}; the rest from the first run",
        repeated.runs,
        s(repeated.runs as u64)
    );
}

/// The rows of the strategies' table.
fn strategy_rows<'a>(repeated: &'a Repeated, opts: &Options) -> Vec<(&'static str, Cell<'a>)> {
    let spread =
        move |s: &StrategyReport, metric: &str, f: &dyn Fn(f64) -> String| -> Option<String> {
            let sp = repeated.spread.get(s.strategy)?.get(metric)?;
            Some(spread_text(sp.median, sp.min, sp.max, sp.n, f))
        };
    let ns = |v: f64| format_ns(v.round() as u64);
    let times = |v: f64| format!("{v:.2}x");
    let accept = opts.accept;
    let mut rows: Vec<(&'static str, Cell)> = vec![
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
            "time growing (allocations)",
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
    ];
    if accept {
        rows.push((
            "accepted: ready/boot/workload",
            Box::new(|s| {
                format!(
                    "{}/{}/{}",
                    size::format(s.accepted_ready_bytes),
                    size::format(s.accepted_boot_bytes),
                    size::format(s.accepted_end_bytes)
                )
            }),
        ));
    }
    rows.extend::<Vec<(&'static str, Cell)>>(vec![
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
            "allocations fast/slow/failed",
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
            "  of which the host's populate",
            Box::new(move |s| {
                spread(s, "init_populate_ns", &ns).unwrap_or_else(|| format_ns(s.init_populate_ns))
            }),
        ),
        (
            "1-core fill limit",
            Box::new(move |s| {
                spread(s, "limit_fill_ns", &ns).unwrap_or_else(|| format_ns(s.limit_fill_ns))
            }),
        ),
        (
            "1-core fill limit: method",
            Box::new(|s| s.limit_method.to_string()),
        ),
        (
            "init speed, x of 1-core limit",
            Box::new(move |s| {
                if s.init_ns == 0 {
                    "-".into()
                } else {
                    spread(s, "limit_ratio", &times).unwrap_or_else(|| times(s.limit_ratio))
                }
            }),
        ),
        (
            "  less populate, x of fill's writes",
            Box::new(move |s| {
                if s.limit_writes_ratio > 0.0 {
                    spread(s, "limit_writes_ratio", &times)
                        .unwrap_or_else(|| times(s.limit_writes_ratio))
                } else {
                    "-".into()
                }
            }),
        ),
    ]);
    rows.push((
        "parallel fill limit",
        Box::new(move |s| {
            spread(s, "limit_parallel_fill_ns", &ns)
                .unwrap_or_else(|| format_ns(s.limit_parallel_fill_ns))
        }),
    ));
    rows.push((
        "deferred speed, x of parallel limit",
        Box::new(move |s| {
            if s.strategy == "deferred" && s.init_ns > 0 {
                spread(s, PARALLEL_RATIO, &times)
                    .unwrap_or_else(|| times(s.limit_parallel_fill_ns as f64 / s.init_ns as f64))
            } else {
                "-".into()
            }
        }),
    ));
    rows
}

/// The boot allocations, sized as Linux sizes them, and where any failed.
fn print_boot_allocations(ran: &[&StrategyReport]) {
    println!("  boot allocations (sized as Linux sizes them):");
    let name_width = ran[0].boot.iter().map(|b| b.name.len()).max().unwrap_or(0);
    for b in &ran[0].boot {
        let blocks: u64 = b.blocks_per_node.iter().sum();
        let failed: Vec<String> = ran
            .iter()
            .filter(|s| s.boot.iter().any(|x| x.name == b.name && x.failures > 0))
            .map(|s| s.strategy.to_string())
            .collect();
        print_wrapped(
            "    ",
            &format!(
                "{:<name_width$} {:>8} in {} block{} of order {}{}",
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
            ),
        );
    }
}

/// Each zone's size, and its free and uninitialised pages per strategy.
fn print_zones(ran: &[&StrategyReport]) {
    println!("  zones after the workload (pages): free/uninitialised per strategy");
    let cells: Vec<Vec<String>> = ran
        .iter()
        .map(|s| {
            s.zones
                .iter()
                .map(|row| format!("{}/{}", row.free, row.uninitialised))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = ran
        .iter()
        .zip(&cells)
        .map(|(s, c)| {
            c.iter()
                .map(String::len)
                .chain([s.strategy.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    print!(
        "    {:>4} {:<6} {:>11} {:>11} {:>11}",
        "node", "zone", "spanned", "present", "managed"
    );
    for (s, w) in ran.iter().zip(&widths) {
        print!("  {:>w$}", s.strategy);
    }
    println!();
    for (i, z) in ran[0].zones.iter().enumerate() {
        print!(
            "    {:>4} {:<6} {:>11} {:>11} {:>11}",
            z.node, z.zone, z.spanned, z.present, z.managed
        );
        for (c, w) in cells.iter().zip(&widths) {
            print!("  {:>w$}", c.get(i).map_or("-", String::as_str));
        }
        println!();
    }
}

/// Prints rows of labelled cells under column headers, right-aligned. A row
/// whose every cell is `-` says nothing and is left out. Where the table would
/// be wider than [`WIDTH`], each label goes on a line of its own, above its cells.
pub(crate) fn print_columns(headers: &[&str], rows: &[(&str, Vec<String>)]) {
    let rows: Vec<&(&str, Vec<String>)> = rows
        .iter()
        .filter(|(_, cells)| cells.iter().any(|c| c != "-"))
        .collect();
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|(_, cells)| cells[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let cells_width: usize = widths.iter().map(|w| w + 2).sum();
    let label_width = if 2 + label_width + cells_width <= WIDTH {
        label_width
    } else {
        0
    };
    print!("  {:label_width$}", "");
    for (h, w) in headers.iter().zip(&widths) {
        print!("  {h:>w$}");
    }
    println!();
    for (label, cells) in rows {
        if label_width == 0 {
            println!("  {label}:");
        }
        print!(
            "  {label:label_width$}",
            label = if label_width == 0 { "" } else { label }
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_give_the_unit_once_and_collapse_where_runs_agree() {
        let ns = |v: f64| format_ns(v as u64);
        assert_eq!(
            spread_text(281.4e6, 270.1e6, 290.0e6, 3, &ns),
            "281.4 ms [270.1–290.0 ms]"
        );
        assert_eq!(
            spread_text(999.0e3, 950.1e3, 1.1e6, 3, &ns),
            "999.0 µs [950.1 µs–1.1 ms]"
        );
        let bytes = |v: f64| size::format(v as u64);
        assert_eq!(
            spread_text(
                1.5 * (1u64 << 30) as f64,
                (1u64 << 30) as f64,
                2.0 * (1u64 << 30) as f64,
                3,
                &bytes
            ),
            "1.5G [1–2G]"
        );
        // Runs that differ by less than shown, or one run: the median alone.
        assert_eq!(
            spread_text(118.22e6, 118.21e6, 118.24e6, 3, &ns),
            "118.2 ms"
        );
        assert_eq!(spread_text(5.0, 1.0, 9.0, 1, &ns), "5 ns");
    }

    #[test]
    fn long_lines_wrap_within_the_width_and_short_ones_keep_their_spaces() {
        let text = "word ".repeat(60);
        let lines = wrap("    ", &text);
        assert!(lines.len() > 1);
        assert!(
            lines.iter().all(|l| l.chars().count() <= WIDTH),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("      word"));
        assert_eq!(wrap("  ", "a   b"), ["  a   b"]);
    }
}
