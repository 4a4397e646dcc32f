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
