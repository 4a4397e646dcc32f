//! The physical limit of memmap initialisation: the best honest ways to write the
//! same bytes on fresh memory, one core or all of them, measured on this host.
//!
//! Initialisation is compared with these fills in the report: a whole-region fill
//! (fault everything in, then write), a fill a section's memmap (2 MiB) at a time
//! while it is in cache, the same with non-temporal stores, and all threads filling
//! at once beside deferred initialisation, run in one fixed sequence around
//! the run they are compared with ([`AROUND_RUN`]), since each leaves the host's
//! free pages warmer or colder for the next. This module only measures; it
//! knows nothing of the allocator.

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
    /// Of which committing the memory, `MADV_POPULATE_WRITE` (ns), for a fill
    /// by several threads the mean of theirs; the rest is the writes.
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
    let split = FillSplit {
        total_ns: t.elapsed().as_nanos() as u64,
        populate_ns,
    };
    if nontemporal {
        // Not timed: written again with ordinary stores before the host takes
        // the pages back. Non-temporal stores leave them out of cache, and the
        // host zeroes such pages more slowly for whatever populates them next,
        // for a while: the measurement beside this fill would pay for it.
        // SAFETY: the region is ours alone.
        unsafe { region.fill(0, len, 0) };
    }
    Ok(split)
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

/// One sample of each honest one-core fill of the same bytes on fresh memory,
/// and of the parallel fill where it was measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fills {
    /// Each fill's time (ns), in [`FILL_METHODS`] order: the whole-region fill
    /// ([`fill_time`]), the chunked fill and the chunked non-temporal fill.
    pub times: [u64; 3],
    /// Of the chunked fill's time, the part spent committing the pages (ns):
    /// the rest is its writes.
    pub chunked_populate_ns: u64,
    /// The parallel fill ([`parallel_fill_split`]), if it was one of the
    /// steps.
    pub parallel: Option<FillSplit>,
}

/// One step of the measurement around a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillStep {
    /// [`fill_time`]: `FILL_METHODS[0]`.
    Whole,
    /// [`chunked_fill_time`] with ordinary stores: `FILL_METHODS[1]`.
    Chunked,
    /// [`chunked_fill_time`] with non-temporal stores: `FILL_METHODS[2]`.
    ChunkedNonTemporal,
    /// The run the fills are compared with: the caller's.
    Run,
    /// [`parallel_fill_time`] with the run's threads.
    Parallel,
    /// An ordinary chunked fill, not counted: it leaves the host's free pages
    /// as an ordinary fill leaves them, whatever the step before freed.
    Ordinary,
}

/// The whole measurement around a run, in order: [`Fills::before_run`] runs
/// the steps before [`FillStep::Run`], the caller the run, and
/// [`Fills::after_run`] the steps after it.
///
/// The chunked fill, which writes as the allocator does, is the run's
/// neighbour on both sides (after the run, behind an uncounted ordinary fill:
/// the run ends with its workload, which may have written and freed far more
/// memory than the memmap), and the mean of those two is what the run is
/// compared with; the parallel fill follows the chunked one after the run, as
/// the deferred workers followed the chunked one before it (with start-up and
/// the boot allocations between). Each counted step but the first follows an
/// ordinary fill of the same bytes; the first follows the previous run's last
/// step, a non-temporal fill that cleans up after itself (see
/// [`chunked_fill_split`]).
///
/// Order matters because the host recycles the pages a fill frees for
/// whatever populates next, and zeroes them much faster while they are still
/// in cache. The first order used (whole, chunked, non-temporal, an uncounted
/// ordinary fill, then the run) put the run right after the non-temporal
/// fill's pages, out of cache, and the chunked fill it was compared with
/// before them: the run looked twice as slow as it is (`docs/measuring.md`,
/// "Writing descriptors against the fill").
pub const AROUND_RUN: [FillStep; 9] = [
    FillStep::ChunkedNonTemporal,
    FillStep::Whole,
    FillStep::Chunked,
    FillStep::Run,
    FillStep::Ordinary,
    FillStep::Chunked,
    FillStep::Parallel,
    FillStep::Whole,
    FillStep::ChunkedNonTemporal,
];

/// [`AROUND_RUN`] split at the run: the steps before it and those after (all
/// of them after, were there no run).
fn around_run() -> (&'static [FillStep], &'static [FillStep]) {
    match AROUND_RUN.iter().position(|&s| s == FillStep::Run) {
        Some(run) => (&AROUND_RUN[..run], &AROUND_RUN[run + 1..]),
        None => (&[], &AROUND_RUN),
    }
}

impl Fills {
    /// The steps of [`AROUND_RUN`] before the run, on `bytes` of fresh memory
    /// (`threads` for the parallel fill, if one is among them).
    pub fn before_run(bytes: u64, threads: usize) -> std::io::Result<Fills> {
        Self::steps(bytes, threads, around_run().0)
    }

    /// The steps of [`AROUND_RUN`] after the run.
    pub fn after_run(bytes: u64, threads: usize) -> std::io::Result<Fills> {
        Self::steps(bytes, threads, around_run().1)
    }

    /// The fills of `steps`, in order (a [`FillStep::Run`] among them is the
    /// caller's, and skipped here).
    fn steps(bytes: u64, threads: usize, steps: &[FillStep]) -> std::io::Result<Fills> {
        let mut fills = Fills::default();
        for step in steps {
            match step {
                FillStep::Whole => fills.times[0] = fill_time(bytes)?,
                FillStep::Chunked => {
                    let split = chunked_fill_split(bytes, false)?;
                    fills.times[1] = split.total_ns;
                    fills.chunked_populate_ns = split.populate_ns;
                }
                FillStep::ChunkedNonTemporal => fills.times[2] = chunked_fill_time(bytes, true)?,
                FillStep::Parallel => fills.parallel = Some(parallel_fill_split(bytes, threads)?),
                FillStep::Ordinary => {
                    chunked_fill_time(bytes, false)?;
                }
                FillStep::Run => {}
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
        let means = core::array::from_fn::<u64, 3, _>(|i| (self.times[i] + more.times[i]) / 2);
        means
            .into_iter()
            .zip(FILL_METHODS)
            .min_by_key(|&(t, _)| t)
            .unwrap_or((means[0], FILL_METHODS[0]))
    }

    /// The chunked fill's writes alone (its time less its commits), the mean of
    /// these samples and `more` (ns): what the allocator's own work, outside
    /// the backing's populate, compares with.
    pub fn chunked_writes_mean_with(&self, more: &Fills) -> u64 {
        let writes = |f: &Fills| f.times[1].saturating_sub(f.chunked_populate_ns);
        (writes(self) + writes(more)) / 2
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
    Ok(Fills::before_run(bytes, 1)?.best())
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
    fn the_chunked_fill_is_the_run_s_neighbour_and_every_method_is_counted_on_both_sides() {
        let (before, after) = around_run();
        assert_eq!(
            AROUND_RUN.iter().filter(|&&s| s == FillStep::Run).count(),
            1
        );
        // Every one-core method once on each side, so that each has a mean of
        // a sample before and one after.
        for method in [
            FillStep::Whole,
            FillStep::Chunked,
            FillStep::ChunkedNonTemporal,
        ] {
            for side in [before, after] {
                assert_eq!(
                    side.iter().filter(|&&s| s == method).count(),
                    1,
                    "{method:?}"
                );
            }
        }
        // The chunked fill (the allocator's way of writing) is the run's
        // neighbour on both sides: right before it, and after it behind only
        // an uncounted ordinary fill (the run's workload may free much more
        // than the memmap).
        assert_eq!(before.last(), Some(&FillStep::Chunked));
        assert_eq!(after[..2], [FillStep::Ordinary, FillStep::Chunked]);
        // The parallel fill follows a chunked fill, as the workers do.
        let parallel = after.iter().position(|&s| s == FillStep::Parallel);
        assert_eq!(
            parallel.and_then(|p| p.checked_sub(1)).map(|p| after[p]),
            Some(FillStep::Chunked)
        );
        // Neither the run nor the chunked fill compared with it follows a
        // non-temporal fill directly (the whole fill may: that fill cleans
        // up after itself, and the whole fill's two samples have different
        // neighbours anyway).
        for pair in AROUND_RUN.windows(2) {
            if pair[0] == FillStep::ChunkedNonTemporal {
                assert_ne!(pair[1], FillStep::Run);
                assert_ne!(pair[1], FillStep::Chunked);
            }
        }
        for fills in [
            Fills::before_run(4 << 20, 2).unwrap(),
            Fills::after_run(4 << 20, 2).unwrap(),
        ] {
            assert!(fills.times.iter().all(|&t| t > 0), "{fills:?}");
            assert!(fills.chunked_populate_ns > 0 && fills.chunked_populate_ns < fills.times[1]);
        }
        assert!(Fills::after_run(4 << 20, 2).unwrap().parallel.is_some());
    }

    #[test]
    fn the_limit_of_two_samples_is_the_best_method_by_its_mean() {
        let fills = |times, chunked_populate_ns| Fills {
            times,
            chunked_populate_ns,
            parallel: None,
        };
        let before = fills([10, 30, 50], 20);
        let after = fills([40, 20, 50], 16);
        // Means 25, 25, 50: the first of the best; no method's lucky sample (10)
        // is taken.
        assert_eq!(before.best_mean_with(&after), (25, "whole"));
        assert_eq!(fills([9, 8, 7], 0).best(), (7, "chunked-nt"));
        // The chunked writes: (30 - 20 + 20 - 16) / 2.
        assert_eq!(before.chunked_writes_mean_with(&after), 7);
    }
}
