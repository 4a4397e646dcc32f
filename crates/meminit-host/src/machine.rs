//! Machines to simulate: built-in shapes, any size, or a memory-map file.
//!
//! A [`Machine`] is a name, a CPU count and a memory map (byte ranges with kind and
//! node), from which [`Machine::layout`] builds the crate's validated layout. Built-in
//! and sized machines are laid out the way QEMU's `pc` machine lays out guest RAM
//! (the e820 table a Linux guest prints), after the two edits Linux makes to it
//! (page 0 reserved, the legacy VGA/BIOS hole removed), and split into NUMA nodes
//! by RAM offset as QEMU's `-numa node,memdev=` does. Memory-map files are JSON
//! (see [`MapFile`]) or a Linux boot log ([`crate::dmesg`]).

use std::path::Path;

use meminit::{Layout, LayoutBuilder, LayoutError, MemoryRange, NodeId, RangeKind};
use serde::{Deserialize, Serialize};

use crate::dmesg::{self, LinuxFigures};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A machine to simulate.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Its name in reports.
    pub name: String,
    /// CPUs (each gets per-CPU areas and trace buffers at boot).
    pub cpus: u32,
    /// The memory map.
    pub ranges: Vec<MemoryRange>,
    /// Section size in bytes.
    pub section_size: u64,
    /// What Linux printed for this map, when it came from a boot log.
    pub linux: Option<LinuxFigures>,
}

/// Why a machine could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// No built-in machine of that name.
    #[error("unknown machine '{0}': the built-in machines are container, server and large")]
    UnknownMachine(String),
    /// A size, node or CPU count out of range.
    #[error("{0}")]
    BadShape(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The JSON is malformed.
    #[error("{path}: line {line}, column {column}: {message}")]
    Json {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde said.
        message: String,
    },
    /// The boot log is malformed or holds no map.
    #[error("{path}: {source}")]
    Log {
        /// The file.
        path: String,
        /// Why.
        source: dmesg::LogError,
    },
    /// The map is not a valid layout.
    #[error("{origin}: {source}")]
    Layout {
        /// Where the map came from.
        origin: String,
        /// Why.
        source: LayoutError,
    },
}

/// The most CPUs a machine may have (x86-64 Linux's largest `NR_CPUS`).
pub const MAX_CPUS: u32 = 8192;

/// `cpus` if it is between 1 and [`MAX_CPUS`]; `origin` says where it came from.
pub fn check_cpus(cpus: u32, origin: &str) -> Result<u32, MachineError> {
    if (1..=MAX_CPUS).contains(&cpus) {
        Ok(cpus)
    } else {
        Err(MachineError::BadShape(format!(
            "{origin}: {cpus} CPUs: between 1 and {MAX_CPUS} are supported"
        )))
    }
}

/// The built-in machines.
pub const BUILT_IN: [&str; 3] = ["container", "server", "large"];

impl Machine {
    /// A built-in machine: `container` (2 GiB, 1 CPU, one node: a container
    /// runtime's microVM), `server` (64 GiB, 2 nodes, 16 CPUs), `large` (1 TiB,
    /// 4 nodes, 64 CPUs).
    pub fn built_in(name: &str) -> Result<Machine, MachineError> {
        let (memory, nodes, cpus) = match name {
            "container" => (2 * GIB, 1, 1),
            "server" => (64 * GIB, 2, 16),
            "large" => (1024 * GIB, 4, 64),
            _ => return Err(MachineError::UnknownMachine(name.to_string())),
        };
        let mut m = Machine::qemu_like(memory, nodes, cpus)?;
        m.name = name.to_string();
        Ok(m)
    }

    /// A machine of `memory` bytes on `nodes` nodes with `cpus` CPUs, laid out like
    /// a QEMU `pc` guest.
    pub fn qemu_like(memory: u64, nodes: u32, cpus: u32) -> Result<Machine, MachineError> {
        if memory < 64 * MIB {
            return Err(MachineError::BadShape(format!(
                "memory {} is too small: at least 64M",
                crate::size::format(memory)
            )));
        }
        // RAM past the first 3 GiB starts at 4 GiB, so it ends at memory + 1 GiB.
        let limit = (1 << meminit::PHYS_ADDR_BITS) - GIB;
        if memory > limit {
            return Err(MachineError::BadShape(format!(
                "memory {} is above the {}G (4P - 1G) a QEMU pc guest can have below the 52-bit physical address limit (RAM past 3G starts at 4G)",
                crate::size::format(memory),
                limit >> 30
            )));
        }
        if nodes == 0 || nodes as usize > meminit::MAX_NODES {
            return Err(MachineError::BadShape(format!(
                "{nodes} nodes: between 1 and {} are supported",
                meminit::MAX_NODES
            )));
        }
        if !(1..=MAX_CPUS).contains(&cpus) {
            return Err(MachineError::BadShape(format!(
                "{cpus} CPUs: between 1 and {MAX_CPUS} are supported"
            )));
        }
        // QEMU pc: RAM below 4 GiB up to 3 GiB when there is 3.5 GiB or more, the
        // rest from 4 GiB; the top 128 KiB below the PCI hole are BIOS-reserved.
        let low = if memory >= 0xe000_0000 {
            0xc000_0000
        } else {
            memory
        };
        let high = memory - low;
        let node_size = memory / nodes as u64;
        let node_of = |ram_offset: u64| ((ram_offset / node_size) as u32).min(nodes - 1);
        let mut ranges = Vec::new();
        // RAM pieces as (address, RAM offset, length), split where nodes change.
        let push_ram = |addr: u64, offset: u64, len: u64, ranges: &mut Vec<MemoryRange>| {
            let mut at = 0;
            while at < len {
                let node = node_of(offset + at);
                let node_end = if node == nodes - 1 {
                    u64::MAX
                } else {
                    (node as u64 + 1) * node_size
                };
                let piece = (len - at).min(node_end - (offset + at));
                ranges.push(MemoryRange::new(
                    addr + at,
                    addr + at + piece,
                    RangeKind::Usable,
                    NodeId(node),
                ));
                at += piece;
            }
        };
        // Linux reserves page 0 and drops 0xa0000..0x100000; the e820 table keeps
        // 0x9fc00..0xa0000 for the EBDA.
        push_ram(0x1000, 0x1000, 0x9fc00 - 0x1000, &mut ranges);
        ranges.push(MemoryRange::new(
            0x9fc00,
            0xa0000,
            RangeKind::Other,
            NodeId(0),
        ));
        ranges.push(MemoryRange::new(
            0xf0000,
            0x100000,
            RangeKind::Other,
            NodeId(0),
        ));
        push_ram(0x100000, 0x100000, low - 0x20000 - 0x100000, &mut ranges);
        ranges.push(MemoryRange::new(
            low - 0x20000,
            low,
            RangeKind::Other,
            NodeId(0),
        ));
        ranges.push(MemoryRange::new(
            0xfffc_0000,
            4 * GIB,
            RangeKind::Other,
            NodeId(0),
        ));
        if high > 0 {
            push_ram(4 * GIB, low, high, &mut ranges);
        }
        Ok(Machine {
            name: format!("{}-{}n-{}c", crate::size::format(memory), nodes, cpus),
            cpus,
            ranges,
            section_size: meminit::DEFAULT_SECTION_SIZE,
            linux: None,
        })
    }

    /// A machine from a memory-map file: JSON ([`MapFile`]) if its name ends in
    /// `.json` or its text starts with `{` (an empty or malformed `.json` file is a
    /// JSON error), otherwise a Linux boot log.
    pub fn from_file(path: &Path) -> Result<Machine, MachineError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MachineError::Io {
            path: shown.clone(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.clone());
        let json_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if json_name || text.trim_start().starts_with('{') {
            MapFile::parse(&text, &shown)?.into_machine(name)
        } else {
            let log = dmesg::parse(&text).map_err(|source| MachineError::Log {
                path: shown.clone(),
                source,
            })?;
            Ok(Machine {
                name,
                cpus: check_cpus(log.cpus.unwrap_or(1), &format!("{shown}: nr_cpu_ids"))?,
                ranges: log.ranges,
                section_size: meminit::DEFAULT_SECTION_SIZE,
                linux: Some(log.figures),
            })
        }
    }

    /// The validated layout.
    pub fn layout(&self) -> Result<Layout, MachineError> {
        let mut b = LayoutBuilder::new();
        b.section_size(self.section_size);
        for r in &self.ranges {
            b.push(*r);
        }
        b.build().map_err(|source| MachineError::Layout {
            origin: self.name.clone(),
            source,
        })
    }

    /// Total bytes of the usable ranges as given (inverted ranges count as empty);
    /// `u64::MAX` if the sum does not fit, which no valid map reaches.
    pub fn usable_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.kind == RangeKind::Usable)
            .map(|r| r.end.saturating_sub(r.start))
            .fold(0, u64::saturating_add)
    }
}

/// The JSON memory-map format.
///
/// ```json
/// {
///   "cpus": 4,
///   "section_size": "128M",
///   "ranges": [
///     { "start": "0x1000",   "end": "0x9f000",     "kind": "usable", "node": 0 },
///     { "start": "0x100000", "end": "0x80000000",  "kind": "usable", "node": 0 },
///     { "start": "0x80000000", "end": "0x80200000", "kind": "reserved" }
///   ]
/// }
/// ```
///
/// `start` and `end` (exclusive) are byte addresses, as integers or strings in
/// decimal or `0x` hex; `kind` is `usable`, `reserved` (RAM in use before the
/// allocator starts, on its own or inside a usable range) or `other` (not RAM);
/// `node` defaults to 0; `cpus` to 1; `section_size` to 128M. An error in a range
/// names the range (counting from 0) and the field.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    /// CPUs.
    #[serde(default, deserialize_with = "field::cpus")]
    pub cpus: Option<u32>,
    /// Section size, e.g. "128M".
    #[serde(default, deserialize_with = "field::section_size")]
    pub section_size: Option<Number>,
    /// The ranges.
    #[serde(deserialize_with = "field::ranges")]
    pub ranges: Vec<MapRange>,
}

/// One range of a [`MapFile`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRange {
    /// First byte.
    #[serde(deserialize_with = "field::start")]
    pub start: Number,
    /// One past the last byte.
    #[serde(deserialize_with = "field::end")]
    pub end: Number,
    /// `usable`, `reserved` or `other`.
    #[serde(deserialize_with = "field::kind")]
    pub kind: Kind,
    /// NUMA node.
    #[serde(default, deserialize_with = "field::node")]
    pub node: u32,
}

/// Deserializers that put the field's name (and a range's position) in front of
/// what went wrong inside it. serde_json reads the position back out of the inner
/// message, so the result still points at the offending value.
mod field {
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use std::fmt;

    use super::{Kind, MapRange, Number};

    fn named<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        name: &str,
        d: D,
    ) -> Result<T, D::Error> {
        T::deserialize(d).map_err(|e| D::Error::custom(format!("{name}: {e}")))
    }

    pub(super) fn start<'de, D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        named("start", d)
    }
    pub(super) fn end<'de, D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        named("end", d)
    }
    pub(super) fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        named("kind", d)
    }
    pub(super) fn node<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        named("node", d)
    }
    pub(super) fn cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        named("cpus", d)
    }
    pub(super) fn section_size<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Number>, D::Error> {
        named("section_size", d)
    }

    /// The list of ranges, each error prefixed with `range #i`.
    pub(super) fn ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MapRange>, D::Error> {
        struct Ranges;
        impl<'de> Visitor<'de> for Ranges {
            type Value = Vec<MapRange>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of ranges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<MapRange>, A::Error> {
                let mut out = Vec::new();
                loop {
                    match seq.next_element::<MapRange>() {
                        Ok(Some(r)) => out.push(r),
                        Ok(None) => return Ok(out),
                        Err(e) => {
                            return Err(A::Error::custom(format!("range #{}: {e}", out.len())))
                        }
                    }
                }
            }
        }
        d.deserialize_seq(Ranges).map_err(|e| {
            if e.to_string().starts_with("range #") {
                e
            } else {
                D::Error::custom(format!("ranges: {e}"))
            }
        })
    }
}

/// A range kind in a [`MapFile`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// RAM the allocator manages.
    Usable,
    /// RAM already in use.
    Reserved,
    /// Not RAM.
    Other,
}

/// An integer written as a JSON number or as a string (decimal, `0x` hex, or a
/// size with a K/M/G/T suffix), from 0 to 2^64 - 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct Number(pub u64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

const NUMBER_RANGE: &str = "an address or size is a whole number from 0 to 2^64 - 1";

impl serde::de::Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number from 0 to 2^64 - 1, or a string such as \"0x1000\" or \"128M\"")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Number, E> {
        u64::try_from(v)
            .map(Number)
            .map_err(|_| E::custom(format!("{v} is negative: {NUMBER_RANGE}")))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Number, E> {
        u64::try_from(v)
            .map(Number)
            .map_err(|_| E::custom(format!("{v} is 2^64 or more: {NUMBER_RANGE}")))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Number, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative: {NUMBER_RANGE}")));
        }
        self.visit_u128(v.unsigned_abs())
    }

    /// serde_json hands over integers that do not fit in 64 bits, and numbers
    /// with a fraction or an exponent, as floating point.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Number, E> {
        const EXACT: f64 = (1u64 << f64::MANTISSA_DIGITS) as f64;
        if !v.is_finite() || v.fract() != 0.0 {
            Err(E::custom(format!(
                "{v} is not a whole number: {NUMBER_RANGE}"
            )))
        } else if v < 0.0 {
            Err(E::custom(format!("{v} is negative: {NUMBER_RANGE}")))
        } else if v >= 18_446_744_073_709_551_616.0 {
            Err(E::custom(format!(
                "the number is 2^64 or more: {NUMBER_RANGE} (the largest is 0xffffffffffffffff)"
            )))
        } else if v <= EXACT {
            Ok(Number(v as u64))
        } else {
            Err(E::custom(format!(
                "{v:e} is too large to be read exactly in this form: write it as an integer without a fraction or exponent, or as a string"
            )))
        }
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Number, E> {
        crate::size::parse(s).map(Number).map_err(E::custom)
    }
}

impl From<Number> for u64 {
    fn from(n: Number) -> u64 {
        n.0
    }
}

impl MapFile {
    /// Parses the JSON text of a map file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<MapFile, MachineError> {
        if text.trim().is_empty() {
            return Err(MachineError::Json {
                path: path.to_string(),
                line: 1,
                column: 1,
                message: "the file is empty: a memory map is a JSON object with a \"ranges\" list"
                    .to_string(),
            });
        }
        serde_json::from_str(text).map_err(|e| {
            // serde_json's message ends with the position, which the error shows
            // in front already.
            let mut message = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            if message.ends_with(&at) {
                message.truncate(message.len() - at.len());
            }
            MachineError::Json {
                path: path.to_string(),
                line: e.line(),
                column: e.column(),
                message,
            }
        })
    }

    /// The machine the file describes.
    pub fn into_machine(self, name: String) -> Result<Machine, MachineError> {
        let ranges = self
            .ranges
            .iter()
            .map(|r| {
                let kind = match r.kind {
                    Kind::Usable => RangeKind::Usable,
                    Kind::Reserved => RangeKind::Reserved,
                    Kind::Other => RangeKind::Other,
                };
                MemoryRange::new(r.start.0, r.end.0, kind, NodeId(r.node))
            })
            .collect();
        Ok(Machine {
            cpus: check_cpus(self.cpus.unwrap_or(1).max(1), &format!("{name}: cpus"))?,
            name,
            ranges,
            section_size: self
                .section_size
                .map(|n| n.0)
                .unwrap_or(meminit::DEFAULT_SECTION_SIZE),
            linux: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meminit::ZoneType;

    #[test]
    fn container_matches_what_linux_counts_for_a_2g_qemu_guest() {
        let m = Machine::built_in("container").unwrap();
        let l = m.layout().unwrap();
        let n = l.node(NodeId(0)).unwrap();
        assert_eq!(n.present, 524158);
        assert_eq!(n.zones[ZoneType::Dma as usize].present, 3998);
    }

    #[test]
    fn sized_machines_end_below_the_address_limit() {
        let most = (1u64 << 52) - GIB;
        assert!(Machine::qemu_like(most, 16, 1).unwrap().layout().is_ok());
        let e = Machine::qemu_like(most + 1, 1, 1).unwrap_err().to_string();
        assert!(e.contains("is above the"), "{e}");
        assert!(Machine::qemu_like(u64::MAX, 1, 1).is_err());
    }

    #[test]
    fn server_splits_nodes_by_ram_offset() {
        let m = Machine::built_in("server").unwrap();
        let l = m.layout().unwrap();
        assert_eq!(l.node_count(), 2);
        let n1 = l.node(NodeId(1)).unwrap();
        assert_eq!(n1.start_pfn, meminit::Pfn::containing(4 * GIB + 29 * GIB));
        assert_eq!(n1.present, 32 * GIB / 4096);
    }

    #[test]
    fn json_maps_parse_and_name_bad_lines() {
        let text = r#"{ "cpus": 2, "ranges": [
            { "start": "0x1000", "end": "0x9f000", "kind": "usable" },
            { "start": 1048576, "end": "1G", "kind": "usable", "node": 0 }
        ] }"#;
        let m = MapFile::parse(text, "m.json")
            .unwrap()
            .into_machine("m".into())
            .unwrap();
        assert_eq!(m.cpus, 2);
        assert_eq!(
            m.layout().unwrap().present_pages(),
            0x9e + (GIB - MIB) / 4096
        );
        let bad =
            "{ \"ranges\": [\n { \"start\": \"0x10\", \"end\": \"zz\", \"kind\": \"usable\" } ] }";
        let e = MapFile::parse(bad, "bad.json").unwrap_err().to_string();
        assert!(e.starts_with("bad.json: line 2"), "{e}");
        let overlap = r#"{ "ranges": [
            { "start": 0, "end": "2M", "kind": "usable" },
            { "start": "1M", "end": "3M", "kind": "usable" } ] }"#;
        let e = MapFile::parse(overlap, "o.json")
            .unwrap()
            .into_machine("o".into())
            .unwrap()
            .layout()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("range #1") && e.contains("overlaps range #0"),
            "{e}"
        );
    }
}
