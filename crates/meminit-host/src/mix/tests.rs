use super::*;
use crate::machine::Machine;

#[test]
fn workloads_parse_and_print_back() {
    let m: Mix = "mixed:3G:1%".parse().unwrap();
    assert_eq!(m.kind, MixKind::Mixed);
    assert_eq!(m.bytes, 3 << 30);
    assert!((m.keep - 0.01).abs() < 1e-12);
    assert_eq!(m.to_string(), "mixed:3G:1%");
    let c: Mix = "churn:8G:0.001:huge".parse().unwrap();
    assert_eq!(c.kind, MixKind::Churn { huge: true });
    assert!((c.keep - 0.001).abs() < 1e-12);
    assert_eq!("churn:512M:0%".parse::<Mix>().unwrap().keep, 0.0);
}

#[test]
fn bad_workloads_name_the_problem() {
    let err = |s: &str| s.parse::<Mix>().unwrap_err().to_string();
    assert_eq!("spike:1G".parse::<Mix>(), Err(BadMix::NotMix));
    assert!(
        err("mixed").contains("expected mixed:SIZE:KEEP"),
        "{}",
        err("mixed")
    );
    assert!(err("mixed:1G").contains("expected mixed:SIZE:KEEP"));
    assert!(err("mixed:lots:1%").contains("SIZE 'lots'"));
    assert!(err("mixed:0:1%").contains("SIZE '0'"));
    assert!(err("mixed:1G:150%").contains("KEEP '150%'"));
    assert!(err("mixed:1G:-1").contains("KEEP '-1'"));
    assert!(err("mixed:1G:1%:huge").contains("expected mixed:SIZE:KEEP"));
    assert!(err("churn:1G:1%:giant").contains("'giant' after KEEP"));
    assert!(err("churn:1G:1%:huge:x").contains("'huge' after KEEP"));
}

fn small() -> Machine {
    Machine::qemu_like(256 << 20, 1, 2).unwrap()
}

/// With hints right, the freed movable memory comes back; the counts hold
/// (the run checks its kept blocks and the chunks' words itself).
#[test]
fn hinted_mixed_returns_nearly_ideal() {
    let mix: Mix = "mixed:160M:1%".parse().unwrap();
    let r = run_mix(&small(), &mix, &MixOptions::default()).unwrap();
    assert_eq!(r.failures, 0);
    assert!(r.live_bytes > 0 && r.freed_bytes > 100 << 20, "{r:?}");
    assert!(r.ideal_bytes <= r.freed_bytes && r.returned_bytes <= r.freed_bytes);
    assert!(r.of_ideal() >= 95.0, "{r:?}");
}

/// Without hints nothing tells the kept pages apart: far less comes back.
#[test]
fn unhinted_mixed_returns_little() {
    let mix: Mix = "mixed:160M:5%".parse().unwrap();
    let opts = MixOptions {
        hints: false,
        ..MixOptions::default()
    };
    let r = run_mix(&small(), &mix, &opts).unwrap();
    assert_eq!(r.failures, 0);
    assert!(r.of_ideal() < 50.0, "{r:?}");
}

#[test]
fn churn_with_huge_blocks_runs_clean_and_seeds_differ() {
    let mix: Mix = "churn:400M:0.1%:huge".parse().unwrap();
    let a = run_mix(&small(), &mix, &MixOptions::default()).unwrap();
    let b = run_mix(
        &small(),
        &mix,
        &MixOptions {
            seed: 2,
            ..MixOptions::default()
        },
    )
    .unwrap();
    assert_eq!(a.failures + b.failures, 0);
    assert!(a.freed_bytes > 0 && a.of_ideal() >= 90.0, "{a:?}");
    assert_ne!(a.live_bytes, b.live_bytes);
}

/// Without hints, compaction (the simulator's hook copies each block and
/// updates the table) brings back what placement could not; the run checks
/// that every kept block's contents followed it.
#[test]
fn compaction_covers_for_missing_hints() {
    let mix: Mix = "mixed:160M:5%".parse().unwrap();
    let opts = MixOptions {
        hints: false,
        compact: true,
        ..MixOptions::default()
    };
    let r = run_mix(&small(), &mix, &opts).unwrap();
    assert_eq!((r.failures, r.refused_blocks), (0, 0));
    assert!(r.migrated_blocks > 0 && r.chunks_emptied > 0, "{r:?}");
    assert!(r.of_ideal() >= 95.0, "{r:?}");
}

/// Memmap goes back a 128 MiB section at a time: with 1% of 768 MiB kept and
/// no hints, compaction gathers the live pages in the section boot memory
/// keeps anyway, and every other section's memmap (2 MiB each) goes back.
#[test]
fn compaction_leaves_the_memmap_of_one_section() {
    let machine = Machine::qemu_like(1 << 30, 1, 2).unwrap();
    let mix: Mix = "mixed:768M:1%".parse().unwrap();
    let opts = MixOptions {
        hints: false,
        compact: true,
        ..MixOptions::default()
    };
    let r = run_mix(&machine, &mix, &opts).unwrap();
    assert_eq!((r.failures, r.refused_blocks), (0, 0));
    assert!(r.memmap_peak_bytes >= 8 << 20, "{r:?}");
    assert!(r.memmap_kept_bytes <= 2 << 20, "{r:?}");
}
