//! `meminit layout FILE`: a memory map's per-node, per-zone layout in the words
//! Linux prints at boot, checked against the figures of the kernel's own log
//! where the file is one. It prints; it boots nothing.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use meminit::{Layout, Pfn, ZoneType, PAGE_SIZE};
use meminit_host::machine::Machine;
use meminit_host::size;

/// `meminit layout FILE`.
pub(crate) fn layout(path: &Path) -> Result<ExitCode> {
    let machine = Machine::from_file(path)?;
    let layout = machine.layout()?;
    print!("{}", linux_style_layout(&layout));
    if let Some(linux) = &machine.linux {
        let (checked, mismatches) = linux.compare(&layout);
        if checked == 0 {
            println!("(the log prints no per-node or total page counts to compare with)");
        } else if mismatches.is_empty() {
            println!("agrees with the kernel's own figures: {checked} of {checked} match");
        } else {
            for m in &mismatches {
                println!(
                    "MISMATCH {}: Linux {}, meminit {}",
                    m.what, m.linux, m.meminit
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The layout in the words Linux prints at boot.
fn linux_style_layout(layout: &Layout) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mem = |start: Pfn, end: Pfn| {
        format!(
            "[mem {:#018x}-{:#018x}]",
            start.0 * PAGE_SIZE,
            end.0 * PAGE_SIZE - 1
        )
    };
    let first = layout
        .node_ranges()
        .next()
        .map_or(Pfn(0), |(pfns, _)| pfns.start);
    let last = layout.end_pfn();
    writeln!(out, "Zone ranges:").unwrap();
    for z in ZoneType::ALL {
        let start = first.max(z.lowest_pfn());
        let end = last.min(z.highest_pfn());
        if start < end {
            writeln!(out, "  {:<8} {}", z.name(), mem(start, end)).unwrap();
        } else {
            writeln!(out, "  {:<8} empty", z.name()).unwrap();
        }
    }
    writeln!(out, "Early memory node ranges").unwrap();
    for (pfns, node) in layout.node_ranges() {
        writeln!(out, "  node {:>3}: {}", node.0, mem(pfns.start, pfns.end)).unwrap();
    }
    for (n, node) in layout.nodes() {
        writeln!(
            out,
            "Initmem setup node {} {}",
            n.0,
            mem(node.start_pfn, node.end_pfn)
        )
        .unwrap();
    }
    for (n, node) in layout.nodes() {
        writeln!(out, "On node {} totalpages: {}", n.0, node.present).unwrap();
        for z in ZoneType::ALL {
            let span = node.zones[z as usize];
            if span.spanned() > 0 {
                writeln!(
                    out,
                    "  {} zone: {} pages, spanned {}, reserved {}",
                    z.name(),
                    span.present,
                    span.spanned(),
                    span.reserved
                )
                .unwrap();
            }
        }
    }
    writeln!(
        out,
        "Memory: {}K present, {} sections of {}",
        layout.present_pages() * PAGE_SIZE / 1024,
        layout.section_count(),
        size::format(layout.section_pages() * PAGE_SIZE)
    )
    .unwrap();
    out
}
