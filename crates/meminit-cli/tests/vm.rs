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
    let (_, err) = vm_with_append("ondemand", "memmap=page");
    assert!(
        err.contains("'memmap=page': expected section or chunk"),
        "{err}"
    );
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

/// Chunks initialised, by whoever initialised them.
fn chunks_initialised(g: &Value) -> u64 {
    ["boot", "workers", "growth", "lookup"]
        .iter()
        .map(|by| g[format!("chunks_by_{by}")].as_u64().unwrap())
        .sum()
}

/// `memmap=chunk`: each chunk's 64 KiB of memmap is mapped with 4 KiB pages when
/// the chunk is initialised, so the guest populates a multiple of 64 KiB, one
/// piece per chunk, well below a section's 2 MiB; `accept=zero` zeroes each
/// initialised chunk's usable memory exactly once.
#[test]
fn a_chunk_granular_memmap_follows_the_chunks_and_each_is_accepted_once() {
    let run = |granularity: &str| {
        let (code, r) = vm(&[
            "--memory",
            "1G",
            "--strategy",
            "ondemand",
            "--workload",
            "container:64M",
            "--memmap",
            granularity,
            "--accept-memory",
        ]);
        assert_eq!(code, Some(0), "{r:#}");
        let run = &r["runs"][0];
        assert_eq!(run["exit_status"], 33, "{run:#}");
        let g = run["guest"].clone();
        assert_eq!(g["memmap"], granularity);
        assert_eq!(g["accept"], "zero");
        assert_eq!(g["alloc_failures"], 0, "{g:#}");
        assert_eq!(g["counts_hold"], true, "{g:#}");
        g
    };
    let chunk = run("chunk");
    let section = run("section");
    let n = chunks_initialised(&chunk);
    let chunk_bytes = chunk["chunk_bytes"].as_u64().unwrap();
    assert_eq!(chunk_bytes, 4 << 20);
    // 64 MiB of workload: at least 16 chunks, not many more.
    assert!((16..=20).contains(&n), "{chunk:#}");
    let populated = chunk["memmap_populated_bytes"].as_u64().unwrap();
    assert_eq!(populated % (64 << 10), 0, "{populated}");
    assert_eq!(populated, n * (64 << 10));
    let by_section = section["memmap_populated_bytes"].as_u64().unwrap();
    assert!(by_section >= 2 << 20, "{by_section}");
    assert!(
        populated * 3 / 2 < by_section,
        "{populated} vs {by_section}"
    );
    // Every initialised chunk is accepted once: its usable bytes, which are all
    // of it but for reserved memory (the first MiB, the kernel) in one chunk at
    // most, or the section's own memmap block.
    for g in [&chunk, &section] {
        let n = chunks_initialised(g);
        let accepted = g["accepted_bytes"].as_u64().unwrap();
        assert!(accepted <= n * chunk_bytes, "{g:#}");
        assert!(accepted > (n - 1) * chunk_bytes, "{g:#}");
        assert_eq!(accepted % 4096, 0);
    }
}

/// Eager with acceptance: every usable page of the guest is zeroed exactly once,
/// and the section's own memmap block (which holds the descriptors of chunks
/// already in use) never is: the bytes accepted are the pages the allocator
/// manages, exactly.
#[test]
fn eager_acceptance_zeroes_every_usable_page_once_and_no_memmap() {
    for granularity in ["section", "chunk"] {
        let (code, r) = vm(&[
            "--memory",
            "1G",
            "--strategy",
            "eager",
            "--memmap",
            granularity,
            "--accept-memory",
        ]);
        assert_eq!(code, Some(0), "{r:#}");
        let g = &r["runs"][0]["guest"];
        assert_eq!(g["counts_hold"], true, "{g:#}");
        let managed: u64 = g["zones"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z["managed"].as_u64().unwrap())
            .sum();
        assert_eq!(
            g["accepted_bytes"].as_u64().unwrap(),
            managed * 4096,
            "{g:#}"
        );
        assert_eq!(g["memmap_populated_bytes"], 16u64 << 20);
    }
}

#[test]
fn without_acceptance_nothing_is_accepted() {
    let (code, r) = vm(&["--memory", "256M", "--strategy", "ondemand"]);
    assert_eq!(code, Some(0), "{r:#}");
    let g = &r["runs"][0]["guest"];
    assert_eq!(g["memmap"], "section");
    assert_eq!(g["accept"], "off");
    assert_eq!(g["accepted_bytes"], 0);
}

/// Two vCPUs initialising chunks at once on two nodes, each mapping its chunk's
/// memmap with 4 KiB pages (page tables shared between neighbouring chunks).
#[test]
fn two_vcpus_map_the_memmap_chunk_by_chunk_at_once() {
    let (code, r) = vm(&[
        "--memory",
        "2G",
        "--cpus",
        "2",
        "--nodes",
        "2",
        "--strategy",
        "deferred",
        "--memmap",
        "chunk",
    ]);
    assert_eq!(code, Some(0), "{r:#}");
    let g = &r["runs"][0]["guest"];
    assert_eq!(g["counts_hold"], true, "{g:#}");
    assert_eq!(g["memmap"], "chunk");
    assert!(g["chunks_by_workers"].as_u64().unwrap() > 0, "{g:#}");
    assert_eq!(chunks_initialised(g), g["chunks_present"].as_u64().unwrap());
    assert_eq!(
        g["memmap_populated_bytes"].as_u64().unwrap(),
        chunks_initialised(g) * (64 << 10)
    );
}
