//! Bad input on the command line: each error says what and where, once, with exit
//! status 2, and the README's own example map is accepted.

use std::path::PathBuf;

use assert_cmd::Command;

fn meminit() -> Command {
    Command::cargo_bin("meminit").unwrap()
}

/// Runs `meminit ARGS`, expects exit status 2 and returns the one-line message.
fn error_of(args: &[&std::ffi::OsStr]) -> String {
    let out = meminit().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_string()
}

fn layout_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    error_of(&["layout".as_ref(), path.as_os_str()])
}

/// "cannot read X: why: why" and "map: range #1 ... : range #1 ..." once printed
/// their cause twice.
#[test]
fn each_cause_is_printed_once() {
    let err = error_of(&["layout".as_ref(), "/nonexistent/map.json".as_ref()]);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let err = layout_error(
        "overlap.json",
        r#"{"ranges": [{"start": 0, "end": "64M", "kind": "usable"}, {"start": "32M", "end": "96M", "kind": "usable"}]}"#,
    );
    assert_eq!(err.matches("range #1").count(), 1, "{err}");
    assert!(err.contains("overlaps range #0"), "{err}");
    let err = layout_error("bad.log", "no memory map here\n");
    assert_eq!(err.matches("no memory map").count(), 1, "{err}");
    let err = layout_error("bad.log", "BIOS-e820: [mem 0x0-0xzz] usable\n");
    assert_eq!(err.matches("line 1").count(), 1, "{err}");
}

/// A negative or 2^64 address names the field and the range, not serde's enum.
#[test]
fn bad_addresses_name_the_range_and_field() {
    let err = layout_error(
        "neg.json",
        r#"{"ranges": [{"start": -1, "end": "1G", "kind": "usable"}]}"#,
    );
    assert!(
        err.ends_with("neg.json: line 1, column 24: range #0: start: -1 is negative: an address or size is a whole number from 0 to 2^64 - 1"),
        "{err}"
    );
    let err = layout_error(
        "big.json",
        r#"{"ranges": [{"start": 0, "end": "1G", "kind": "usable"}, {"start": "2G", "end": 18446744073709551616, "kind": "usable"}]}"#,
    );
    assert!(
        err.contains("range #1: end: the number is 2^64 or more"),
        "{err}"
    );
    assert!(
        !err.contains("NumberRepr") && !err.contains("untagged"),
        "{err}"
    );
}

/// An empty or non-JSON `.json` file is a JSON error, not a boot log without a map.
#[test]
fn empty_json_files_are_json_errors() {
    let err = layout_error("empty.json", "");
    assert!(
        err.ends_with("empty.json: line 1, column 1: the file is empty: a memory map is a JSON object with a \"ranges\" list"),
        "{err}"
    );
    let err = layout_error("text.json", "hello\n");
    assert!(
        err.contains("text.json: line 1, column 1: expected value"),
        "{err}"
    );
    assert!(!err.contains("no memory map in this log"), "{err}");
}

/// The example in docs/tools.md, as printed there: a reserved range inside a
/// usable one.
#[test]
fn the_documented_example_map_is_accepted() {
    let readme = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/tools.md"),
    )
    .unwrap();
    let start = readme.find("```json\n").unwrap() + "```json\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(example.contains("\"reserved\""), "{example}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readme.json");
    std::fs::write(&path, example).unwrap();
    let out = meminit().arg("layout").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 0x1000000..0x3000000 (8192 pages) is reserved inside usable DMA32 memory;
    // the node ranges are those of the usable ranges alone.
    assert!(
        stdout.contains("  node   0: [mem 0x0000000000100000-0x00000000bffdffff]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DMA32 zone: 782304 pages, spanned 782304, reserved 8192"),
        "{stdout}"
    );
}

/// CPU counts past what the boot sizing can take are refused wherever they come
/// from, not run for hours (4 billion per-CPU areas) or overflowed.
#[test]
fn cpu_counts_are_bounded() {
    for cpus in ["0", "8193", "4294967295"] {
        let err = error_of(&[
            "report".as_ref(),
            "--machine".as_ref(),
            "container".as_ref(),
            "--cpus".as_ref(),
            cpus.as_ref(),
        ]);
        assert!(
            err.ends_with(&format!(
                "--cpus: {cpus} CPUs: between 1 and 8192 are supported"
            )),
            "{err}"
        );
    }
    let err = layout_error(
        "many.json",
        r#"{"cpus": 100000, "ranges": [{"start": 0, "end": "1G", "kind": "usable"}]}"#,
    );
    assert!(err.contains("cpus: 100000 CPUs"), "{err}");
    let err = layout_error(
        "many.log",
        "BIOS-e820: [mem 0x0-0x7fffffff] usable\nnr_cpu_ids:9000\n",
    );
    assert!(err.contains("nr_cpu_ids: 9000 CPUs"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Whatever a map file holds, as JSON or as a boot log: a layout (exit 0 or 1)
    /// or one line of error (exit 2), never a panic.
    #[test]
    fn any_map_file_gives_a_layout_or_one_error(
        text in proptest::prop_oneof![
            "(?s).{0,300}",
            "\\{\"ranges\": \\[(\\{\"start\": -?[0-9]{1,21}, \"end\": \"[0-9]{1,5}[KMGTP]\", \"kind\": \"(usable|reserved|other)\", \"node\": [0-9]{1,11}\\},? ?){0,4}\\]\\}",
            "((On node|  node|nr_cpu_ids:|BIOS-e820: \\[mem) [0-9]{1,12}(-0x[0-9a-f]{1,12}\\] usable)?\n){0,6}",
        ],
        name in proptest::prop_oneof![proptest::strategy::Just("map.json"), proptest::strategy::Just("boot.log")],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let out = meminit().arg("layout").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        proptest::prop_assert!(!err.contains("panicked"), "{}", err);
        match out.status.code() {
            Some(0) | Some(1) => {}
            Some(2) => proptest::prop_assert_eq!(err.lines().count(), 1, "{}", err),
            other => proptest::prop_assert!(false, "exit {:?}: {}", other, err),
        }
    }
}

/// Worker thread counts are bounded before any thread is spawned.
#[test]
fn thread_counts_are_bounded() {
    for threads in ["0", "4097", "18446744073709551615"] {
        let err = error_of(&["report".as_ref(), "--threads".as_ref(), threads.as_ref()]);
        // Bounded by the machine's CPUs (at most 8192), so never by spawning.
        assert!(
            err.contains(&format!("--threads {threads}: must be between 1 and ")),
            "{err}"
        );
    }
}

/// `vm --cpus 4294967295` multiplied the count by 64 in 32 bits (a panic in
/// debug builds, a wrong answer in release); it now reaches the next check.
#[test]
fn vm_cpu_counts_do_not_overflow() {
    let err = error_of(&[
        "vm".as_ref(),
        "--cpus".as_ref(),
        "4294967295".as_ref(),
        "--memory".as_ref(),
        "1M".as_ref(),
    ]);
    assert!(err.ends_with("--memory must be at least 64M"), "{err}");
}

/// An option that cannot apply to what was asked is an error, not silently
/// ignored: a kernel or initramfs with no Linux peer to boot it, give-back
/// settings with no spike whose idle passes give chunks back.
#[test]
fn options_that_cannot_apply_are_errors() {
    let err = error_of(&["vm".as_ref(), "--kernel".as_ref(), "/boot/vmlinuz".as_ref()]);
    assert!(
        err.contains("--kernel /boot/vmlinuz") && err.contains("--peer linux"),
        "{err}"
    );
    let err = error_of(&[
        "vm".as_ref(),
        "--workload".as_ref(),
        "spike:64M".as_ref(),
        "--initramfs".as_ref(),
        "/tmp/initramfs.cpio".as_ref(),
    ]);
    assert!(
        err.contains("--initramfs") && err.contains("--peer linux"),
        "{err}"
    );
    for args in [
        ["--give-back", "on"],
        ["--give-back", "off"],
        ["--give-back-reserve", "8M"],
    ] {
        let mut all: Vec<&std::ffi::OsStr> = ["report", "--machine", "container"]
            .iter()
            .map(|a| a.as_ref())
            .collect();
        all.extend(args.iter().map(|a| -> &std::ffi::OsStr { a.as_ref() }));
        let err = error_of(&all);
        assert!(
            err.contains(args[0]) && err.contains("spike"),
            "{args:?}: {err}"
        );
    }
}

/// A mixed or churn workload string that is wrong says which part, and the
/// options of those workloads are refused elsewhere.
#[test]
fn bad_mix_workloads_name_the_problem() {
    let report = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["report".as_ref(), "--memory".as_ref(), "256M".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        // Exit status 2; clap adds a line of usage to its own errors.
        let out = meminit().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = report(&["--workload", "mixed:1G"]);
    assert!(err.contains("expected mixed:SIZE:KEEP"), "{err}");
    let err = report(&["--workload", "mixed:many:1%"]);
    assert!(err.contains("SIZE 'many'"), "{err}");
    let err = report(&["--workload", "churn:1G:200%"]);
    assert!(err.contains("KEEP '200%'"), "{err}");
    let err = report(&["--workload", "churn:1G:1%:giant"]);
    assert!(err.contains("'giant'"), "{err}");
    let err = report(&["--workload", "blend:1G:1%"]);
    assert!(err.contains("mixed:SIZE:KEEP or churn:SIZE:KEEP"), "{err}");
    let err = report(&["--workload", "mixed:1G:1%"]);
    assert!(err.contains("more than the"), "{err}");
    let err = report(&[
        "--workload",
        "mixed:64M:1%",
        "--hints",
        "off",
        "--wrong-hints",
        "1%",
    ]);
    assert!(err.contains("--wrong-hints"), "{err}");
    let err = report(&["--workload", "mixed:64M:1%", "--wrong-hints", "lots"]);
    assert!(err.contains("'lots' is not a fraction"), "{err}");
    let err = report(&["--workload", "spike:64M", "--compact", "on"]);
    assert!(err.contains("--compact: only the mixed and churn"), "{err}");
    let err = report(&["--workload", "mixed:64M:1%", "--strategy", "eager"]);
    assert!(err.contains("--strategy"), "{err}");
}
