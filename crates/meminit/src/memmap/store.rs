//! Storing runs of fresh descriptors, whole descriptors (cache lines) at a time,
//! with the kind of store that suits where the memory is.
//!
//! - [`Stores::Cached`], ordinary stores, for memmap that `populate` has just
//!   written (a host's `MADV_POPULATE_WRITE` zeroes it, a hypervisor zeroes a
//!   guest page on its first touch): its lines are in this CPU's caches, and an
//!   ordinary store finds them there.
//! - [`Stores::Streaming`], non-temporal stores where the target has them, for
//!   memmap that may have sat untouched for long (mapped at start, or populated
//!   by another pass long ago): they write a whole line without first reading it
//!   for ownership, which saves the read an ordinary store makes of a line not in
//!   cache. x86-64 with SSE2 (every hosted x86-64 target) stores 16 bytes at a
//!   time with `movntdq`; x86-64 without SSE (a kernel target) 8 bytes at a time
//!   with `movnti`, which needs no SIMD state; anything else, and Miri, writes
//!   the words plainly.
//!
//! Measured on the project's machine (eager start-up on `container`, 32 MiB of
//! memmap, median of 15 interleaved rounds, with builds that used one kind of store
//! everywhere): after a populate that zeroed the memory, 16-byte ordinary stores
//! initialised it in 7.2 ms and non-temporal ones in 10.0 ms (a populate-and-fill
//! of the same bytes: 6.2 ms); on memory mapped long before, non-temporal stores
//! took 2.1 ms and ordinary ones 5.9 ms. `examples/descriptor_stores.rs` in
//! meminit-host measures the two cases as the allocator now writes them. A chunk's
//! descriptors are read back only where the free-list splice links a block's head
//! (one line per max-order block); the rest are next read when their pages are
//! allocated, usually long after.
//!
//! Nothing here decides which kind a run gets: the chunk writer does, from what
//! the backing says of its populate.

use crate::page::Page;

/// Which stores write a run of descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stores {
    /// Ordinary stores: the memory was just written by `populate`.
    Cached,
    /// Non-temporal stores where the target has them: the memory may not be in
    /// cache.
    Streaming,
}

/// Writes `count` descriptors from `first` on, each the eight words `words`, with
/// `stores`, and orders them (with `sfence` after non-temporal stores, which are
/// weakly ordered) before every later store of this thread: the `Release` store
/// that publishes the chunk (paired with the `Acquire` of every look-up) in
/// particular, or the one that gives the claim back if the writer is dropped.
///
/// # Safety
///
/// The `count` descriptors from `first` on must be valid for reads and writes
/// and 64-byte aligned, and nothing else may access them, or hold a reference
/// to them, meanwhile. (Ordinary stores read back the descriptors they have
/// just written, as the source of a copy.)
#[inline]
pub(super) unsafe fn descriptors(first: *mut Page, count: usize, words: [u64; 8], stores: Stores) {
    if stores == Stores::Streaming {
        // SAFETY: the caller's promises, passed on.
        unsafe { streaming(first, count, words) };
        return;
    }
    // SAFETY: the caller's promises, passed on.
    unsafe { cached(first, count, words) };
}

/// Descriptors a page of them (64, 4 KiB): the seed [`cached`] stores one by
/// one before it copies.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const SEED: usize = 64;

/// [`descriptors`] with ordinary stores. On x86-64 the first 64 descriptors
/// (a page of them) are stored one by one and the rest copied with `rep
/// movsb` from what is already written, doubling (4, 8, 16, 32 KiB for a 4 MiB
/// chunk's run), whose fast-string stores write whole lines without reading
/// them first, as `memset` does; elsewhere, and under Miri, every descriptor
/// is stored. Measured (`descriptor_stores`, eager start-up over
/// just-populated memmap, over a populate-and-fill of the same bytes, medians
/// of interleaved rounds), a page at a time against 16-byte stores alone: on
/// `server` 0.92 and 0.90 against 0.86 and 0.85; on `container` 0.91 / 0.90 /
/// 0.95 against 0.90 / 0.92 / 0.90, no difference within the noise. Doubling
/// against a page at a time (`meminit report --machine container --strategy
/// eager --runs 11`, pinned, alternating): 6.9 / 8.5 / 8.5 ms against 7.7 /
/// 9.7 / 9.5 ms.
///
/// # Safety
///
/// As for [`descriptors`].
#[inline]
unsafe fn cached(first: *mut Page, count: usize, words: [u64; 8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let seeded = count.min(SEED);
        // SAFETY: the first `seeded` of the caller's descriptors.
        unsafe { ordinary(first, seeded, words) };
        let mut done = seeded;
        while done < count {
            let n = (count - done).min(done);
            // SAFETY: `rep movsb` copies `n` descriptors (`rcx` bytes) from the
            // first `n` at `first` (written already; valid for reads, the
            // caller's promise) to the next `n` of the caller's descriptors
            // (`done + n <= count`, so inside them; valid for writes and no one
            // else's, also promised); the two do not overlap, since `n <= done`. The
            // direction flag is clear on entry to an `asm!` block (Rust's rules),
            // so it copies upwards; it changes no flags and touches no stack. Its
            // stores are not reordered with later stores (Intel SDM vol. 3A,
            // "Memory-Ordering Model for String Operations on Write-Back Memory";
            // Linux relies on the same when it publishes data copied with `rep
            // movsb` by a release store), so the `Release` that publishes the
            // chunk orders them as it does ordinary stores.
            unsafe {
                core::arch::asm!(
                    "rep movsb",
                    inout("rcx") n * core::mem::size_of::<Page>() => _,
                    inout("rsi") first => _,
                    inout("rdi") first.add(done) => _,
                    options(nostack, preserves_flags),
                );
            }
            done += n;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: the caller's promises, passed on.
    unsafe {
        ordinary(first, count, words)
    };
}

/// Stores `count` descriptors from `first` on, each the eight words `words`,
/// with ordinary stores: 16 bytes at a time where the target has SSE2.
///
/// # Safety
///
/// As for [`descriptors`].
#[inline]
unsafe fn ordinary(first: *mut Page, count: usize, words: [u64; 8]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
    // SAFETY: the caller's promises, passed on; ordinary stores are ordered
    // before this thread's later stores by the `Release` that publishes the
    // chunk.
    unsafe {
        sse2::<false>(first, count, words)
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2", not(miri))))]
    for i in 0..count {
        // SAFETY: inside one of the `count` descriptors, valid for writes and
        // aligned (the caller's promises) and not accessed by anyone else
        // meanwhile (also promised); a `Page` is eight words of integers with no
        // padding, so any eight words are valid bytes for it. Ordinary stores are
        // ordered before this thread's later stores by the `Release` that
        // publishes the chunk.
        unsafe { first.add(i).cast::<[u64; 8]>().write(words) };
    }
}

/// [`descriptors`] with non-temporal stores, where the target has them.
///
/// # Safety
///
/// As for [`descriptors`].
#[inline]
unsafe fn streaming(first: *mut Page, count: usize, words: [u64; 8]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
    // SAFETY: the caller's promises, passed on; `sse2` fences its
    // non-temporal stores.
    unsafe {
        sse2::<true>(first, count, words)
    };
    #[cfg(all(target_arch = "x86_64", not(target_feature = "sse2"), not(miri)))]
    // SAFETY: every 8-byte store is inside one of the `count` descriptors,
    // aligned, and no one else accesses them meanwhile (the caller's promises);
    // `movnti` and `sfence` use general registers only, so they need no SIMD
    // state and exist on every x86-64 processor. `sfence` makes the weakly
    // ordered non-temporal stores visible before any later store.
    unsafe {
        for i in 0..count {
            core::arch::asm!(
                "movnti [{at}], {w0}",
                "movnti [{at} + 8], {w1}",
                "movnti [{at} + 16], {w2}",
                "movnti [{at} + 24], {w3}",
                "movnti [{at} + 32], {w4}",
                "movnti [{at} + 40], {w5}",
                "movnti [{at} + 48], {w6}",
                "movnti [{at} + 56], {w7}",
                at = in(reg) first.add(i),
                w0 = in(reg) words[0],
                w1 = in(reg) words[1],
                w2 = in(reg) words[2],
                w3 = in(reg) words[3],
                w4 = in(reg) words[4],
                w5 = in(reg) words[5],
                w6 = in(reg) words[6],
                w7 = in(reg) words[7],
                options(nostack, preserves_flags),
            );
        }
        core::arch::asm!("sfence", options(nostack, preserves_flags));
    }
    #[cfg(any(not(target_arch = "x86_64"), miri))]
    // SAFETY: the caller's promises, passed on; no non-temporal stores here.
    unsafe {
        descriptors(first, count, words, Stores::Cached)
    };
}

/// Stores `count` descriptors from `first` on, each the eight words `words`,
/// 16 bytes at a time: with `movntdq` and then `sfence` if `STREAMING`, with
/// `movdqa` otherwise.
///
/// # Safety
///
/// As for [`descriptors`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
#[inline(always)]
unsafe fn sse2<const STREAMING: bool>(first: *mut Page, count: usize, words: [u64; 8]) {
    use core::arch::x86_64::{
        __m128i, _mm_set_epi64x, _mm_sfence, _mm_store_si128, _mm_stream_si128,
    };
    // SAFETY: SSE2 is enabled for this target (the cfg); every 16-byte store is
    // inside one of the `count` descriptors, aligned (the caller's promise), and
    // no one else accesses them meanwhile (also promised). `sfence` makes the
    // weakly ordered non-temporal stores visible before any later store.
    unsafe {
        let w = words.map(|w| w as i64);
        let lines = [
            _mm_set_epi64x(w[1], w[0]),
            _mm_set_epi64x(w[3], w[2]),
            _mm_set_epi64x(w[5], w[4]),
            _mm_set_epi64x(w[7], w[6]),
        ];
        let mut at = first.cast::<__m128i>();
        for _ in 0..count {
            for (k, &line) in lines.iter().enumerate() {
                if STREAMING {
                    _mm_stream_si128(at.add(k), line);
                } else {
                    _mm_store_si128(at.add(k), line);
                }
            }
            at = at.add(4);
        }
        if STREAMING {
            _mm_sfence();
        }
    }
}
