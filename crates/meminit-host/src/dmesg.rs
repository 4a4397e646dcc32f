//! Memory maps from Linux boot logs (`dmesg`, a serial console, or syslog).
//!
//! Takes the `Early memory node ranges` (`node N: [mem A-B]`) where present, since
//! those are the ranges Linux manages; otherwise the `BIOS-e820` usable ranges with
//! Linux's own edits (page 0 reserved, 0xa0000–0xfffff removed), on the nodes of the
//! `ACPI: SRAT` lines where present. It also collects what that kernel printed about
//! the result (`On node N totalpages`, `DMA32 zone: N pages`, `Memory: A/BK
//! available`, deferred-init times) so a layout can be checked against it.
//!
//! Lines may carry `[ 0.000000]` timestamps, `<6>` levels or syslog prefixes
//! (`... kernel: `). A line this parser recognises but cannot read is an error that
//! quotes it with its number; text it does not recognise is ignored.

use meminit::{Layout, MemoryRange, NodeId, RangeKind, ZoneType};
use serde::Serialize;

/// What a kernel printed about its memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinuxFigures {
    /// `On node N totalpages: P`, per node (older kernels).
    pub node_present: Vec<(u32, u64)>,
    /// `  DMA32 zone: P pages`, per node and zone (older kernels).
    pub zone_present: Vec<(u32, ZoneType, u64)>,
    /// `Memory: AK/BK available`: B, the present pages in KiB.
    pub memory_total_kib: Option<u64>,
    /// `Memory: AK/BK available`: A, what was free when it printed.
    pub memory_available_kib: Option<u64>,
    /// `node N deferred pages initialised in Xms`.
    pub deferred_init_ms: Vec<(u32, u64)>,
}

/// A parsed boot log.
#[derive(Clone, Debug)]
pub struct BootLog {
    /// The memory map to simulate.
    pub ranges: Vec<MemoryRange>,
    /// Where it came from: `"node ranges"` or `"e820"`.
    pub source: &'static str,
    /// `nr_cpu_ids` if printed.
    pub cpus: Option<u32>,
    /// What the kernel printed.
    pub figures: LinuxFigures,
}

/// Why a boot log could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// A recognised line that does not parse.
    #[error("line {line}: cannot read {what}: {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What the line was taken for.
        what: &'static str,
        /// The line.
        text: String,
    },
    /// A node or CPU number too large for the field it goes in (Linux's own are
    /// 32-bit), rather than silently cut to its low bits.
    #[error("line {line}: {what} {value} is too large (at most {max}): {text:?}")]
    TooLarge {
        /// 1-based line number.
        line: usize,
        /// What the number is.
        what: &'static str,
        /// The number as written.
        value: String,
        /// The largest accepted.
        max: u32,
        /// The line.
        text: String,
    },
    /// Neither node ranges nor e820 lines.
    #[error("no memory map in this log: it has neither 'Early memory node ranges' nor 'BIOS-e820:' lines")]
    NoMap,
}

/// The message of a log line, without timestamp, level or syslog prefix.
fn message(line: &str) -> &str {
    let mut s = line.trim_end_matches(['\r', '\n']);
    if let Some(i) = s.find("kernel: ") {
        s = &s[i + "kernel: ".len()..];
    }
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix('<') {
            if let Some(j) = rest.find('>') {
                if rest[..j].chars().all(|c| c.is_ascii_digit()) && j > 0 {
                    s = &rest[j + 1..];
                    continue;
                }
            }
        }
        if let Some(rest) = t.strip_prefix('[') {
            if let Some(j) = rest.find(']') {
                if rest[..j].trim().parse::<f64>().is_ok() {
                    s = &rest[j + 1..];
                    continue;
                }
            }
        }
        return s;
    }
}

/// `[mem 0xA-0xB]` with B inclusive, as `[A, B + 1)`.
fn mem_range(s: &str) -> Option<(u64, u64, &str)> {
    let start = s.find("[mem ")? + "[mem ".len();
    let close = start + s[start..].find(']')?;
    let (a, b) = s[start..close].split_once('-')?;
    let a = u64::from_str_radix(a.trim().trim_start_matches("0x"), 16).ok()?;
    let b = u64::from_str_radix(b.trim().trim_start_matches("0x"), 16).ok()?;
    if b < a {
        return None;
    }
    Some((a, b.checked_add(1)?, &s[close + 1..]))
}

/// The digits right after `key` (after spaces), or `""`.
fn digits_after<'s>(s: &'s str, key: &str) -> &'s str {
    let Some(at) = s.find(key) else { return "" };
    let rest = s[at + key.len()..].trim_start();
    &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
}

fn number_after<'s>(s: &'s str, key: &str) -> Option<(u64, &'s str)> {
    let rest = &s[s.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((rest[..end].parse().ok()?, &rest[end..]))
}

/// Parses a boot log.
pub fn parse(text: &str) -> Result<BootLog, LogError> {
    let mut e820 = Vec::new();
    let mut node_ranges = Vec::new();
    let mut srat = Vec::new();
    let mut figures = LinuxFigures::default();
    let mut cpus = None;
    let mut in_node_ranges = false;
    let mut current_node = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let msg = message(raw);
        let t = msg.trim();
        let bad = |what| LogError::Malformed {
            line,
            what,
            text: raw.to_string(),
        };
        // A node or CPU number `name`, which must fit in 32 bits, on a line taken
        // for `what`.
        let small = |what, name, value: &str| {
            value.parse::<u32>().map_err(|_| {
                if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                    LogError::TooLarge {
                        line,
                        what: name,
                        value: value.to_string(),
                        max: u32::MAX,
                        text: raw.to_string(),
                    }
                } else {
                    bad(what)
                }
            })
        };
        if let Some(rest) = t.strip_prefix("BIOS-e820:") {
            let (a, b, kind) = mem_range(rest).ok_or_else(|| bad("a BIOS-e820 range"))?;
            let kind = kind.trim();
            if kind.is_empty() {
                return Err(bad("a BIOS-e820 range"));
            }
            e820.push((a, b, kind == "usable"));
            in_node_ranges = false;
            continue;
        }
        if t == "Early memory node ranges" {
            in_node_ranges = true;
            continue;
        }
        if in_node_ranges {
            if let Some(rest) = t.strip_prefix("node") {
                let (node, rest) = rest
                    .trim_start()
                    .split_once(':')
                    .ok_or_else(|| bad("a node range"))?;
                let node = small("a node range", "node", node.trim())?;
                let (a, b, _) = mem_range(rest).ok_or_else(|| bad("a node range"))?;
                node_ranges.push(MemoryRange::new(a, b, RangeKind::Usable, NodeId(node)));
                continue;
            }
            in_node_ranges = false;
        }
        if let Some(pos) = t.find("SRAT: Node ") {
            let rest = &t[pos + "SRAT: Node ".len()..];
            if rest.contains("[mem ") {
                let node = small(
                    "an SRAT memory affinity",
                    "node",
                    rest.split_whitespace().next().unwrap_or(""),
                )?;
                let (a, b, _) = mem_range(rest).ok_or_else(|| bad("an SRAT memory affinity"))?;
                srat.push((a, b, node));
            }
            continue;
        }
        if t.starts_with("On node ") && t.contains("totalpages:") {
            let node = small("a totalpages line", "node", digits_after(t, "On node "))?;
            let (pages, _) =
                number_after(t, "totalpages:").ok_or_else(|| bad("a totalpages line"))?;
            figures.node_present.push((node, pages));
            current_node = Some(node);
            continue;
        }
        if let Some(zone) = ZoneType::ALL
            .iter()
            .find(|z| t.starts_with(&format!("{} zone: ", z.name())))
        {
            if let Some(node) = current_node {
                if t.contains(" pages, LIFO") || t.ends_with(" pages") {
                    let (pages, _) = number_after(t, "zone: ").ok_or_else(|| bad("a zone line"))?;
                    figures.zone_present.push((node, *zone, pages));
                }
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("Memory: ") {
            if rest.contains(" available") {
                let (avail, total) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.split_once('/'))
                    .ok_or_else(|| bad("a Memory: line"))?;
                let kib = |s: &str| s.strip_suffix('K').and_then(|v| v.parse::<u64>().ok());
                figures.memory_available_kib =
                    Some(kib(avail).ok_or_else(|| bad("a Memory: line"))?);
                figures.memory_total_kib = Some(kib(total).ok_or_else(|| bad("a Memory: line"))?);
            }
            continue;
        }
        if t.starts_with("node ") && t.contains("deferred pages initialised in") {
            let node = small("a deferred-init line", "node", digits_after(t, "node "))?;
            let (ms, _) =
                number_after(t, "initialised in").ok_or_else(|| bad("a deferred-init line"))?;
            figures.deferred_init_ms.push((node, ms));
            continue;
        }
        if t.contains("nr_cpu_ids:") {
            let n = small(
                "an nr_cpu_ids line",
                "nr_cpu_ids",
                digits_after(t, "nr_cpu_ids:"),
            )?;
            if n == 0 {
                return Err(bad("an nr_cpu_ids line (it says 0 CPUs)"));
            }
            cpus = Some(n);
        }
    }

    let (ranges, source) = if !node_ranges.is_empty() {
        (node_ranges, "node ranges")
    } else if !e820.is_empty() {
        (from_e820(&e820, &srat), "e820")
    } else {
        return Err(LogError::NoMap);
    };
    Ok(BootLog {
        ranges,
        source,
        cpus,
        figures,
    })
}

/// Usable e820 ranges with Linux's edits, split over SRAT nodes; everything else
/// as `Other`.
fn from_e820(e820: &[(u64, u64, bool)], srat: &[(u64, u64, u32)]) -> Vec<MemoryRange> {
    let mut out = Vec::new();
    for &(a, b, usable) in e820 {
        if !usable {
            out.push(MemoryRange::new(a, b, RangeKind::Other, NodeId(0)));
            continue;
        }
        // trim_bios_range(): page 0 is reserved, the legacy hole removed.
        let mut pieces = vec![(a.max(0x1000), b)];
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| [(s, e.min(0xa0000)), (s.max(0x100000), e)])
            .filter(|(s, e)| s < e)
            .collect();
        for (s, e) in pieces {
            split_by_nodes(s, e, srat, &mut out);
        }
    }
    out
}

fn split_by_nodes(start: u64, end: u64, srat: &[(u64, u64, u32)], out: &mut Vec<MemoryRange>) {
    let mut at = start;
    while at < end {
        let here = srat.iter().find(|&&(a, b, _)| a <= at && at < b);
        let (node, stop) = match here {
            Some(&(_, b, node)) => (node, b.min(end)),
            None => {
                // Not covered: up to the next SRAT range, on node 0.
                let next = srat
                    .iter()
                    .map(|&(a, _, _)| a)
                    .filter(|&a| a > at)
                    .min()
                    .unwrap_or(end);
                (0, next.min(end))
            }
        };
        out.push(MemoryRange::new(at, stop, RangeKind::Usable, NodeId(node)));
        at = stop;
    }
}

/// One disagreement between a layout and what Linux printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// What was compared, in Linux's words.
    pub what: String,
    /// Linux's figure.
    pub linux: u64,
    /// meminit's figure.
    pub meminit: u64,
}

impl LinuxFigures {
    /// Compares `layout` with every figure the kernel printed. Returns the figures
    /// compared and the mismatches.
    pub fn compare(&self, layout: &Layout) -> (usize, Vec<Mismatch>) {
        let mut checked = 0;
        let mut bad = Vec::new();
        let mut check = |what: String, linux: u64, meminit: u64| {
            checked += 1;
            if linux != meminit {
                bad.push(Mismatch {
                    what,
                    linux,
                    meminit,
                });
            }
        };
        for &(node, pages) in &self.node_present {
            let ours = layout.node(NodeId(node)).map_or(0, |n| n.present);
            check(format!("On node {node} totalpages"), pages, ours);
        }
        for &(node, zone, pages) in &self.zone_present {
            let ours = layout
                .node(NodeId(node))
                .map_or(0, |n| n.zones[zone as usize].present);
            check(
                format!("node {node} {} zone pages", zone.name()),
                pages,
                ours,
            );
        }
        if let Some(kib) = self.memory_total_kib {
            check(
                "Memory: total KiB".to_string(),
                kib,
                layout.present_pages() * 4,
            );
        }
        (checked, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped() {
        assert_eq!(
            message("[    0.000000] BIOS-e820: x").trim(),
            "BIOS-e820: x"
        );
        assert_eq!(
            message("Nov 26 10:00:00 host kernel: [    0.1] On node 0").trim(),
            "On node 0"
        );
        assert_eq!(
            message("<6>[ 1.5] Memory: 1K/2K available").trim(),
            "Memory: 1K/2K available"
        );
    }

    #[test]
    fn e820_fallback_applies_linux_edits_and_srat_nodes() {
        let log = "\
BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
BIOS-e820: [mem 0x0000000000100000-0x00000000bffdffff] usable
BIOS-e820: [mem 0x0000000100000000-0x000000083fffffff] usable
ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x0009ffff]
ACPI: SRAT: Node 0 PXM 0 [mem 0x00100000-0xbfffffff]
ACPI: SRAT: Node 0 PXM 0 [mem 0x100000000-0x43fffffff]
ACPI: SRAT: Node 1 PXM 1 [mem 0x440000000-0x83fffffff]
";
        let parsed = parse(log).unwrap();
        assert_eq!(parsed.source, "e820");
        let usable: Vec<_> = parsed
            .ranges
            .iter()
            .filter(|r| r.kind == RangeKind::Usable)
            .map(|r| (r.start, r.end, r.node.0))
            .collect();
        assert_eq!(
            usable,
            [
                (0x1000, 0x9fc00, 0),
                (0x100000, 0xbffe0000, 0),
                (0x100000000, 0x440000000, 0),
                (0x440000000, 0x840000000, 1)
            ]
        );
    }

    #[test]
    fn malformed_lines_are_quoted_with_their_number() {
        let log = "hello\n[    0.0] BIOS-e820: [mem 0x0000-0xzz] usable\n";
        let e = parse(log).unwrap_err();
        assert_eq!(
            e,
            LogError::Malformed {
                line: 2,
                what: "a BIOS-e820 range",
                text: "[    0.0] BIOS-e820: [mem 0x0000-0xzz] usable".into()
            }
        );
        assert!(e
            .to_string()
            .starts_with("line 2: cannot read a BIOS-e820 range"));
        assert_eq!(parse("nothing here\n").unwrap_err(), LogError::NoMap);
    }

    #[test]
    fn older_kernels_per_zone_figures() {
        let log = "\
Early memory node ranges
  node   0: [mem 0x0000000000001000-0x000000000009efff]
  node   0: [mem 0x0000000000100000-0x000000007ffdffff]
On node 0 totalpages: 524158
  DMA zone: 64 pages used for memmap
  DMA zone: 21 pages reserved
  DMA zone: 3998 pages, LIFO batch:0
  DMA32 zone: 8128 pages used for memmap
  DMA32 zone: 520160 pages, LIFO batch:63
";
        let parsed = parse(log).unwrap();
        assert_eq!(parsed.figures.node_present, [(0, 524158)]);
        assert_eq!(
            parsed.figures.zone_present,
            [(0, ZoneType::Dma, 3998), (0, ZoneType::Dma32, 520160)]
        );
    }
}
