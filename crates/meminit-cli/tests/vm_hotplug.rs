//! `meminit vm --hotplug`: the guest grown through virtio-mem after boot, used,
//! freed and shrunk back, and Linux beside it under the same schedule. Needs
//! `qemu-system-x86_64` and, for Linux, the kernel and initramfs
//! `scripts/setup --vm` provides (scripts/test runs it first), as the other
//! guest tests do; small sizes keep it under a minute under software emulation.

use assert_cmd::Command;
use serde_json::Value;

fn hotplug(args: &[&str]) -> (Option<i32>, Value) {
    hotplug_of("512M", "256M", args)
}

fn hotplug_of(memory: &str, plug: &str, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::cargo_bin("meminit")
        .unwrap()
        .args([
            "vm",
            "--json",
            "--timeout",
            "120",
            "--runs",
            "1",
            "--memory",
            memory,
        ])
        .args(["--hotplug", plug])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), json)
}

fn steps(run: &Value) -> Vec<u64> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["qemu_rss_bytes"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_guest_grows_uses_and_gives_back_hot_plugged_memory() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let initramfs = root.join("target/linux/initramfs.cpio");
    let linux =
        std::fs::read(&initramfs).is_ok_and(|b| b.windows(19).any(|w| w == b"meminit_hotplug_use"));
    let args: &[&str] = if linux { &["--peer", "linux"] } else { &[] };
    if !linux {
        eprintln!("Linux skipped: no initramfs with the hot-plug schedule at {} (scripts/setup --vm builds it)", initramfs.display());
    }
    let (code, r) = hotplug(args);
    assert_eq!(code, Some(0), "{r:#}");
    assert!(["kvm", "tcg"].contains(&r["accel"].as_str().unwrap()));
    let m = &r["columns"][0]["runs"][0];
    assert_eq!(m["exit_status"], 33, "{m:#}");
    let g = &m["guest"];
    assert_eq!(g["ok"], true, "{g:#}");
    assert_eq!(g["plugged_bytes"], 256u64 << 20);
    assert_eq!(
        g["region_pages"], g["pages"],
        "the workload lands in the new memory"
    );
    // Nothing written for the new memory until it is used; its memmap at the peak;
    // none of it left once it is unplugged.
    assert_eq!(g["memmap_plugged_bytes"], g["memmap_ready_bytes"]);
    assert!(
        g["memmap_peak_bytes"].as_u64().unwrap()
            >= g["memmap_ready_bytes"].as_u64().unwrap() + (4 << 20)
    );
    assert!(g["memmap_unplugged_bytes"].as_u64() <= g["memmap_ready_bytes"].as_u64());
    assert_eq!(m["plugged_after_bytes"], 0);
    let rss = steps(m);
    assert_eq!(rss.len(), 5, "{m:#}");
    // The plug costs the host (almost) nothing; the peak holds the workload; the
    // free and the unplug give it back.
    assert!(rss[1] <= rss[0] + (4 << 20), "{rss:?}");
    assert!(rss[2] >= rss[0] + (200 << 20), "{rss:?}");
    assert!(rss[4] <= rss[0] + (16 << 20), "{rss:?}");
    if linux {
        let l = &r["columns"][1];
        assert_eq!(l["name"], "linux");
        assert_eq!(l["ok"], true, "{l:#}");
        let run = &l["runs"][0];
        assert!(run["guest"]["usable_ns"].as_u64().unwrap() > 0, "{run:#}");
        assert_eq!(steps(run).len(), 5);
    }
}

#[test]
fn a_small_guest_takes_a_plug_many_times_its_size() {
    // 8 GiB into 128 MiB: the whole memmap (192 MiB with the gap below 4 GiB)
    // would not fit the guest, so the region's comes from the bounded pool;
    // 64 MiB of it is written.
    let (code, r) = hotplug_of("128M", "8G", &["--hotplug-use", "64M"]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["hotplug_used_bytes"], 64u64 << 20);
    let m = &r["columns"][0]["runs"][0];
    assert_eq!(m["plugged_bytes"], 8u64 << 30, "{m:#}");
    let g = &m["guest"];
    assert_eq!(g["ok"], true, "{g:#}");
    assert_eq!(g["plugged_bytes"], 8u64 << 30);
    assert_eq!(g["pages"], (64u64 << 20) / 4096);
    assert_eq!(g["region_pages"], g["pages"]);
    assert!(g["hot_pool_pages"].as_u64().unwrap() > 0, "{g:#}");
    assert!(g["hot_pool_used_pages"].as_u64().unwrap() >= (1 << 20) / 4096);
    // Nothing written at the plug; 64 B per 4 KiB used at the peak; none left
    // once it is unplugged.
    assert_eq!(g["memmap_plugged_bytes"], g["memmap_ready_bytes"]);
    assert!(
        g["memmap_peak_bytes"].as_u64().unwrap()
            >= g["memmap_ready_bytes"].as_u64().unwrap() + (1 << 20)
    );
    assert!(g["memmap_unplugged_bytes"].as_u64() <= g["memmap_ready_bytes"].as_u64());
    assert_eq!(m["plugged_after_bytes"], 0);
    let rss = steps(m);
    assert_eq!(rss.len(), 5, "{m:#}");
    assert!(rss[1] <= rss[0] + (4 << 20), "{rss:?}");
    assert!(rss[2] >= rss[0] + (48 << 20), "{rss:?}");
    assert!(rss[4] <= rss[0] + (8 << 20), "{rss:?}");
}
