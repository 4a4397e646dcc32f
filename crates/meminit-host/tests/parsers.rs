//! Any input gives a machine or an error, never a panic.

use meminit_host::dmesg;
use meminit_host::machine::MapFile;
use proptest::prelude::*;

fn log_line() -> impl Strategy<Value = String> {
    let hex = "(0x)?[0-9a-fA-F]{1,16}";
    prop_oneof![
        (hex, hex, "(usable|reserved|ACPI data|)")
            .prop_map(|(a, b, k)| format!("BIOS-e820: [mem {a}-{b}] {k}")),
        Just("Early memory node ranges".to_string()),
        (0..20u32, hex, hex).prop_map(|(n, a, b)| format!("  node {n:>3}: [mem {a}-{b}]")),
        (0..20u32, hex, hex)
            .prop_map(|(n, a, b)| format!("ACPI: SRAT: Node {n} PXM {n} [mem {a}-{b}]")),
        any::<u64>().prop_map(|n| format!("On node 0 totalpages: {n}")),
        any::<u64>().prop_map(|n| format!("  DMA32 zone: {n} pages, LIFO batch:63")),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("Memory: {a}K/{b}K available (x)")),
        ".{0,80}",
    ]
}

proptest! {
    #[test]
    fn boot_logs_parse_or_fail_cleanly(lines in prop::collection::vec((log_line(), "(\\[ *[0-9]+\\.[0-9]+\\] |<6>|host kernel: |)"), 0..30)) {
        let text: String = lines.iter().map(|(l, p)| format!("{p}{l}\n")).collect();
        match dmesg::parse(&text) {
            Ok(log) => {
                let machine = meminit_host::Machine {
                    name: "log".into(),
                    cpus: 1,
                    ranges: log.ranges,
                    section_size: 128 << 20,
                    linux: Some(log.figures.clone()),
                };
                if let Ok(layout) = machine.layout() {
                    let _ = log.figures.compare(&layout);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn json_maps_parse_or_fail_cleanly(text in "\\{\"ranges\": \\[(\\{\"start\": \"?(0x)?[0-9a-f]{1,17}[KMGT]?\"?, \"end\": [0-9]{1,20}, \"kind\": \"(usable|reserved|other|bad)\"(, \"node\": [0-9]{1,3})?\\},? ?){0,6}\\]\\}") {
        if let Ok(map) = MapFile::parse(&text, "p.json") {
            if let Ok(m) = map.into_machine("p".into()) {
                let _ = m.layout();
            }
        }
    }
}

/// A node or CPU number that does not fit in 32 bits is an error naming its line,
/// never cut to its low bits (`On node 4294967296` used to be node 0).
#[test]
fn huge_node_and_cpu_numbers_are_errors_naming_the_line() {
    let e820 = "BIOS-e820: [mem 0x0000000000000000-0x000000007fffffff] usable\n";
    for (line, what) in [
        ("On node 4294967296 totalpages: 5", "node 4294967296"),
        (
            "Early memory node ranges\n  node 4294967296: [mem 0x1000-0x9ffff]",
            "node 4294967296",
        ),
        (
            "ACPI: SRAT: Node 99999999999 PXM 0 [mem 0x0-0x7fffffff]",
            "node 99999999999",
        ),
        (
            "node 4294967297 deferred pages initialised in 5ms",
            "node 4294967297",
        ),
        (
            "setup_percpu: NR_CPUS:8192 nr_cpumask_bits:2 nr_cpu_ids:4294967296 nr_node_ids:1",
            "nr_cpu_ids 4294967296",
        ),
    ] {
        let e = dmesg::parse(&format!("{e820}{line}\n")).unwrap_err();
        let msg = e.to_string();
        let at = format!("line {}: ", 1 + line.lines().count());
        assert!(
            msg.starts_with(&at) && msg.contains(what) && msg.contains("too large"),
            "{msg}"
        );
    }
    // The largest 32-bit values still read as themselves.
    let log = dmesg::parse(&format!(
        "{e820}On node 4294967295 totalpages: 5\nnr_cpu_ids:4294967295\n"
    ))
    .unwrap();
    assert_eq!(log.figures.node_present, [(u32::MAX, 5)]);
    assert_eq!(log.cpus, Some(u32::MAX));
    let e = dmesg::parse(&format!("{e820}nr_cpu_ids:0\n")).unwrap_err();
    assert!(e.to_string().starts_with("line 2: "), "{e}");
}

fn json_error(text: &str) -> String {
    MapFile::parse(text, "m.json").unwrap_err().to_string()
}

/// A bad number says which field of which range, and why, with its position once.
#[test]
fn bad_numbers_in_json_maps_name_the_range_and_field() {
    let e = json_error(
        r#"{"ranges": [{"start": 0, "end": "1G", "kind": "usable"},
{"start": -1, "end": "2G", "kind": "usable"}]}"#,
    );
    assert_eq!(
        e,
        "m.json: line 2, column 12: range #1: start: -1 is negative: an address or size is a whole number from 0 to 2^64 - 1"
    );
    let e =
        json_error(r#"{"ranges": [{"start": 0, "end": 18446744073709551616, "kind": "usable"}]}"#);
    assert!(
        e.starts_with("m.json: line 1, column 52: range #0: end: the number is 2^64 or more"),
        "{e}"
    );
    let e = json_error(r#"{"ranges": [{"start": 0.5, "end": 1, "kind": "usable"}]}"#);
    assert!(
        e.contains("range #0: start: 0.5 is not a whole number"),
        "{e}"
    );
    let e = json_error(r#"{"ranges": [{"start": 0, "end": 1, "kind": "usable", "node": -2}]}"#);
    assert!(e.contains("range #0: node: "), "{e}");
    let e = json_error(r#"{"ranges": [{"start": 0, "end": 1, "kind": "ram"}]}"#);
    assert!(e.contains("range #0: kind: unknown variant `ram`"), "{e}");
    let e = json_error(r#"{"section_size": "lots", "ranges": []}"#);
    assert!(e.contains("section_size: 'lots' is not a size"), "{e}");
    // Exact values, as numbers and strings, still read.
    let m = MapFile::parse(
        r#"{"ranges": [{"start": 18446744073709551615, "end": "0xffffffffffffffff", "kind": "other"}]}"#,
        "m.json",
    )
    .unwrap();
    assert_eq!(
        (m.ranges[0].start.0, m.ranges[0].end.0),
        (u64::MAX, u64::MAX)
    );
    for e in [
        json_error("{\"ranges\": [{\"start\": 0, \"end\": \"zz\", \"kind\": \"usable\"}]}"),
        json_error("{\"ranges\": 5}"),
        json_error("{"),
    ] {
        assert_eq!(e.matches("line").count(), 1, "{e}");
    }
}

/// A `.json` file is read as JSON even when it is empty or not JSON at all, never
/// as a boot log.
#[test]
fn json_files_that_are_empty_or_not_json_are_json_errors() {
    let dir = std::env::temp_dir().join(format!("meminit-parsers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, says) in [
        ("", "the file is empty"),
        ("  \n", "the file is empty"),
        ("BIOS-e820: [mem 0x0-0x7fffffff] usable\n", "expected value"),
    ] {
        let path = dir.join("map.JSON");
        std::fs::write(&path, text).unwrap();
        let e = meminit_host::Machine::from_file(&path).unwrap_err();
        assert!(
            matches!(e, meminit_host::machine::MachineError::Json { .. }),
            "{text:?}: {e}"
        );
        assert!(e.to_string().contains(says), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Usable bytes of two huge ranges: saturated, not an overflow.
#[test]
fn usable_bytes_never_overflows() {
    use meminit::{MemoryRange, NodeId, RangeKind};
    let machine = meminit_host::Machine {
        name: "huge".into(),
        cpus: 1,
        ranges: vec![
            MemoryRange::new(0, u64::MAX, RangeKind::Usable, NodeId(0)),
            MemoryRange::new(0, u64::MAX, RangeKind::Usable, NodeId(1)),
            MemoryRange::new(9, 3, RangeKind::Usable, NodeId(0)),
        ],
        section_size: 128 << 20,
        linux: None,
    };
    assert_eq!(machine.usable_bytes(), u64::MAX);
    assert!(machine.layout().is_err());
}

proptest! {
    /// Arbitrary text, as a boot log or as a JSON map: a machine or an error, never a
    /// panic; every error says something.
    #[test]
    fn arbitrary_text_never_panics(
        text in prop_oneof!["(?s).{0,200}", "(container|random|idle)?:?[0-9.]{0,25}[kKmMgGtTpPeE]?i?[bB]?", "0[xX][0-9a-fA-F]{0,20}"],
        json in "[{}\\[\\]\",:0-9a-z -]{0,120}",
    ) {
        for t in [&text, &json] {
            if let Err(e) = meminit_host::size::parse(t) {
                prop_assert!(e.contains("is not a size"));
            }
            let _ = t.parse::<meminit_host::Workload>();
            match dmesg::parse(t) {
                Ok(log) => { let _ = log.figures; }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            match MapFile::parse(t, "a.json") {
                Ok(map) => {
                    if let Ok(m) = map.into_machine("a".into()) {
                        let _ = m.usable_bytes();
                        let _ = m.layout();
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// Numbers of any size and sign in every numeric field of a JSON map.
    #[test]
    fn any_number_in_a_json_map_reads_or_says_why(
        start in prop_oneof![any::<i64>().prop_map(|v| v.to_string()), any::<u128>().prop_map(|v| v.to_string()), Just("1e400".to_string()), Just("-0.5".to_string())],
        node in prop_oneof![any::<i64>().prop_map(|v| v.to_string()), any::<u128>().prop_map(|v| v.to_string())],
    ) {
        let text = format!(r#"{{"cpus": {node}, "section_size": {start}, "ranges": [{{"start": {start}, "end": "1G", "kind": "usable", "node": {node}}}]}}"#);
        match MapFile::parse(&text, "n.json") {
            Ok(map) => {
                if let Ok(m) = map.into_machine("n".into()) {
                    let _ = m.layout();
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert_eq!(e.matches("line").count(), 1, "{}", e);
                prop_assert!(e.contains("cpus: ") || e.contains("section_size: ") || e.contains("range #0: "), "{}", e);
            }
        }
    }
}
