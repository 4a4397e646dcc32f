//! The `meminit` command as a user runs it.

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

fn meminit() -> Command {
    Command::cargo_bin("meminit").unwrap()
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

const LOGS: [&str; 3] = [
    "fixtures/linux-boot/debian-6.1-qemu-pc-2G-1c-1n-r1.log",
    "fixtures/linux-boot/debian-6.1-qemu-pc-32G-2c-2n-r1.log",
    "fixtures/linux-boot/debian-6.1-qemu-pc-512G-2c-1n-r1.log",
];

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The layout of each Linux boot log agrees with what that kernel printed, and
/// its lines are Linux's own.
#[test]
fn layout_agrees_with_linux_boot_logs() {
    for log in LOGS {
        let path = repo(log);
        let out = stdout(meminit().arg("layout").arg(&path));
        assert!(
            out.contains("agrees with the kernel's own figures"),
            "{log}: {out}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        // Every node range and zone range line meminit prints is in the log.
        for line in out
            .lines()
            .filter(|l| l.contains("[mem ") || l.starts_with("Initmem"))
        {
            assert!(
                text.contains(line),
                "{log}: '{line}' is not what Linux printed"
            );
        }
    }
}

/// Without the node-range lines, the e820 table (and SRAT) give the same layout.
#[test]
fn e820_and_srat_alone_give_the_same_layout() {
    let dir = tempfile::tempdir().unwrap();
    for log in LOGS {
        let text = std::fs::read_to_string(repo(log)).unwrap();
        let stripped: String = text
            .lines()
            .filter(|l| !l.contains("Early memory node ranges") && !l.contains("]   node "))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = dir.path().join("e820.log");
        std::fs::write(&path, stripped).unwrap();
        let out = stdout(meminit().arg("layout").arg(&path));
        assert!(
            out.contains("agrees with the kernel's own figures"),
            "{log}: {out}"
        );
    }
}

#[test]
fn bad_logs_and_maps_say_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.log");
    std::fs::write(
        &log,
        "boot\n[    0.000000] BIOS-e820: [mem 0x0-0xfff usable\n",
    )
    .unwrap();
    let out = meminit().arg("layout").arg(&log).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("BIOS-e820: [mem 0x0-0xfff usable"),
        "{err}"
    );

    std::fs::write(&log, "no memory map here\n").unwrap();
    let err = meminit().arg("layout").arg(&log).output().unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no memory map"));

    let map = dir.path().join("overlap.json");
    std::fs::write(
        &map,
        r#"{"ranges": [{"start": 0, "end": "64M", "kind": "usable"}, {"start": "32M", "end": "96M", "kind": "usable"}]}"#,
    )
    .unwrap();
    let out = meminit()
        .args(["report", "--map"])
        .arg(&map)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("range #1"));

    let out = meminit()
        .args(["report", "--memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'lots' is not a size"));
    let out = meminit()
        .args(["report", "--memory", "1G", "--nodes", "40"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn report_json(args: &[&str]) -> Value {
    let out = stdout(
        meminit()
            .arg("report")
            .arg("--json")
            .args(["--runs", "1"])
            .args(args),
    );
    serde_json::from_str(&out).unwrap()
}

/// The JSON fields programs rely on.
#[test]
fn json_report_has_the_documented_shape() {
    let r = report_json(&["--machine", "container", "--workload", "container:64M"]);
    assert_eq!(r["machine"], "container");
    assert_eq!(r["present_bytes"], 524158u64 * 4096);
    let strategies = r["strategies"].as_array().unwrap();
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eager", "deferred", "ondemand"]);
    for s in strategies {
        for field in [
            "ready_ns",
            "full_init_ns",
            "init_ns",
            "grows",
            "grow_ns",
            "memmap_populated_bytes",
            "memmap_resident_boot_bytes",
            "memmap_resident_end_bytes",
            "memmap_full_bytes",
            "alloc_fast",
            "alloc_slow",
            "alloc_failures",
            "limit_fill_ns",
            "limit_ratio",
            "limit_method",
            "limit_parallel_fill_ns",
            "limit_parallel_threads",
            "init_populate_ns",
            "limit_writes_ns",
            "limit_writes_ratio",
            "give_back",
            "give_back_reserve_bytes",
            "spike",
            "boot",
            "zones",
        ] {
            assert!(s.get(field).is_some(), "{} lacks {field}", s["strategy"]);
        }
        assert_eq!(s["alloc_failures"], 0);
        assert_eq!(s["memmap_full_bytes"], 32u64 << 20);
    }
    let eager = &strategies[0];
    let ondemand = &strategies[2];
    assert_eq!(eager["memmap_resident_end_bytes"], 32u64 << 20);
    assert!(ondemand["memmap_resident_end_bytes"].as_u64().unwrap() <= 4 << 20);
    assert!(ondemand["full_init_ns"].is_null());
    assert_eq!(ondemand["zones"][1]["zone"], "DMA32");
}

/// Every built-in machine under every strategy: runs, or says why it was skipped.
#[test]
fn built_in_machines_under_each_strategy() {
    for machine in ["container", "server", "large"] {
        for strategy in ["eager", "deferred", "ondemand"] {
            let r = report_json(&["--machine", machine, "--strategy", strategy]);
            let s = &r["strategies"][0];
            assert_eq!(s["strategy"], strategy);
            if let Some(why) = s["skipped"].as_str() {
                assert!(
                    machine == "large" && strategy != "ondemand",
                    "{machine} {strategy}: {why}"
                );
                assert!(why.contains("budget"));
                continue;
            }
            assert_eq!(s["alloc_failures"], 0, "{machine} {strategy}");
            let populated = s["memmap_populated_bytes"].as_u64().unwrap();
            let full = s["memmap_full_bytes"].as_u64().unwrap();
            if strategy == "ondemand" {
                assert!(populated < full / 4, "{machine}: {populated} of {full}");
            } else {
                assert_eq!(populated, full, "{machine} {strategy}");
            }
        }
    }
}

/// A trace buffer of most of memory is served at boot under every strategy; one
/// larger than memory fails only because memory is truly exhausted.
#[test]
fn trace_buffers_as_large_as_memory() {
    let r = report_json(&["--machine", "container", "--trace-buf-size", "1900M"]);
    for s in r["strategies"].as_array().unwrap() {
        assert_eq!(s["alloc_failures"], 0, "{}", s["strategy"]);
    }
    // A trace buffer of all the memory present: it cannot all be served (the
    // hash tables took some), and the rest fails only once nothing is left to
    // initialise. (Larger than the memory present is refused before boot.)
    let present = r["present_bytes"].as_u64().unwrap().to_string();
    let out = meminit()
        .args([
            "report",
            "--runs",
            "1",
            "--json",
            "--machine",
            "container",
            "--trace-buf-size",
            &present,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in r["strategies"].as_array().unwrap() {
        assert!(s["alloc_failures"].as_u64().unwrap() > 0);
        for z in s["zones"].as_array().unwrap() {
            assert_eq!(
                z["uninitialised"], 0,
                "failed while memory was uninitialised"
            );
        }
    }
}

#[test]
fn the_example_map_and_a_sized_machine_run() {
    let out = stdout(
        meminit()
            .args([
                "report",
                "--runs",
                "1",
                "--workload",
                "random:2000",
                "--map",
            ])
            .arg(repo("examples/maps/two-nodes-with-holes.json")),
    );
    assert!(out.contains("time until ready"), "{out}");
    let r = report_json(&[
        "--memory",
        "6G",
        "--nodes",
        "2",
        "--cpus",
        "4",
        "--crashkernel",
        "256M",
    ]);
    assert_eq!(r["nodes"], 2);
    assert_eq!(r["cpus"], 4);
    let boot = r["strategies"][0]["boot"].as_array().unwrap();
    assert!(boot
        .iter()
        .any(|b| b["name"] == "crash kernel" && b["failures"] == 0));
}

#[test]
fn plots_are_written_as_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = meminit()
        .args([
            "report",
            "--runs",
            "1",
            "--machine",
            "container",
            "--strategy",
            "ondemand",
            "--plot",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not on a terminal, progress is plain lines, one per point.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plot ready: point 1 of 11: 1G"), "{err}");
    assert!(err.contains("plot resident: point 1 of "), "{err}");
    for chart in ["ready", "resident"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("{chart}.svg"))).unwrap();
        assert!(svg.contains("<svg") && (svg.contains("on-demand") || svg.contains("ondemand")));
        // Each chart says what it swept: the machine, its CPUs, the workers.
        assert!(
            svg.contains("1 CPU") && svg.contains("1 deferred worker"),
            "{chart}"
        );
        let png = std::fs::read(dir.path().join(format!("{chart}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    // One worker on one CPU: the ready chart says why deferred ends after eager.
    let svg = std::fs::read_to_string(dir.path().join("ready.svg")).unwrap();
    assert!(svg.contains("One worker does eager"), "{svg}");
}

/// Chunks: the size and the memmap's granularity are the user's; a bad size is a
/// bad command line; acceptance is reported.
#[test]
fn chunk_size_granularity_and_acceptance() {
    for g in ["section", "chunk", "premapped"] {
        let out = stdout(meminit().args([
            "report",
            "--machine",
            "container",
            "--strategy",
            "ondemand",
            "--workload",
            "container:16M",
            "--memmap-granularity",
            g,
            "--chunk-size",
            "8M",
            "--accept-memory",
            "--json",
        ]));
        let r: Value = serde_json::from_str(&out).unwrap();
        let s = &r["strategies"][0];
        assert_eq!(s["chunk_bytes"], 8u64 << 20, "{g}");
        assert_eq!(s["alloc_failures"], 0);
        let grown = s["chunks_by_growth"].as_u64().unwrap();
        assert!((2..=4).contains(&grown), "{g}: {grown} chunks grown");
        // Every chunk grown was accepted, its usable pages only.
        let accepted = s["accepted_end_bytes"].as_u64().unwrap();
        assert!(accepted > (grown - 1) * (8 << 20) && accepted <= grown * (8 << 20));
    }
    for bad in ["3M", "2M", "256M", "0"] {
        let out = meminit()
            .args(["report", "--machine", "container", "--chunk-size", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("chunk size"), "{err}");
    }
}

/// The spike's figures for one strategy, as numbers.
fn spike_figure(s: &Value, field: &str) -> u64 {
    s["spike"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: spike.{field} is not a number: {s}", s["strategy"]))
}

/// `spike`: memory follows use down. On-demand gives its memmap back to within
/// 4 MiB of what it had after boot; eager keeps its memmap, unchanged; every
/// strategy reports the freed memory, which the host discards, so guest memory
/// resident falls back to near its figure after boot; memory allocated again
/// reads zeroes where it was reported.
#[test]
fn spike_gives_memory_and_memmap_back() {
    let r = report_json(&["--machine", "container", "--workload", "spike:512M"]);
    assert_eq!(r["workload"], "spike:512M");
    let strategies = r["strategies"].as_array().unwrap();
    assert_eq!(strategies.len(), 3);
    for s in strategies {
        let name = s["strategy"].as_str().unwrap();
        let figure = |field| spike_figure(s, field);
        assert_eq!(s["alloc_failures"], 0, "{name}");
        assert_eq!(figure("bytes"), 512 << 20);
        assert!(figure("passes") >= 2, "{name}: give-back needs two passes");
        // Every page written, then discarded once reported.
        assert!(
            figure("guest_resident_peak_bytes") >= 512 << 20,
            "{name}: {s}"
        );
        assert!(
            figure("guest_resident_release_bytes")
                <= figure("guest_resident_boot_bytes") + (8 << 20),
            "{name}: {s}"
        );
        assert!(figure("reported_bytes") >= 512 << 20, "{name}: {s}");
        assert!(figure("reuse_pages") > 0 && figure("reuse_reported_pages") > 0);
        assert_eq!(figure("reuse_not_zeroed_pages"), 0, "{name}");
        // The counts held (the workload checks them and fails otherwise).
        for z in s["zones"].as_array().unwrap() {
            let (free, uninit) = (
                z["free"].as_u64().unwrap(),
                z["uninitialised"].as_u64().unwrap(),
            );
            assert!(
                free + uninit <= z["managed"].as_u64().unwrap(),
                "{name}: {z}"
            );
        }
    }
    let (eager, ondemand) = (&strategies[0], &strategies[2]);
    assert_eq!(eager["give_back"], false);
    for field in [
        "memmap_resident_peak_bytes",
        "memmap_resident_release_bytes",
    ] {
        assert_eq!(
            spike_figure(eager, field),
            spike_figure(eager, "memmap_resident_boot_bytes"),
            "eager's memmap is unchanged: {field}"
        );
    }
    assert_eq!(spike_figure(eager, "chunks_given_back"), 0);
    assert_eq!(ondemand["give_back"], true);
    let boot = spike_figure(ondemand, "memmap_resident_boot_bytes");
    assert!(spike_figure(ondemand, "memmap_resident_peak_bytes") >= boot + (8 << 20));
    assert!(
        spike_figure(ondemand, "memmap_resident_release_bytes") <= boot + (4 << 20),
        "{ondemand}"
    );
    assert!(spike_figure(ondemand, "chunks_given_back") > 0);
    assert!(spike_figure(ondemand, "memmap_released_bytes") > 0);
}

/// `--give-back on` gives back under eager as well (and keeps the reserve
/// asked for); `off` keeps on-demand's memmap.
#[test]
fn give_back_can_be_turned_on_and_off_for_every_strategy() {
    let run = |strategy, give_back, reserve: &[&str]| {
        let mut args = vec![
            "--memory",
            "2G",
            "--nodes",
            "2",
            "--cpus",
            "2",
            "--workload",
            "spike:256M",
            "--strategy",
            strategy,
            "--give-back",
            give_back,
        ];
        args.extend_from_slice(reserve);
        report_json(&args)["strategies"][0].clone()
    };
    let eager = run("eager", "on", &["--give-back-reserve", "8M"]);
    assert_eq!(eager["give_back"], true);
    assert_eq!(eager["give_back_reserve_bytes"], 8u64 << 20);
    assert_eq!(eager["alloc_failures"], 0);
    assert!(spike_figure(&eager, "chunks_given_back") > 0, "{eager}");
    assert!(
        spike_figure(&eager, "memmap_resident_release_bytes")
            < spike_figure(&eager, "memmap_resident_boot_bytes"),
        "{eager}"
    );
    let ondemand = run("ondemand", "off", &[]);
    assert_eq!(ondemand["give_back"], false);
    assert_eq!(spike_figure(&ondemand, "chunks_given_back"), 0);
    assert_eq!(
        spike_figure(&ondemand, "memmap_resident_release_bytes"),
        spike_figure(&ondemand, "memmap_resident_peak_bytes")
    );
    assert!(spike_figure(&ondemand, "reported_bytes") >= 256 << 20);
}

/// Bad give-back options are errors that say which option and why.
#[test]
fn bad_give_back_options_are_refused() {
    for (args, says) in [
        (
            &["--give-back", "maybe"][..],
            "possible values: on, off, default",
        ),
        (&["--give-back-reserve", "lots"][..], "'lots' is not a size"),
        (
            &["--give-back", "off", "--give-back-reserve", "8M"][..],
            "--give-back-reserve: give-back is off",
        ),
        (
            &["--give-back-reserve", "1000"][..],
            "not a whole number of 4K pages",
        ),
        (&["--give-back-reserve", "1T"][..], "more than the"),
    ] {
        let out = meminit()
            .args([
                "report",
                "--machine",
                "container",
                "--workload",
                "spike:64M",
            ])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Sizes that parse but could never be served are refused at once, with the
/// memory present, rather than keep the simulator busy for hours.
#[test]
fn absurd_sizes_are_refused_at_once() {
    for args in [
        ["--trace-buf-size", "100T"],
        ["--workload", "container:100T"],
        ["--workload", "random:18446744073709551615"],
        ["--crashkernel", "3G"],
    ] {
        let out = meminit()
            .args(["report", "--machine", "container"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("machine container"), "{args:?}: {err}");
    }
}

/// `--threads` is bounded by the machine's CPUs; `--memory-budget 0` would
/// measure nothing and is an error.
#[test]
fn threads_and_budget_are_checked() {
    let out = meminit()
        .args(["report", "--machine", "server", "--threads", "100000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("between 1 and 16"), "{err}");
    let out = meminit()
        .args(["report", "--machine", "container", "--memory-budget", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory-budget 0"));
}

/// `report` with no machine runs what `meminit` alone runs: every built-in
/// machine.
#[test]
fn report_alone_runs_every_built_in_machine() {
    let out = meminit()
        .args(["report", "--json", "--runs", "1", "--strategy", "ondemand"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["container", "server", "large"]);
}

/// `--runs N` gives each time as min, median and max over N runs, in the table
/// and in JSON.
#[test]
fn repeated_runs_give_the_spread_of_times() {
    let out = stdout(meminit().args([
        "report",
        "--json",
        "--machine",
        "container",
        "--strategy",
        "deferred",
        "--runs",
        "3",
    ]));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["runs"], 3);
    for metric in [
        "ready_ns",
        "full_init_ns",
        "limit_fill_ns",
        "limit_parallel_fill_ns",
    ] {
        let s = &r["spread"]["deferred"][metric];
        assert_eq!(s["n"], 3, "{metric}: {r:#}");
        let (min, med, max) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(min <= med && med <= max, "{metric}: {s}");
    }
    let out = stdout(meminit().args([
        "report",
        "--machine",
        "container",
        "--strategy",
        "ondemand",
        "--runs",
        "2",
    ]));
    assert!(out.contains("median [min–max] of 2 runs"), "{out}");
    let out = meminit()
        .args(["report", "--machine", "container", "--runs", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Without `--threads`, a machine gets this host's cores as deferred workers, but
/// never more than it has CPUs: the 1-CPU container runs one.
#[test]
fn default_workers_never_exceed_the_machines_cpus() {
    let out = stdout(meminit().args([
        "report",
        "--machine",
        "container",
        "--strategy",
        "deferred",
        "--runs",
        "1",
    ]));
    let workers = out
        .lines()
        .find(|l| l.contains("deferred worker"))
        .unwrap_or_default();
    assert!(workers.ends_with("; 1 deferred worker thread"), "{out}");
}

/// The report fits 120 columns, leaves out rows that would say nothing, labels
/// the ratios that can pass 1.0 as such and explains them in a legend.
#[test]
fn the_report_fits_120_columns_and_explains_its_rows() {
    let out = stdout(meminit().args([
        "report",
        "--machine",
        "server",
        "--runs",
        "2",
        "--workload",
        "spike:64M",
    ]));
    for line in out.lines() {
        assert!(
            line.chars().count() <= 120,
            "{} wide: {line}",
            line.chars().count()
        );
        let cells: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
        assert!(
            cells.len() < 2 || cells[1..].iter().any(|c| c.trim() != "-"),
            "a row that says nothing: {line}"
        );
    }
    // Acceptance is off: its row is left out.
    assert!(!out.contains("accepted:"), "{out}");
    // Over two runs, the deferred workers' ratio to the parallel fill is a
    // median with its spread, as the 1-core ratio is, not the first run's; so
    // are the host's populate and the writes without it.
    for (row, spread) in [
        ("init speed, x of 1-core limit", "x ["),
        ("deferred speed, x of parallel limit", "x ["),
        ("of which the host's populate", "s ["),
        ("less populate, x of fill's writes", "x ["),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}: {out}"));
        assert!(line.contains(spread), "{row} without its spread: {line}");
    }
    for says in [
        "init speed, x of 1-core limit",
        "speed, x of limit: ",
        "chunks by boot/workers/growth/look-up: ",
        "p50/p99/max: ",
        "fill limit: ",
        "the host's populate: ",
    ] {
        assert!(out.contains(says), "{says}: {out}");
    }
}

/// `report --workload mixed:..` prints returned against freed and ideal over
/// the runs, and as JSON the runs and their spread.
#[test]
fn mixed_workload_reports_what_went_back() {
    let out = Command::cargo_bin("meminit")
        .unwrap()
        .args([
            "report",
            "--memory",
            "256M",
            "--workload",
            "mixed:128M:1%",
            "--runs",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("returned % of ideal"), "{text}");
    assert!(text.contains("2 runs (seeds 1-2)"), "{text}");
    let out = Command::cargo_bin("meminit")
        .unwrap()
        .args([
            "report",
            "--memory",
            "256M",
            "--workload",
            "churn:256M:0.1%:huge",
            "--hints",
            "off",
            "--runs",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["options"]["hints"], false);
    assert!(
        v["spread"]["returned % of ideal"]["median"].is_number(),
        "{v}"
    );
}
