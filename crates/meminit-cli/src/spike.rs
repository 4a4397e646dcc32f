//! The `spike` workload's part of the report table: residency after boot, at the
//! peak and after the release, what was reported to the host and given back, and
//! a line on what each figure measures. It prints; the figures are
//! `meminit_host::spike`'s, and the JSON is their serialisation.

use meminit_host::sim::StrategyReport;
use meminit_host::size;

use crate::repeated::{
    Repeated, GUEST_BOOT, GUEST_PEAK, GUEST_RELEASE, MEMMAP_BOOT, MEMMAP_PEAK, MEMMAP_RELEASE,
};
use crate::table::{format_ns, print_columns, print_legend, print_wrapped, spread_text, Cell};

/// Prints the spike's rows for the strategies that ran it, if any did.
pub(crate) fn print(repeated: &Repeated) {
    let ran: Vec<&StrategyReport> = repeated
        .first
        .strategies
        .iter()
        .filter(|s| s.skipped.is_none() && s.spike.is_some())
        .collect();
    let Some(first) = ran.first().and_then(|s| s.spike.as_ref()) else {
        return;
    };
    print_wrapped(
        "  ",
        &format!(
            "spike of {}: written page by page, all freed, then {} idle passes of free page reporting and give-back",
            size::format(first.bytes),
            first.passes
        ),
    );
    // The median [min–max] over runs, where the figure varied.
    let spread = move |s: &StrategyReport, metric: &str, value: u64| -> String {
        match repeated.spread.get(s.strategy).and_then(|m| m.get(metric)) {
            Some(sp) => spread_text(sp.median, sp.min, sp.max, sp.n, &|v| {
                size::format(v.round() as u64)
            }),
            None => size::format(value),
        }
    };
    let spike = |s: &StrategyReport| s.spike.clone().unwrap_or_default();
    let rows: Vec<(&str, Cell)> = vec![
        (
            "give-back (reserve kept per zone)",
            Box::new(|s| match s.give_back {
                true => format!("on ({})", size::format(s.give_back_reserve_bytes)),
                false => "off".into(),
            }),
        ),
        (
            "memmap resident after boot",
            Box::new(move |s| spread(s, MEMMAP_BOOT, spike(s).memmap_resident_boot_bytes)),
        ),
        (
            "memmap resident at the peak",
            Box::new(move |s| spread(s, MEMMAP_PEAK, spike(s).memmap_resident_peak_bytes)),
        ),
        (
            "memmap resident after release",
            Box::new(move |s| spread(s, MEMMAP_RELEASE, spike(s).memmap_resident_release_bytes)),
        ),
        (
            "guest memory resident after boot",
            Box::new(move |s| spread(s, GUEST_BOOT, spike(s).guest_resident_boot_bytes)),
        ),
        (
            "guest memory resident at the peak",
            Box::new(move |s| spread(s, GUEST_PEAK, spike(s).guest_resident_peak_bytes)),
        ),
        (
            "guest memory resident after release",
            Box::new(move |s| spread(s, GUEST_RELEASE, spike(s).guest_resident_release_bytes)),
        ),
        (
            "memory reported to the host",
            Box::new(move |s| size::format(spike(s).reported_bytes)),
        ),
        (
            "memory given back (chunks)",
            Box::new(move |s| {
                let p = spike(s);
                format!(
                    "{} ({})",
                    size::format(p.given_back_bytes),
                    p.chunks_given_back
                )
            }),
        ),
        (
            "memmap released by give-back",
            Box::new(move |s| size::format(spike(s).memmap_released_bytes)),
        ),
        (
            "time of the idle passes",
            Box::new(move |s| format_ns(spike(s).release_ns)),
        ),
        (
            "reused: zeroed/reported/all",
            Box::new(move |s| {
                let p = spike(s);
                format!(
                    "{}/{}/{}",
                    p.reuse_reported_pages - p.reuse_not_zeroed_pages,
                    p.reuse_reported_pages,
                    p.reuse_pages
                )
            }),
        ),
    ];
    let headers: Vec<&str> = ran.iter().map(|s| s.strategy).collect();
    let table: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|(label, cell)| (*label, ran.iter().map(|s| cell(s)).collect()))
        .collect();
    print_columns(&headers, &table);
    print_legend(&[
        "memmap resident: the page descriptors' memory the host holds (mincore), after boot, \
         with every page of the spike allocated and written, and after the release;",
        "guest memory resident: the simulated physical memory the host holds (mincore); the \
         reporter discards what it is handed (MADV_DONTNEED), as a hypervisor does;",
        "reported: free blocks of 2M or more, and chunks given back, handed to the host;",
        "given back: chunks returned to uninitialised (still available), and the memmap \
         the backing released once all of a section's (or chunk's) were;",
        "reused: pages allocated again after the release (pages whose memory had been \
         reported must read zeroes: zeroed/reported; all of them are written).",
    ]);
}
