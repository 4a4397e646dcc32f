//! `meminit vm`'s table for people: each guest's figures side by side, within
//! the report's width, with a legend for what each row compares. It formats the
//! report; it runs nothing (that is `vm`'s) and adds no figure of its own.

use meminit_host::size;

use super::figures::{Column, VmReport};
use crate::table::{format_ns, print_columns, print_legend, print_wrapped, spread_text};

/// `median [min–max]`, or the value alone for one run, formatted by `f`.
fn spread_cell(c: &Column, metric: &str, f: &dyn Fn(u64) -> String) -> Option<String> {
    let s = c.spread.get(metric)?;
    Some(spread_text(s.median, s.min, s.max, s.n, &|x| {
        f(x.round() as u64)
    }))
}

/// Whether the column is the Linux peer's.
fn is_linux(c: &Column) -> bool {
    c.name == "linux"
}

/// A meminit guest's time `metric` with its spread; `for_linux` in Linux's column.
fn guest_time(c: &Column, metric: &str, for_linux: &str) -> String {
    if is_linux(c) {
        for_linux.into()
    } else {
        spread_cell(c, metric, &format_ns).unwrap_or("-".into())
    }
}

pub(super) fn print_table(r: &VmReport) {
    print_header(r);
    let headers: Vec<&str> = r.runs.iter().map(|c| c.name.as_str()).collect();
    let mut rows = if r
        .runs
        .iter()
        .any(|c| c.spread.contains_key("qemu_rss_boot_bytes"))
    {
        // A spike or files: the guest's RAM and QEMU's resident memory at its
        // points come first.
        let mut rows = release_rows();
        rows.extend(spike_rows());
        rows
    } else {
        Vec::new()
    };
    rows.extend(memory_rows());
    rows.extend(time_rows());
    rows.extend(guest_rows());
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, r.runs.iter().map(cell).collect()))
        .collect();
    print_columns(&headers, &table);
    print_legend(&[
        "the memory comparison is \"guest RAM resident at rest\": the guest's RAM on the host; QEMU's \
         own memory (under emulation mostly its translation cache) is QEMU's, not the guest's.",
        "memmap init before serving: meminit's start (its bootstrap) against Linux's memmap init of the \
         part it does not defer; in background: meminit's deferred workers against Linux's \
         deferred-init threads (the slowest node); on use: meminit's growth.",
        "all initialised: from the allocator's start, also counting the boot allocations and, with \
         several vCPUs, their start-up.",
        "guest RAM: the guest's RAM resident on the host (smaps) after boot, at the peak and after the \
         release; returned: how far it fell from the peak to after the release, as a share of what the \
         guest says it freed; 90% back: from the free (the guest's `freed` marker) until 90% of that fall \
         had happened, sampled every 100-250 ms (spike: the meminit guest reports before its marker).",
        "chunks: who initialised them: boot, the deferred workers (wrk), growth, or a descriptor look-up; \
         p50/p99: median and 99th percentile.",
    ]);
    for n in &r.linux_notes {
        print_wrapped("  ", n);
    }
    for c in &r.runs {
        for s in std::iter::once(&c.first).chain(&c.samples) {
            if let Some(f) = &s.failure {
                print_wrapped("  ", &format!("{} failed: {f}", c.name));
            }
        }
    }
}

/// The guest's shape, the workload, the accelerator and why, and how figures
/// are given.
fn print_header(r: &VmReport) {
    let s = |n: u32| if n == 1 { "" } else { "s" };
    println!(
        "guest {}, {} vCPU{}, {} node{}; workload {}; balloon {}",
        size::format(r.memory_bytes),
        r.cpus,
        s(r.cpus),
        r.nodes,
        s(r.nodes),
        r.workload,
        if r.balloon { "on" } else { "off" },
    );
    print_wrapped(
        "  ",
        &format!("under {}: {}", r.accel.name(), r.accel_reason),
    );
    println!(
        "  median [min–max] of {} run{} each",
        r.runs_each,
        s(r.runs_each)
    );
}

/// One row of the table: its label, and how to print a column's cell.
type Row = (&'static str, Box<dyn Fn(&Column) -> String>);

fn bytes(b: u64) -> String {
    size::format(b)
}

/// A figure's spread, or `-`.
fn cell(c: &Column, metric: &str, f: &dyn Fn(u64) -> String) -> String {
    spread_cell(c, metric, f).unwrap_or("-".into())
}

/// The guest's RAM resident on the host at the three points, what came back of
/// what the guest freed, and how soon.
fn release_rows() -> Vec<Row> {
    vec![
        (
            "guest RAM after boot",
            Box::new(|c| cell(c, "guest_ram_boot_bytes", &bytes)),
        ),
        (
            "guest RAM at the peak",
            Box::new(|c| cell(c, "guest_ram_peak_bytes", &bytes)),
        ),
        (
            "guest RAM after the release",
            Box::new(|c| cell(c, "guest_ram_released_bytes", &bytes)),
        ),
        (
            "freed by the guest",
            Box::new(|c| cell(c, "freed_bytes", &bytes)),
        ),
        (
            "returned, % of freed",
            Box::new(|c| match c.spread.get("returned_pct") {
                Some(s) => spread_text(s.median, s.min, s.max, s.n, &|p| format!("{p:.2}%")),
                None => "-".into(),
            }),
        ),
        (
            "90% back at host after free",
            Box::new(|c| cell(c, "release_90_ns", &format_ns)),
        ),
    ]
}

/// QEMU's resident memory at a spike's three points, and what was reported.
fn spike_rows() -> Vec<Row> {
    vec![
        (
            "QEMU resident after boot",
            Box::new(|c| cell(c, "qemu_rss_boot_bytes", &bytes)),
        ),
        (
            "QEMU resident at spike's peak",
            Box::new(|c| cell(c, "qemu_rss_peak_bytes", &bytes)),
        ),
        (
            "QEMU resident after release",
            Box::new(|c| cell(c, "qemu_rss_after_release_bytes", &bytes)),
        ),
        (
            "reported free to host (guest)",
            Box::new(|c| {
                if is_linux(c) {
                    "(not counted)".into()
                } else {
                    cell(c, "reported_bytes", &bytes)
                }
            }),
        ),
    ]
}

/// QEMU's memory at rest.
fn memory_rows() -> Vec<Row> {
    vec![
        (
            "guest RAM resident at rest",
            Box::new(|c| cell(c, "guest_ram_rss_bytes", &bytes)),
        ),
        (
            "QEMU's own memory at rest",
            Box::new(|c| cell(c, "qemu_own_rss_bytes", &bytes)),
        ),
        (
            "QEMU resident at rest",
            Box::new(|c| cell(c, "qemu_rss_bytes", &bytes)),
        ),
        (
            "QEMU peak, with start-up",
            Box::new(|c| cell(c, "qemu_peak_rss_bytes", &bytes)),
        ),
    ]
}

/// The times: the host's, and the guests' memmap initialisation.
fn time_rows() -> Vec<Row> {
    let mhz = |hz: u64| format!("{:.0} MHz", hz as f64 / 1e6);
    vec![
        (
            "wall time (host)",
            Box::new(|c| cell(c, "wall_ns", &format_ns)),
        ),
        (
            "TSC frequency used",
            Box::new(move |c| {
                if is_linux(c) {
                    cell(c, "tsc_khz", &|k| mhz(k * 1000))
                } else {
                    cell(c, "tsc_hz", &mhz)
                }
            }),
        ),
        (
            "memmap init before serving",
            Box::new(|c| {
                if is_linux(c) {
                    cell(c, "early_memmap_ns", &format_ns)
                } else {
                    cell(c, "ready_ns", &format_ns)
                }
            }),
        ),
        (
            "memmap init in background",
            Box::new(|c| {
                if is_linux(c) {
                    return cell(c, "deferred_init_ns", &format_ns);
                }
                match c.first.guest["strategy"].as_str() {
                    Some("deferred") => cell(c, "workers_ns", &format_ns),
                    Some("eager") => "none (all before)".into(),
                    Some("ondemand") => "none (on use)".into(),
                    _ => "-".into(),
                }
            }),
        ),
        (
            "memmap init on use",
            Box::new(|c| guest_time(c, "grow_ns", "-")),
        ),
        (
            "boot allocs, written as Linux",
            Box::new(|c| guest_time(c, "boot_allocs_ns", "(not timed)")),
        ),
        (
            "all initialised",
            Box::new(|c| {
                if is_linux(c) {
                    "-".into()
                } else if c.first.guest["full_init_ns"].is_null() {
                    "never".into()
                } else {
                    cell(c, "full_init_ns", &format_ns)
                }
            }),
        ),
    ]
}

/// What the meminit guest reported of itself, and how each run ended.
fn guest_rows() -> Vec<Row> {
    vec![
        (
            "memmap populated (guest)",
            Box::new(|c| match c.first.guest["memmap_populated_bytes"].as_u64() {
                Some(b) => size::format(b),
                None if is_linux(c) => "all (Linux)".into(),
                None => "-".into(),
            }),
        ),
        (
            "chunks: boot/wrk/grow/look-up",
            Box::new(|c| {
                let n = |by: &str| c.first.guest[format!("chunks_by_{by}")].as_u64();
                match (n("boot"), n("workers"), n("growth"), n("lookup")) {
                    (Some(b), Some(w), Some(g), Some(l)) => format!("{b}/{w}/{g}/{l}"),
                    _ => "-".into(),
                }
            }),
        ),
        (
            "slow path p50 / p99 (guest)",
            Box::new(|c| {
                let slow = &c.first.guest["alloc_slow"];
                match (slow["median_ns"].as_u64(), slow["p99_ns"].as_u64()) {
                    (Some(a), Some(b)) if slow["count"].as_u64() > Some(0) => {
                        format!("{} / {}", format_ns(a), format_ns(b))
                    }
                    _ => "-".into(),
                }
            }),
        ),
        (
            "memory accepted (guest)",
            Box::new(|c| match c.first.guest["accepted_bytes"].as_u64() {
                Some(b) if c.first.guest["accept"] == "zero" => size::format(b),
                _ => "-".into(),
            }),
        ),
        (
            "allocation failures (guest)",
            Box::new(|c| {
                c.first.guest["alloc_failures"]
                    .as_u64()
                    .map_or("-".into(), |f| f.to_string())
            }),
        ),
        (
            "how it ended",
            Box::new(|c| {
                let how = if c.first.host.stopped_by_host {
                    "stopped at rest".to_string()
                } else {
                    c.first
                        .host
                        .exit_status
                        .map_or("killed".into(), |s| format!("exit {s}"))
                };
                format!("{how}{}", if c.all_ok { " ok" } else { " FAILED" })
            }),
        ),
    ]
}
