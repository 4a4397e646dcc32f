//! The points at which a guest running a spike asks to be measured, and what the
//! host measured there.
//!
//! A guest prints `MEMINIT-MARK NAME` on its console (the meminit guest from its
//! `workload=spike:SIZE`, Linux from the initramfs's `/init`) and waits for a
//! byte on its serial line; the host measures QEMU once its memory settles and
//! sends the byte. This module owns the marker's syntax and the figures kept for
//! each; it does not run QEMU or read `/proc` (`run` does).

use serde::Serialize;

/// What a marker line starts with.
pub const MARK_PREFIX: &str = "MEMINIT-MARK ";

/// The marker after boot, before the spike.
pub const BOOT: &str = "boot";
/// The marker at the spike's peak, with all of it written.
pub const PEAK: &str = "peak";
/// The marker after the spike is freed and reported to the host.
pub const RELEASED: &str = "released";
/// The marker at the free itself (`files`): the guest goes on at once, to rest
/// until `released`, and the host watches its memory fall in between.
pub const FREED: &str = "freed";

/// Whether the guest waits for a byte at marker `name`.
pub fn waits_at(name: &str) -> bool {
    name != FREED
}

/// From samples of the guest's RAM resident on the host (ns since the `freed`
/// marker, bytes), the first at which 90% of what came back by `after` (bytes
/// resident after the release) had come back; `None` if less than 1 MiB came
/// back, or never.
pub fn time_to_90(samples: &[(u64, u64)], after: u64) -> Option<u64> {
    let &(_, start) = samples.first()?;
    let drop = start.checked_sub(after)?;
    if drop < 1 << 20 {
        return None;
    }
    let target = start - drop / 10 * 9;
    samples
        .iter()
        .find(|&&(_, bytes)| bytes <= target)
        .map(|&(t, _)| t)
}

/// The marker a console line carries, if any: its name (one word). Linux's own
/// messages may precede it on the line, so it is looked for anywhere.
pub fn mark_in(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(MARK_PREFIX)?;
    let name = rest.split_whitespace().next()?;
    (!name.is_empty()).then_some(name)
}

/// What the host measured at one marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mark {
    /// The marker's name (`boot`, `peak`, `released`).
    pub name: String,
    /// QEMU's resident memory there, once it settled, bytes.
    pub qemu_rss_bytes: u64,
    /// Of that, the guest's RAM (its mapping's `Rss` in smaps), bytes.
    pub guest_ram_rss_bytes: u64,
    /// When the guest printed it, from QEMU's start, ns.
    pub at_ns: u64,
}

/// QEMU's resident memory at the marker `name`, if the guest printed it.
pub fn rss_at(marks: &[Mark], name: &str) -> Option<u64> {
    marks
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.qemu_rss_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_where_linux_prints_them() {
        assert_eq!(mark_in("MEMINIT-MARK boot"), Some("boot"));
        assert_eq!(mark_in("MEMINIT-MARK peak\r"), Some("peak"));
        // A kernel message and the marker on one line, as Linux's console mixes them.
        assert_eq!(
            mark_in("[    3.1] virtio_balloon: loaded MEMINIT-MARK released"),
            Some("released")
        );
        assert_eq!(mark_in("MEMINIT-MARK "), None);
        assert_eq!(mark_in("MEMINIT-HOLD waiting"), None);
        let marks = [Mark {
            name: PEAK.into(),
            qemu_rss_bytes: 5,
            guest_ram_rss_bytes: 3,
            at_ns: 1,
        }];
        assert_eq!(rss_at(&marks, PEAK), Some(5));
        assert_eq!(rss_at(&marks, BOOT), None);
    }

    #[test]
    fn the_time_to_ninety_percent_is_the_first_sample_past_it() {
        const M: u64 = 1 << 20;
        let s = [
            (0, 100 * M),
            (10, 90 * M),
            (20, 30 * M),
            (30, 12 * M),
            (40, 10 * M),
        ];
        // 90 MiB of 90 came back: the target is 19 MiB.
        assert_eq!(time_to_90(&s, 10 * M), Some(30));
        // Less than a MiB back: no time.
        assert_eq!(
            time_to_90(&[(0, 10 * M), (5, 10 * M - 1)], 10 * M - 1),
            None
        );
        assert_eq!(time_to_90(&[], 0), None);
        // More resident after than at the free: nothing came back.
        assert_eq!(time_to_90(&[(0, M)], 2 * M), None);
        assert!(waits_at(PEAK) && !waits_at(FREED));
    }
}
