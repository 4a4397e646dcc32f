//! How fast a 64-byte pattern (a descriptor template) can be written over
//! memory that was just populated, beside `memset`'s `rep stosb`: the
//! measurement behind the choice of stores in `meminit`'s `memmap/store.rs`.
//!
//! For each method, 32 MiB in a fresh region, each 2 MiB populated and then
//! written 64 KiB at a time (a chunk's memmap), only the writes timed; methods
//! rotate from round to round, each after an ordinary fill of the same bytes.
//!
//! `cargo run --release -p meminit-host --example pattern_writes [ROUNDS]`
//! (21 by default; x86-64 only). Prints min / median / max in microseconds.

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;

    use meminit_host::region::Region;

    const SECTION: usize = 2 << 20;
    const RUN: usize = 64 << 10;
    const BYTES: usize = 32 << 20;
    let methods: [(&str, Write); 6] = [
        ("rep stosb (memset)", stosb),
        ("1 KiB seed, overlapping copy", seed_1k_copy),
        ("4 KiB seed, overlapping copy", seed_4k_copy),
        ("4 KiB seed, doubling copies", doubling),
        ("16-byte stores", seed),
        ("64-byte seed, overlapping copy", seed_64_copy),
    ];
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(21)
        .max(1);
    let run = |write: Write| -> std::io::Result<u64> {
        let region = Region::reserve(BYTES as u64)?;
        let mut ns = 0;
        for offset in (0..BYTES).step_by(SECTION) {
            region.populate(offset, SECTION)?;
            let t = Instant::now();
            for run in (offset..offset + SECTION).step_by(RUN) {
                // SAFETY: `run..run + RUN` lies inside the region, which is
                // this closure's alone, and is 64-byte aligned; RUN (64 KiB)
                // is a multiple of 64 and above every method's seed (at most
                // 4 KiB), as `seeded_copy` and `doubling` require.
                unsafe { write(region.base().as_ptr().add(run), RUN) };
            }
            ns += t.elapsed().as_nanos() as u64;
        }
        Ok(ns)
    };
    let mut times = vec![Vec::new(); methods.len()];
    for round in 0..rounds {
        for k in 0..methods.len() {
            let m = (k + round) % methods.len();
            run(methods[0].1)?;
            times[m].push(run(methods[m].1)? / 1000);
        }
    }
    println!("32 MiB, 64 KiB at a time after each 2 MiB populate, {rounds} rounds; µs");
    for ((name, _), t) in methods.iter().zip(&mut times) {
        t.sort_unstable();
        println!(
            "  {name:32} {} / {} / {}",
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
    Ok(())
}

/// Writes `n` bytes at `p`.
#[cfg(target_arch = "x86_64")]
type Write = unsafe fn(*mut u8, usize);

/// The template of a fresh descriptor's first 16 bytes, then two more words of
/// all ones, then zeroes, as 16-byte stores over `n` bytes.
///
/// # Safety
///
/// `p..p + n` must be valid for writes, 16-byte aligned, and no one else's.
#[cfg(target_arch = "x86_64")]
unsafe fn seed(p: *mut u8, n: usize) {
    use std::arch::x86_64::{__m128i, _mm_set_epi64x, _mm_setzero_si128, _mm_store_si128};
    // SAFETY: SSE2 is part of x86-64; every store is aligned and inside
    // `p..p + n` (the caller's promise; n is a multiple of 64 here).
    unsafe {
        let words = [
            _mm_set_epi64x(-1, 0x0000_0001_0000_0003),
            _mm_set_epi64x(0, -1),
            _mm_setzero_si128(),
            _mm_setzero_si128(),
        ];
        for line in 0..n / 64 {
            let q = p.add(line * 64).cast::<__m128i>();
            for (i, w) in words.iter().enumerate() {
                _mm_store_si128(q.add(i), *w);
            }
        }
    }
}

/// `rep movsb` of `n` bytes from `src` to `dst`, upwards.
///
/// # Safety
///
/// Both ranges valid (for reads, for writes), `dst` no one else's; they may
/// overlap only with `src` below `dst`, each byte then read after it was
/// written.
#[cfg(target_arch = "x86_64")]
unsafe fn movsb(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's promises; the direction flag is clear on entry to
    // an `asm!` block; `rep movsb` changes no flags and touches no stack.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags),
        );
    }
}

/// A `seed`-byte seed, then one overlapping copy that repeats it.
///
/// # Safety
///
/// As for [`seed`], with `seed_bytes <= n`.
#[cfg(target_arch = "x86_64")]
unsafe fn seeded_copy(p: *mut u8, n: usize, seed_bytes: usize) {
    // SAFETY: the caller's promises; the copy reads each byte `seed_bytes`
    // after it was written.
    unsafe {
        seed(p, seed_bytes);
        movsb(p, p.add(seed_bytes), n - seed_bytes);
    }
}

/// [`seeded_copy`] from a 1 KiB seed.
///
/// # Safety
///
/// As for [`seeded_copy`].
#[cfg(target_arch = "x86_64")]
unsafe fn seed_1k_copy(p: *mut u8, n: usize) {
    // SAFETY: the caller's promises.
    unsafe { seeded_copy(p, n, 1024) }
}

/// [`seeded_copy`] from a 4 KiB seed.
///
/// # Safety
///
/// As for [`seeded_copy`].
#[cfg(target_arch = "x86_64")]
unsafe fn seed_4k_copy(p: *mut u8, n: usize) {
    // SAFETY: the caller's promises.
    unsafe { seeded_copy(p, n, 4096) }
}

/// [`seeded_copy`] from a one-line seed: the copy's distance 64 bytes.
///
/// # Safety
///
/// As for [`seeded_copy`].
#[cfg(target_arch = "x86_64")]
unsafe fn seed_64_copy(p: *mut u8, n: usize) {
    // SAFETY: the caller's promises.
    unsafe { seeded_copy(p, n, 64) }
}

/// A 4 KiB seed, then copies of what is written, doubling.
///
/// # Safety
///
/// As for [`seed`], with `n >= 4096`.
#[cfg(target_arch = "x86_64")]
unsafe fn doubling(p: *mut u8, n: usize) {
    // SAFETY: the caller's promises; each copy's source (`p..p + k`) is
    // written and does not overlap its destination (`p + done..`, `k <= done`).
    unsafe {
        seed(p, 4096);
        let mut done = 4096;
        while done < n {
            let k = (n - done).min(done);
            movsb(p, p.add(done), k);
            done += k;
        }
    }
}

/// `rep stosb` of zeroes over `n` bytes at `p`.
///
/// # Safety
///
/// As for [`seed`].
#[cfg(target_arch = "x86_64")]
unsafe fn stosb(p: *mut u8, n: usize) {
    // SAFETY: the caller's promises; as for `movsb`.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") p => _,
            in("al") 0u8,
            options(nostack, preserves_flags),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("pattern_writes measures x86-64 string instructions; nothing to do here");
}
