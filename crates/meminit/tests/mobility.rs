//! Mobility classes: placement that keeps the chunks of freed movable memory
//! wholly free (so that give-back returns them), steals from the other class
//! only when nothing else is left, and no allocation failing while the other
//! class has a free block.

mod common;

use common::{check_counts, with_allocator_chunked, Alloc, Ledger};
use meminit::{
    AllocError, AllocFlags, AllocRequest, Config, CpuId, FreeRequest, Granularity, MobilityClass,
    NodeId, Pfn, Strategy, ZoneType,
};

const MIB: u64 = 1 << 20;

/// A small deterministic generator (xorshift64*), so that failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn on_demand() -> Config {
    let mut c = Config::new(Strategy::OnDemand);
    c.give_back_reserve = 0;
    c
}

/// What the interleaving left: pages freed and the chunks they were in, and
/// what the two give-back passes returned.
struct Interleaved {
    freed: u64,
    freed_chunks: u64,
    given_back: u64,
    chunks_given_back: u64,
}

/// Fills most of 512 MiB with order-0 pages through two CPUs' caches, keeping
/// 1% at random (`hinted`: allocated without `MOVABLE`, the rest with it; not
/// hinted: everything without), frees the rest, and runs give-back twice.
fn interleave(hinted: bool) -> Interleaved {
    let layout = common::simple(512 * MIB, 128 * MIB);
    with_allocator_chunked(&layout, on_demand(), Granularity::Section, |a| {
        let usable: u64 = a.zones().map(|z| z.managed).sum();
        // Leave a little room: the kept pages need chunks of their own.
        let pages = usable - 8 * 1024;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut kept, mut short) = (Vec::new(), Vec::new());
        for i in 0..pages {
            let keep = rng.next() % 100 == 0;
            let flags = if hinted && !keep {
                AllocFlags::MOVABLE
            } else {
                AllocFlags::NONE
            };
            let cpu = CpuId(i as u32 % 2);
            let (pfn, _) = a
                .alloc_traced(AllocRequest::order(0).on(cpu).flags(flags))
                .unwrap_or_else(|e| panic!("allocation {i} of {pages}: {e}"));
            if keep {
                kept.push(pfn);
            } else {
                short.push(pfn);
            }
        }
        let freed = short.len() as u64;
        let chunks: std::collections::HashSet<u64> = short.iter().map(|p| p.0 >> 10).collect();
        for (i, pfn) in short.into_iter().enumerate() {
            a.free(FreeRequest::pfn(pfn).on(CpuId(i as u32 % 2)))
                .unwrap();
        }
        a.drain(None).unwrap_or(0);
        let mut ledger = Ledger::default();
        for &pfn in &kept {
            ledger.record(a, pfn, 0);
        }
        check_counts(a, &ledger.per_zone);
        let first = a.give_back();
        let second = a.give_back();
        check_counts(a, &ledger.per_zone);
        // The kept pages are untouched, and still theirs.
        for &pfn in &kept {
            assert_eq!(
                a.page(pfn).unwrap().mobility(),
                Some(MobilityClass::Unmovable)
            );
        }
        Interleaved {
            freed,
            freed_chunks: chunks.len() as u64,
            given_back: first.pages_given_back + second.pages_given_back,
            chunks_given_back: first.chunks_given_back + second.chunks_given_back,
        }
    })
}

#[test]
fn one_percent_kept_at_random_leaves_the_movable_chunks_wholly_free() {
    let hinted = interleave(true);
    let ratio = hinted.chunks_given_back as f64 / hinted.freed_chunks as f64;
    eprintln!(
        "hinted: {} of the {} chunks that held freed pages given back ({:.1}%); \
         {} pages given back, {} freed",
        hinted.chunks_given_back,
        hinted.freed_chunks,
        100.0 * ratio,
        hinted.given_back,
        hinted.freed,
    );
    assert!(ratio >= 0.95, "given back {ratio:.3} of the freed chunks");
    assert!(hinted.given_back as f64 >= 0.95 * hinted.freed as f64);
}

#[test]
fn without_hints_one_percent_kept_at_random_pins_almost_every_chunk() {
    let plain = interleave(false);
    let ratio = plain.chunks_given_back as f64 / plain.freed_chunks as f64;
    eprintln!(
        "without hints: {} of the {} chunks that held freed pages given back ({:.1}%)",
        plain.chunks_given_back,
        plain.freed_chunks,
        100.0 * ratio
    );
    assert!(ratio < 0.05, "given back {ratio:.3} of the freed chunks");
}

/// 1 to 8 MiB: chunk 0 holds 768 pages (the first MiB is not there), chunk 1
/// a whole 1024; one zone (DMA).
fn two_chunks() -> meminit::Layout {
    common::simple(8 * MIB, 4 * MIB)
}

fn alloc(a: &Alloc<'_>, flags: AllocFlags) -> Result<Pfn, AllocError> {
    a.alloc_traced(AllocRequest::order(0).flags(flags))
        .map(|(pfn, _)| pfn)
}

fn dma(a: &Alloc<'_>) -> meminit::ZoneStats {
    a.zone(NodeId(0), ZoneType::Dma).unwrap()
}

#[test]
fn a_class_fills_its_own_chunk_then_a_wholly_free_one_before_it_steals() {
    with_allocator_chunked(
        &two_chunks(),
        Config::new(Strategy::Eager),
        Granularity::Section,
        |a| {
            let chunk = |p: Pfn| p.0 >> 10;
            // The first movable page makes a wholly free chunk movable.
            let m = alloc(a, AllocFlags::MOVABLE).unwrap();
            assert_eq!(a.chunk_use(m).class(), Some(MobilityClass::Movable));
            assert_eq!(a.chunk_use(m).pages(), 1);
            // An unmovable page goes to the other chunk, not among movable pages.
            let u = alloc(a, AllocFlags::NONE).unwrap();
            assert_ne!(chunk(u), chunk(m));
            assert_eq!(a.chunk_use(u).class(), Some(MobilityClass::Unmovable));
            // Both classes fill their own chunks: no steal while either has room.
            let mut held = vec![m, u];
            loop {
                let z = dma(a);
                if z.free_whole > 0 || z.free_by_class.iter().all(|&f| f > 0) {
                    let flags = if held.len() % 2 == 0 {
                        AllocFlags::MOVABLE
                    } else {
                        AllocFlags::NONE
                    };
                    let p = alloc(a, flags).unwrap();
                    let class = flags.class();
                    // Until a class's chunk is full, it serves from its own.
                    if z.free_by_class[class as usize] > 0 {
                        assert_eq!(a.chunk_use(p).class(), Some(class));
                    }
                    held.push(p);
                } else {
                    break;
                }
            }
            assert_eq!(dma(a).steals, 0);
            // One class ran out; the other still has pages. Its class steals the
            // largest block the other has, and the chunk keeps its class.
            let z = dma(a);
            let (empty, full) = if z.free_by_class[0] == 0 {
                (MobilityClass::Unmovable, MobilityClass::Movable)
            } else {
                (MobilityClass::Movable, MobilityClass::Unmovable)
            };
            let flags = match empty {
                MobilityClass::Movable => AllocFlags::MOVABLE,
                MobilityClass::Unmovable => AllocFlags::NONE,
            };
            let stolen = alloc(a, flags).unwrap();
            assert_eq!(a.chunk_use(stolen).class(), Some(full));
            assert_eq!(a.page(stolen).unwrap().mobility(), Some(empty));
            assert_eq!(dma(a).steals, 1);
            held.push(stolen);
            // Everything goes back: both chunks wholly free again.
            for p in held {
                a.free(p).unwrap();
            }
            let z = dma(a);
            assert_eq!((z.free_whole, z.free), (768 + 1024, 768 + 1024));
            assert_eq!(a.miscounted_chunks(), 0);
            common::check_fully_coalesced(a);
        },
    );
}

/// Fills the zone with movable pages, then frees `keep_free` of them (every
/// other one from the start), directly or on `cpu`.
fn fill_movable(a: &Alloc<'_>, free_on: Option<CpuId>, keep_free: usize) -> Vec<Pfn> {
    let mut held = Vec::new();
    while let Ok(p) = alloc(a, AllocFlags::MOVABLE | AllocFlags::NO_GROW) {
        held.push(p);
    }
    assert_eq!(dma(a).free, 0);
    let freed: Vec<Pfn> = (0..keep_free).map(|i| held.remove(i)).collect();
    for p in freed {
        match free_on {
            Some(cpu) => a.free(FreeRequest::pfn(p).on(cpu)).map(drop).unwrap(),
            None => a.free(p).map(drop).unwrap(),
        }
    }
    held
}

#[test]
fn no_out_of_memory_while_the_other_class_has_a_free_block() {
    for (free_on, alloc_on) in [
        (None, None),
        // The free block sits in CPU 1's movable stock; the unmovable
        // allocation on CPU 0 finds it only by draining.
        (Some(CpuId(1)), Some(CpuId(0))),
        (Some(CpuId(0)), Some(CpuId(0))),
    ] {
        for no_grow in [false, true] {
            with_allocator_chunked(
                &two_chunks(),
                Config::new(Strategy::Eager),
                Granularity::Section,
                |a| {
                    let mut held = fill_movable(a, free_on, 3);
                    let flags = if no_grow {
                        AllocFlags::NO_GROW
                    } else {
                        AllocFlags::NONE
                    };
                    for i in 0..3 {
                        let (p, _) = a
                            .alloc_traced(AllocRequest::order(0).on_cpu(alloc_on).flags(flags))
                            .unwrap_or_else(|e| {
                                panic!("{free_on:?} {alloc_on:?} no_grow {no_grow}: {i}: {e}")
                            });
                        assert_eq!(a.chunk_use(p).class(), Some(MobilityClass::Movable));
                        held.push(p);
                    }
                    assert!(dma(a).steals >= 1);
                    let after =
                        a.alloc_traced(AllocRequest::order(0).on_cpu(alloc_on).flags(flags));
                    assert!(
                        matches!(after, Err(AllocError::OutOfMemory { .. })),
                        "{after:?}"
                    );
                    for p in held {
                        a.free(p).unwrap();
                    }
                    common::check_fully_coalesced(a);
                },
            );
        }
    }
}

#[test]
fn a_no_grow_allocation_steals_rather_than_fail_with_memory_left_to_initialise() {
    // On demand: the second chunk is never initialised, since NO_GROW fills
    // only the first.
    with_allocator_chunked(&two_chunks(), on_demand(), Granularity::Section, |a| {
        let first = alloc(a, AllocFlags::MOVABLE).unwrap();
        let mut held = fill_movable(a, None, 1);
        held.push(first);
        assert!(dma(a).uninitialised > 0);
        let p = alloc(a, AllocFlags::NO_GROW).expect("steals the free movable page");
        assert_eq!(dma(a).steals, 1);
        held.push(p);
        // Only growing would serve now.
        let err = alloc(a, AllocFlags::NO_GROW).unwrap_err();
        assert!(matches!(err, AllocError::WouldGrow { .. }), "{err:?}");
        // Growth comes before stealing: a plain allocation initialises the
        // second chunk and takes it, whole, for its class.
        let grown = alloc(a, AllocFlags::NONE).unwrap();
        assert_eq!(a.chunk_use(grown).class(), Some(MobilityClass::Unmovable));
        assert_eq!(dma(a).steals, 1);
        held.push(grown);
        let mut ledger = Ledger::default();
        for &p in &held {
            ledger.record(a, p, 0);
        }
        check_counts(a, &ledger.per_zone);
        for p in held {
            a.free(p).unwrap();
        }
        assert_eq!(a.miscounted_chunks(), 0);
    });
}
