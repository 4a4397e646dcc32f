//! The physical limit of memmap initialisation: the best honest ways to write the
//! same bytes on fresh memory, one core or all of them, measured on this host.
//!
//! Initialisation is compared with these fills in the report: a whole-region fill
//! (fault everything in, then write), a fill a section's memmap (2 MiB) at a time
//! while it is in cache, the same with non-temporal stores, and all threads filling
//! at once beside deferred initialisation. This module only measures; it knows
//! nothing of the allocator.

use std::time::Instant;

use crate::region::Region;

/// Time for one core to commit and fill `bytes` of fresh memory, the way the
/// backing commits memmap: huge pages, populated ahead, then written.
pub fn fill_time(bytes: u64) -> std::io::Result<u64> {
    if bytes == 0 {
        return Ok(0);
    }
    let region = Region::reserve(bytes)?;
    let t = Instant::now();
    region.populate(0, bytes as usize)?;
    // SAFETY: the region is ours alone.
    unsafe { region.fill(0, bytes as usize, 0) };
    Ok(t.elapsed().as_nanos() as u64)
}

/// The unit of the chunked fills: one section's memmap (2 MiB), what
/// initialisation writes at a time.
const FILL_CHUNK: usize = 2 << 20;

/// Time to fill `bytes` of fresh memory a chunk at a time (fault in 2 MiB, then
/// write it while it is in cache), with ordinary or non-temporal stores (ns).
pub fn chunked_fill_time(bytes: u64, nontemporal: bool) -> std::io::Result<u64> {
    Ok(chunked_fill_split(bytes, nontemporal)?.total_ns)
}

/// A chunked fill's time, and the part of it the host spent committing (and
/// zeroing) the pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillSplit {
    /// The whole fill (ns).
    pub total_ns: u64,
    /// Of which committing the memory, `MADV_POPULATE_WRITE` (ns); the rest is
    /// the writes.
    pub populate_ns: u64,
}

impl FillSplit {
    /// The writes alone: the whole less the commits (ns).
    pub fn writes_ns(&self) -> u64 {
        self.total_ns.saturating_sub(self.populate_ns)
    }
}

/// [`chunked_fill_time`], with the time spent committing the pages apart.
pub fn chunked_fill_split(bytes: u64, nontemporal: bool) -> std::io::Result<FillSplit> {
    if bytes == 0 {
        return Ok(FillSplit::default());
    }
    let region = Region::reserve(bytes)?;
    let len = bytes as usize;
    let mut populate_ns = 0;
    let t = Instant::now();
    for offset in (0..len).step_by(FILL_CHUNK) {
        let n = FILL_CHUNK.min(len - offset);
        let committing = Instant::now();
        region.populate(offset, n)?;
        populate_ns += committing.elapsed().as_nanos() as u64;
        // SAFETY: the region is ours alone; the range is inside it.
        unsafe { fill_range(&region, offset, n, nontemporal) };
    }
    Ok(FillSplit {
        total_ns: t.elapsed().as_nanos() as u64,
        populate_ns,
    })
}

/// Writes zeroes over `len` bytes at `offset`, with non-temporal stores where
/// asked (and available).
///
/// # Safety
///
/// No one else may read or write that range meanwhile, and it lies inside the
/// region.
unsafe fn fill_range(region: &Region, offset: usize, len: usize, nontemporal: bool) {
    #[cfg(target_arch = "x86_64")]
    if nontemporal {
        use std::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_sfence, _mm_stream_si128};
        // SAFETY: the region is page-aligned and offset is a multiple of 2 MiB,
        // so every 16-byte store is aligned; the stores stay below offset + len
        // (inside the region, the caller's promise); SSE2 is part of x86-64.
        unsafe {
            let base = region.base().as_ptr().add(offset) as *mut __m128i;
            let zero = _mm_setzero_si128();
            for i in 0..len / 16 {
                _mm_stream_si128(base.add(i), zero);
            }
            _mm_sfence();
        }
        return;
    }
    let _ = nontemporal;
    // SAFETY: the caller's promise.
    unsafe { region.fill(offset, len, 0) };
}

/// The names of the three honest one-core fills, in [`Fills`] order.
pub const FILL_METHODS: [&str; 3] = ["whole", "chunked", "chunked-nt"];

/// One sample of each honest one-core fill of the same bytes on fresh memory
/// (ns), in [`FILL_METHODS`] order: the whole-region fill ([`fill_time`]), the
/// chunked fill and the chunked non-temporal fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fills(pub [u64; 3]);

/// One fill of a set: a method of [`FILL_METHODS`] (its index), or an ordinary
/// chunked fill whose time is not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillStep {
    /// The method `FILL_METHODS[i]`, counted.
    Method(usize),
    /// An ordinary chunked fill, not counted: it only leaves the host's free
    /// pages as an ordinary fill leaves them.
    Uncounted,
}

/// The fills before a run, in order: see [`Fills::before_run`].
pub const BEFORE_RUN: [FillStep; 4] = [
    FillStep::Method(2),
    FillStep::Uncounted,
    FillStep::Method(0),
    FillStep::Method(1),
];

/// The fills after a run, in order: see [`Fills::after_run`].
pub const AFTER_RUN: [FillStep; 4] = [
    FillStep::Method(1),
    FillStep::Method(0),
    FillStep::Method(2),
    FillStep::Uncounted,
];

impl Fills {
    /// Each method once, on fresh memory, to be followed at once by the run
    /// they are compared with ([`BEFORE_RUN`]): the non-temporal fill first,
    /// then an ordinary fill, not counted, then the whole fill, then the chunked
    /// one, so that the run starts as the chunked fill (the one that writes as
    /// the allocator does) started: right after an ordinary fill of the same
    /// bytes, with the non-temporal one as far behind.
    ///
    /// Order matters because the host recycles the pages a fill frees for
    /// whatever populates next, and zeroes them much faster while they are still
    /// in cache: pages written with non-temporal stores are not, nor are pages
    /// that sat free for long, and the non-temporal fill's pages come back
    /// for a while after it. The first order used (whole, chunked, non-temporal,
    /// uncounted ordinary, then the run) put the run nearest the non-temporal
    /// fill and the chunked fill farthest from it. Measured in the report
    /// (container, eager, 32 MiB, pinned, 9 runs each, two invocations, medians
    /// of runs): with that order the run took 7.1 ms against a 3.3–3.5 ms
    /// chunked fill (0.46–0.49 of it); with no non-temporal fill in the runs
    /// before (whole, chunked, run) 3.8–4.0 ms against 3.4 ms (0.84–0.89);
    /// with this order 5.3–5.5 ms against 5.0–5.1 ms (0.92–0.97).
    pub fn before_run(bytes: u64) -> std::io::Result<Fills> {
        Self::steps(bytes, &BEFORE_RUN)
    }

    /// Each method once, on fresh memory, right after the run they are compared
    /// with ([`AFTER_RUN`]): the mirror of [`Fills::before_run`] (chunked,
    /// whole, non-temporal), so that the chunked fill follows the run as the run
    /// followed it, then an ordinary fill, not counted, so that whatever comes
    /// next does not start right after the non-temporal one.
    pub fn after_run(bytes: u64) -> std::io::Result<Fills> {
        Self::steps(bytes, &AFTER_RUN)
    }

    /// The fills of `steps`, in order, each method's time where it is counted.
    fn steps(bytes: u64, steps: &[FillStep]) -> std::io::Result<Fills> {
        let mut fills = Fills([0; 3]);
        for step in steps {
            match *step {
                FillStep::Method(0) => fills.0[0] = fill_time(bytes)?,
                FillStep::Method(1) => fills.0[1] = chunked_fill_time(bytes, false)?,
                FillStep::Method(_) => fills.0[2] = chunked_fill_time(bytes, true)?,
                FillStep::Uncounted => {
                    chunked_fill_time(bytes, false)?;
                }
            }
        }
        Ok(fills)
    }

    /// The physical limit from these samples and `more` of the same bytes (one
    /// fill before a run and one after, say): each method's mean, and the best
    /// of those, with its name. A mean of samples on both sides of what is
    /// compared with it, not their minimum, so that one lucky sample of six
    /// does not stand against one sample of the initialisation.
    pub fn best_mean_with(&self, more: &Fills) -> (u64, &'static str) {
        let means = core::array::from_fn::<u64, 3, _>(|i| (self.0[i] + more.0[i]) / 2);
        means
            .into_iter()
            .zip(FILL_METHODS)
            .min_by_key(|&(t, _)| t)
            .unwrap_or((means[0], FILL_METHODS[0]))
    }

    /// The best single method of these samples alone.
    pub fn best(&self) -> (u64, &'static str) {
        self.best_mean_with(self)
    }
}

/// The physical limit of one core filling `bytes` of fresh memory: the best of
/// the whole-region fill ([`fill_time`]), the chunked fill and the chunked
/// non-temporal fill, one sample each on fresh memory. Returns the time and
/// which it was.
pub fn limit_fill(bytes: u64) -> std::io::Result<(u64, &'static str)> {
    Ok(Fills::before_run(bytes)?.best())
}

/// Time for `threads` threads together to fill `bytes` of fresh memory, each
/// taking 2 MiB chunks in turn and faulting in and writing each one (ns).
pub fn parallel_fill_time(bytes: u64, threads: usize) -> std::io::Result<u64> {
    Ok(parallel_fill_split(bytes, threads)?.total_ns)
}

/// [`parallel_fill_time`], with the threads' mean time spent committing the
/// pages apart.
pub fn parallel_fill_split(bytes: u64, threads: usize) -> std::io::Result<FillSplit> {
    if bytes == 0 {
        return Ok(FillSplit::default());
    }
    let region = Region::reserve(bytes)?;
    let len = bytes as usize;
    let chunks = len.div_ceil(FILL_CHUNK);
    let threads = threads.clamp(1, chunks);
    let t = Instant::now();
    let results: Vec<std::io::Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let region = &region;
                s.spawn(move || {
                    let mut populate_ns = 0;
                    for c in (i..chunks).step_by(threads) {
                        let offset = c * FILL_CHUNK;
                        let n = FILL_CHUNK.min(len - offset);
                        let committing = Instant::now();
                        region.populate(offset, n)?;
                        populate_ns += committing.elapsed().as_nanos() as u64;
                        // SAFETY: each chunk belongs to one thread alone.
                        unsafe { region.fill(offset, n, 0) };
                    }
                    Ok(populate_ns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a fill thread panicked")))
            })
            .collect()
    });
    let total_ns = t.elapsed().as_nanos() as u64;
    let populate = results.into_iter().collect::<std::io::Result<Vec<u64>>>()?;
    Ok(FillSplit {
        total_ns,
        populate_ns: populate.iter().sum::<u64>() / threads as u64,
    })
}

#[cfg(test)]
mod fill_tests {
    use super::*;

    #[test]
    fn the_limit_is_the_best_of_three_honest_fills() {
        let bytes = 8 << 20;
        let (t, method) = limit_fill(bytes).unwrap();
        assert!(t > 0);
        assert!(FILL_METHODS.contains(&method));
        assert!(chunked_fill_time(bytes + 4096, true).unwrap() > 0);
        let split = chunked_fill_split(bytes, false).unwrap();
        assert!(split.populate_ns > 0 && split.populate_ns < split.total_ns);
        assert_eq!(split.writes_ns(), split.total_ns - split.populate_ns);
        assert_eq!(chunked_fill_split(0, false).unwrap(), FillSplit::default());
        assert!(parallel_fill_time(bytes, 2).unwrap() > 0);
        assert_eq!(parallel_fill_time(0, 2).unwrap(), 0);
        let split = parallel_fill_split(bytes, 2).unwrap();
        assert!(split.populate_ns > 0 && split.populate_ns < split.total_ns);
        // More threads than chunks: one chunk each.
        assert!(parallel_fill_time(4096, 64).unwrap() > 0);
    }

    #[test]
    fn the_chunked_fill_is_the_run_s_neighbour_and_the_non_temporal_fill_is_followed_by_an_ordinary_one(
    ) {
        for steps in [&BEFORE_RUN, &AFTER_RUN] {
            // Every method counted exactly once.
            for (method, name) in FILL_METHODS.iter().enumerate() {
                let counted = steps
                    .iter()
                    .filter(|&&s| s == FillStep::Method(method))
                    .count();
                assert_eq!(counted, 1, "{name} in {steps:?}");
            }
            // What follows the non-temporal fill is an ordinary fill nobody
            // counts.
            let nt = steps
                .iter()
                .position(|&s| s == FillStep::Method(2))
                .unwrap();
            assert_eq!(steps.get(nt + 1), Some(&FillStep::Uncounted), "{steps:?}");
        }
        // The chunked fill (the allocator's way of writing) is nearest the run
        // on both sides, and the non-temporal one farthest from it before.
        assert_eq!(BEFORE_RUN.last(), Some(&FillStep::Method(1)));
        assert_eq!(AFTER_RUN.first(), Some(&FillStep::Method(1)));
        assert_eq!(BEFORE_RUN.first(), Some(&FillStep::Method(2)));
        assert!(Fills::before_run(4 << 20).unwrap().0.iter().all(|&t| t > 0));
        assert!(Fills::after_run(4 << 20).unwrap().0.iter().all(|&t| t > 0));
    }

    #[test]
    fn the_limit_of_two_samples_is_the_best_method_by_its_mean() {
        let before = Fills([10, 30, 50]);
        let after = Fills([40, 20, 50]);
        // Means 25, 25, 50: the first of the best; no method's lucky sample (10)
        // is taken.
        assert_eq!(before.best_mean_with(&after), (25, "whole"));
        assert_eq!(Fills([9, 8, 7]).best(), (7, "chunked-nt"));
    }
}
