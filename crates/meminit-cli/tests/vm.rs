//! The guest kernel under QEMU, as `meminit vm` runs it: every strategy, a large
//! trace buffer, a malformed command line, two vCPUs, two nodes, and Linux beside
//! it. Needs `qemu-system-x86_64` and Debian's kernel: `scripts/setup --vm`
//! installs both (scripts/test runs it). Software emulation is used where KVM
//! cannot run a guest.

use assert_cmd::Command;
use serde_json::Value;

fn vm(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::cargo_bin("meminit")
        .unwrap()
        .args(["vm", "--json", "--timeout", "300"])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "meminit vm {args:?} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

#[test]
fn each_strategy_boots_and_holds() {
    let (code, r) = vm(&["--memory", "1G", "--workload", "container:64M"]);
    assert_eq!(code, Some(0), "{r:#}");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["exit_status"], 33, "{run:#}");
        let g = &run["guest"];
        assert_eq!(g["strategy"], run["name"]);
        assert_eq!(g["alloc_failures"], 0);
        assert_eq!(g["counts_hold"], true);
        assert!(g["tsc_hz"].as_u64().unwrap() > 0);
        assert!(!g["tsc_source"].as_str().unwrap().is_empty());
        assert!(run["qemu_peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    let populated = |i: usize| runs[i]["guest"]["memmap_populated_bytes"].as_u64().unwrap();
    assert_eq!(populated(0), 16 << 20);
    assert_eq!(populated(1), 16 << 20);
    assert!(populated(2) <= 4 << 20, "{}", populated(2));
    assert!(runs[2]["guest"]["full_init_ns"].is_null());
    assert!(["kvm", "tcg"].contains(&r["accel"].as_str().unwrap()));
    assert!(!r["accel_reason"].as_str().unwrap().is_empty());
}

#[test]
fn a_trace_buffer_of_most_of_memory_is_served() {
    let (code, r) = vm(&["--memory", "1G", "--trace-buf-size", "700M"]);
    assert_eq!(code, Some(0), "{r:#}");
    for run in r["runs"].as_array().unwrap() {
        let trace = &run["guest"]["boot"][3];
        assert_eq!(trace["name"], "trace buffer");
        assert_eq!(trace["bytes"], 700u64 << 20);
        assert_eq!(trace["failures"], 0, "{}", run["name"]);
    }
}

/// A one-strategy guest given `append` on its command line: QEMU's status as
/// `meminit vm` reports it, and what it printed on stderr.
fn vm_with_append(strategy: &str, append: &str) -> (Option<i32>, String) {
    let out = Command::cargo_bin("meminit")
        .unwrap()
        .args([
            "vm",
            "--memory",
            "256M",
            "--strategy",
            strategy,
            "--append",
            append,
        ])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_command_line_fails_with_its_own_status() {
    let (code, err) = vm_with_append("ondemand", "bogus=1");
    assert_eq!(code, Some(1));
    assert!(err.contains("exit Some(37)"), "{err}");
    assert!(
        err.contains("bad kernel command line option 'bogus=1'"),
        "{err}"
    );
    let (_, err) = vm_with_append("eager", "meminit=lazy");
    assert!(err.contains("'meminit=lazy'"), "{err}");
}

#[test]
fn two_vcpus_share_the_deferred_work_across_two_nodes() {
    let (code, r) = vm(&[
        "--memory",
        "4G",
        "--cpus",
        "2",
        "--nodes",
        "2",
        "--strategy",
        "deferred",
    ]);
    assert_eq!(code, Some(0), "{r:#}");
    let g = &r["runs"][0]["guest"];
    assert_eq!(g["cpus"], 2);
    assert_eq!(g["nodes"], 2);
    assert_eq!(g["worker_threads"], 2);
    assert!(g["full_init_ns"].as_u64().is_some());
    let nodes: Vec<u64> = g["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["node"].as_u64().unwrap())
        .collect();
    assert!(nodes.contains(&1), "{nodes:?}");
    for z in g["zones"].as_array().unwrap() {
        assert_eq!(z["uninitialised"], 0);
    }
}

#[test]
fn linux_boots_beside_it() {
    let (code, r) = vm(&[
        "--memory",
        "2G",
        "--strategy",
        "ondemand",
        "--peer",
        "linux",
    ]);
    assert_eq!(code, Some(0), "{r:#}");
    let linux = &r["runs"][1];
    assert_eq!(linux["name"], "linux");
    assert_eq!(linux["guest"]["reached_rootfs"], true);
    assert_eq!(linux["guest"]["memory_total_kib"], 2096632);
    assert!(linux["guest"]["early_memmap_ms"].as_f64().is_some());
    assert!(!linux["guest"]["deferred_init_ms"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// A guest whose last section holds less than 2 MiB of memory: that section's
/// memmap lives in a home set aside elsewhere, and every strategy still starts.
#[test]
fn a_section_too_small_for_its_own_memmap_gets_a_home() {
    let (code, r) = vm(&["--memory", "1025M"]);
    assert_eq!(code, Some(0), "{r:#}");
    let eager = &r["runs"][0]["guest"];
    assert!(eager["chunks_present"].as_u64().unwrap() > 256, "{eager:#}");
    assert_eq!(eager["memmap_populated_bytes"], 18u64 << 20);
    assert_eq!(eager["counts_hold"], true);
}

#[test]
fn every_vcpu_allocates_and_frees_through_its_own_cache_at_once() {
    for strategy in ["ondemand", "eager"] {
        let (code, r) = vm(&[
            "--memory",
            "2G",
            "--cpus",
            "4",
            "--nodes",
            "2",
            "--strategy",
            strategy,
            "--workload",
            "smp:20000",
        ]);
        assert_eq!(code, Some(0), "{r:#}");
        let run = &r["runs"][0];
        assert_eq!(run["exit_status"], 33, "{run:#}");
        let g = &run["guest"];
        assert_eq!(g["cpus"], 4);
        assert_eq!(g["alloc_failures"], 0, "{g:#}");
        assert_eq!(g["counts_hold"], true, "{g:#}");
    }
}
