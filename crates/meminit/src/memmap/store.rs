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

/// Descriptors (16, 1 KiB) that [`cached`] stores one by one before it copies:
/// the distance between the copy's source and destination.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const SEED: usize = 16;

/// [`descriptors`] with ordinary stores. On x86-64 the first 16 descriptors
/// (1 KiB) are stored one by one and the rest written by a single `rep movsb`
/// from the run's start to 1 KiB further on: a forward copy between
/// overlapping ranges, which repeats the seed to the end of the run, each byte
/// read 1 KiB after it was written, so from L1. Its fast-string stores write
/// whole lines without reading them first, as `memset`'s `rep stosb` does.
///
/// Measured on the project's machine (Intel, 32 MiB written 64 KiB at a time
/// right after each 2 MiB was populated, 21 interleaved rounds, two
/// invocations, median µs): `rep stosb` (memset) 822 / 828, this copy 826 /
/// 849, the same from a 4 KiB seed 830 / 860, doubling copies from a 4 KiB
/// seed (4, 8, 16, 32 KiB; what it did before) 898 / 895, 16-byte stores alone
/// 975 / 990; a 64-byte seed (the copy's distance one line) 1,582
/// (`examples/pattern_writes.rs` in meminit-host). The distance is not a
/// multiple of 4 KiB: users of some AMD Zen processors reported `rep movsb`
/// running slowly when `(dst - src) & 0xfff` is small, zero included (the
/// thread on glibc bug 30994 in Apache OpenDAL issue 3665); not measured
/// here.
///
/// Elsewhere, and under Miri, every descriptor is stored.
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
        if count > seeded {
            debug_assert_eq!(seeded, SEED);
            // SAFETY: `rep movsb` moves `rcx` bytes one after another, upwards
            // (the direction flag is clear on entry to an `asm!` block, Rust's
            // rules), from `first` to `first + seeded` descriptors: every byte
            // it writes lies in the caller's descriptors (`seeded + (count -
            // seeded) = count`; valid for writes and no one else's, the
            // caller's promise), and every byte it reads lies in them too,
            // `seeded` descriptors below the byte it goes to, so already written
            // (by the seed or by this copy). An overlapping forward `rep movsb`
            // has the result of the byte-by-byte loop (Intel SDM vol. 2, MOVS
            // and REP: each iteration moves one element and steps both
            // pointers), which repeats the seed; fast-string operation changes
            // its speed, not its result. It changes no flags and touches no
            // stack. The asm is not `nomem`, so the compiler keeps the seed's
            // stores before it. Its stores are not reordered with later stores
            // (Intel SDM vol. 3A, "Memory-Ordering Model for String Operations
            // on Write-Back Memory"; Linux relies on the same when it publishes
            // data copied with `rep movsb` by a release store), so the `Release`
            // that publishes the chunk orders them as it does ordinary stores.
            unsafe {
                core::arch::asm!(
                    "rep movsb",
                    inout("rcx") (count - seeded) * core::mem::size_of::<Page>() => _,
                    inout("rsi") first => _,
                    inout("rdi") first.add(seeded) => _,
                    options(nostack, preserves_flags),
                );
            }
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
