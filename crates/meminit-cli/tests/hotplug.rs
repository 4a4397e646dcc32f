//! `--hotplug` without a guest: the simulator's schedule on a built-in machine
//! (fast), and every option that cannot apply, for `report` and `vm`, refused
//! before anything runs.

use assert_cmd::Command;
use serde_json::Value;

fn meminit(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("meminit")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// `meminit report ARGS --json`, which must succeed, parsed.
fn report_json(args: &[&str]) -> Value {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = meminit(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Expects exit status 2 and one line on standard error containing `what`.
fn refused(args: &[&str], what: &str) {
    let out = meminit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(what), "{args:?}: {err}");
}

#[test]
fn a_container_grows_by_a_gib_and_gives_it_back_in_the_simulator() {
    let r = report_json(&["--machine", "container", "--hotplug", "1G", "--runs", "2"]);
    assert_eq!(r["hotplug_bytes"], 1u64 << 30);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["range_start"], 4u64 << 30, "{run:#}");
        assert_eq!(run["added_pages"], (1u64 << 30) / 4096);
        // Usable at once, and nothing written for it until it is used.
        assert_eq!(run["added"]["memmap_bytes"], run["before"]["memmap_bytes"]);
        assert_eq!(run["pages"], run["range_pages"], "{run:#}");
        assert!(run["peak"]["memmap_bytes"].as_u64().unwrap() >= (1 << 30) / 64);
        assert_eq!(run["removed_fully"], true);
        assert_eq!(run["kept_pages"], 0);
        assert_eq!(run["failures"], 0);
        assert!(run["removed"]["memmap_bytes"].as_u64() <= run["before"]["memmap_bytes"].as_u64());
    }
    let table = meminit(&[
        "report",
        "--machine",
        "container",
        "--hotplug",
        "256M",
        "--runs",
        "1",
    ]);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("remove fully succeeded"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
}

#[test]
fn a_small_machine_takes_a_plug_many_times_its_size_in_the_simulator() {
    let r = report_json(&[
        "--memory",
        "256M",
        "--hotplug",
        "64G",
        "--hotplug-use",
        "64M",
        "--runs",
        "1",
    ]);
    assert_eq!(r["hotplug_bytes"], 64u64 << 30);
    let run = &r["runs"][0];
    assert_eq!(run["added_pages"], (64u64 << 30) / 4096, "{run:#}");
    assert_eq!(run["workload_bytes"], 64u64 << 20);
    assert_eq!(run["pages"], (64u64 << 20) / 4096);
    assert_eq!(run["pages"], run["range_pages"], "{run:#}");
    // 64 GiB usable at once with nothing written for it; the memmap of what is
    // used (64 B per 4 KiB) at the peak, none of it after the remove.
    assert_eq!(run["added"]["memmap_bytes"], run["before"]["memmap_bytes"]);
    assert!(run["peak"]["memmap_bytes"].as_u64().unwrap() >= (64 << 20) / 64);
    assert!(run["peak"]["memmap_bytes"].as_u64().unwrap() < 64 << 20);
    assert_eq!(run["removed_fully"], true);
    assert_eq!(run["failures"], 0);
    assert!(run["removed"]["memmap_bytes"].as_u64() <= run["before"]["memmap_bytes"].as_u64());
}

#[test]
fn options_that_cannot_apply_to_hotplug_are_refused() {
    refused(&["report", "--hotplug", "1G"], "name one machine");
    refused(
        &[
            "report",
            "--machine",
            "container",
            "--hotplug",
            "1G",
            "--workload",
            "spike:1M",
        ],
        "--workload",
    );
    for extra in [
        ["--trace-buf-size", "1M"],
        ["--crashkernel", "64M"],
        ["--give-back", "off"],
        ["--chunk-size", "8M"],
        ["--memmap-granularity", "premapped"],
    ] {
        let mut args = vec!["report", "--machine", "container", "--hotplug", "1G"];
        args.extend(extra);
        refused(&args, "does not apply to --hotplug");
    }
    refused(
        &["report", "--machine", "container", "--hotplug", "100M"],
        "whole sections",
    );
    refused(&["vm", "--hotplug", "3M"], "whole 2 MiB blocks");
    refused(&["vm", "--hotplug", "128G"], "at most 64G");
    refused(
        &["vm", "--hotplug", "256M", "--workload", "spike:1M"],
        "--workload",
    );
    refused(
        &["vm", "--hotplug", "256M", "--nodes", "2", "--cpus", "2"],
        "one node",
    );
    refused(&["vm", "--hotplug-use", "1G"], "add --hotplug");
    refused(
        &["report", "--machine", "container", "--hotplug-use", "1G"],
        "add --hotplug",
    );
    refused(
        &[
            "report",
            "--machine",
            "container",
            "--hotplug",
            "1G",
            "--hotplug-use",
            "2G",
        ],
        "at most the plug",
    );
    refused(
        &["vm", "--hotplug", "256M", "--hotplug-use", "512M"],
        "at most the plug",
    );
    refused(
        &["vm", "--hotplug", "256M", "--hotplug-use", "100"],
        "whole 4 KiB pages",
    );
}
