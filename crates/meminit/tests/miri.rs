//! Small machines for Miri: every unsafe path of the memmap (populate, descriptor
//! writes, published reads), the buddy lists over it, and threads racing a claim.
//! Run with `cargo +nightly miri test -p meminit --lib --test miri`; they also run
//! as ordinary tests.

mod common;

use common::*;
use meminit::NodeId;
use meminit::{
    AllocRequest, Config, CpuId, FreeRequest, Granularity, LayoutBuilder, PageState, Pfn,
    RangeKind, Strategy, MAX_ORDER,
};

const MIB: u64 = 1 << 20;

fn small() -> meminit::Layout {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
        .add(0x100000, 0x300000, RangeKind::Usable, NodeId(0))
        .add(0x300000, 0x301000, RangeKind::Reserved, NodeId(0))
        .add(0x301000, 8 * MIB, RangeKind::Usable, NodeId(0))
        .add(8 * MIB, 12 * MIB, RangeKind::Usable, NodeId(1));
    b.build().unwrap()
}

#[test]
fn every_strategy_allocates_frees_and_coalesces() {
    let l = small();
    for strategy in Strategy::ALL {
        with_allocator(&l, strategy, |a| {
            let mut held = Vec::new();
            for order in [0, 1, 3, MAX_ORDER, 2, 0] {
                held.push((a.alloc(AllocRequest::order(order)).unwrap(), order));
            }
            assert_eq!(a.page(Pfn(0x300)).unwrap().state(), PageState::Reserved);
            for (p, o) in held {
                a.free(FreeRequest::pfn(p).order(o)).unwrap();
                assert!(a.free(FreeRequest::pfn(p).order(o)).is_err());
            }
            run_workers(a);
            init_all(a);
            check_fully_coalesced(a);
        });
    }
}

#[test]
fn threads_race_to_initialise_the_same_sections() {
    let l = small();
    with_allocator(&l, Strategy::Deferred, |a| {
        std::thread::scope(|s| {
            s.spawn(|| a.run_deferred_worker(NodeId(0)));
            s.spawn(|| a.run_deferred_worker(NodeId(1)));
            s.spawn(|| {
                let p = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
                a.free(FreeRequest::pfn(p).order(0)).unwrap();
            });
            s.spawn(|| a.page_or_init(Pfn(0x400)).map(|p| p.state()).unwrap());
        });
        check_all_free(a);
    });
}

/// One 16 MiB section of four chunks, holes and a reserved page in the first,
/// the last chunk on node 1: start-up writes the section as one run across chunk
/// boundaries, and node 0's worker its three chunks as one, while an allocation
/// grows node 1's chunk and a look-up waits for the run.
#[test]
fn runs_of_chunks_are_written_whole_and_read_after_their_publish() {
    let mut b = LayoutBuilder::new();
    b.section_size(16 * MIB)
        .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
        .add(0x100000, 0x300000, RangeKind::Usable, NodeId(0))
        .add(0x300000, 0x301000, RangeKind::Reserved, NodeId(0))
        .add(0x301000, 12 * MIB, RangeKind::Usable, NodeId(0))
        .add(12 * MIB, 16 * MIB, RangeKind::Usable, NodeId(1));
    let l = b.build().unwrap();
    for granularity in [Granularity::Section, Granularity::Chunk] {
        with_allocator_chunked(&l, Config::new(Strategy::Eager), granularity, |a| {
            assert_eq!(a.page(Pfn(0x300)).unwrap().state(), PageState::Reserved);
            check_all_free(a);
        });
        with_allocator_chunked(&l, Config::new(Strategy::Deferred), granularity, |a| {
            std::thread::scope(|s| {
                s.spawn(|| a.run_deferred_worker(NodeId(0)));
                s.spawn(|| {
                    let p = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
                    a.free(FreeRequest::pfn(p).order(0)).unwrap();
                });
                s.spawn(|| a.page_or_init(Pfn(0x900)).map(|p| p.state()).unwrap());
            });
            run_workers(a);
            check_all_free(a);
        });
    }
}

/// CPUs allocating through their caches, freeing each other's blocks, while a
/// remote drain runs: the per-CPU paths over the memmap.
#[test]
fn cpus_allocate_and_free_through_their_caches() {
    let l = small();
    with_allocator(&l, Strategy::OnDemand, |a| {
        let handed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for cpu in 0..2u32 {
                let handed = &handed;
                s.spawn(move || {
                    for order in [0, 1, 0, 3, 0, 9] {
                        let p = a.alloc(AllocRequest::order(order).on(CpuId(cpu))).unwrap();
                        let mine = a
                            .alloc(AllocRequest::order(0).on(CpuId(cpu)).node(NodeId(1)))
                            .unwrap();
                        a.free(FreeRequest::pfn(mine).on(CpuId(cpu)).order(0))
                            .unwrap();
                        handed.lock().unwrap().push((p, order));
                        let theirs = handed.lock().unwrap().pop();
                        if let Some((q, o)) = theirs {
                            a.free(FreeRequest::pfn(q).on(CpuId(cpu)).order(o)).unwrap();
                        }
                    }
                });
            }
            s.spawn(|| a.drain(Some(CpuId(0))).unwrap());
        });
        for (p, o) in handed.into_inner().unwrap() {
            a.free(FreeRequest::pfn(p).order(o)).unwrap();
        }
        check_counts(a, &Default::default());
        init_all(a);
        check_fully_coalesced(a);
    });
}

/// Give-back and reporting: chunks go back, their descriptors are written again
/// with atomic stores over what a stale reference could still see, and blocks are
/// isolated and put back.
#[test]
fn chunks_given_back_are_written_again() {
    let l = small();
    let mut config = meminit::Config::new(Strategy::OnDemand);
    config.give_back_reserve = 0;
    with_allocator_chunked(&l, config, meminit::Granularity::Section, |a| {
        let p = a
            .alloc(AllocRequest::order(MAX_ORDER).node(NodeId(1)))
            .unwrap();
        let stale = a.page(p).unwrap();
        a.free(FreeRequest::pfn(p).order(MAX_ORDER)).unwrap();
        assert_eq!(a.give_back().chunks_marked, 1);
        let stats = a.report_free(&mut meminit::NoReporter).unwrap();
        assert_eq!(stats.chunks_given_back, 1);
        assert_eq!(stats.pages, 1 << MAX_ORDER, "reported first");
        assert!(a.page(p).is_err(), "uninitialised again");
        let q = a
            .alloc(AllocRequest::order(MAX_ORDER).node(NodeId(1)))
            .unwrap();
        assert_eq!(q, p);
        // The reference taken before give-back reads the new descriptor.
        assert_eq!(stale.state(), PageState::Allocated { order: MAX_ORDER });
        a.free(FreeRequest::pfn(q).order(MAX_ORDER)).unwrap();
        check_counts(a, &Default::default());
    });
}

/// The embedder's per-page data: typed, zero on first use, theirs while the page
/// is allocated, zero again once the chunk was given back and initialised anew.
#[test]
fn per_page_data_is_the_embedders() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    // Words only: the allocator zeroes the area with 64-bit stores, and Miri does
    // not model mixed-size atomic accesses (Rust allows them when they do not
    // race; the doc example uses 32-bit fields).
    #[repr(C)]
    struct KernelPage {
        refcount: AtomicU64,
        flags: AtomicU64,
        mapping: AtomicU64,
        lru: [AtomicU64; 2],
    }
    // SAFETY: atomic integers only, 40 bytes, 8-byte aligned.
    unsafe impl meminit::PageMeta for KernelPage {}

    let l = small();
    let mut config = meminit::Config::new(Strategy::OnDemand);
    config.give_back_reserve = 0;
    with_allocator_chunked(&l, config, meminit::Granularity::Section, |a| {
        let p = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
        let meta: &KernelPage = a.page(p).unwrap().meta();
        assert_eq!(meta.refcount.load(Relaxed), 0);
        meta.refcount.store(1, Relaxed);
        meta.mapping.store(0xffff_8000_dead_b000, Relaxed);
        meta.lru[1].store(7, Relaxed);
        // The same bytes, word by word.
        let page = a.page(p).unwrap();
        assert_eq!(page.user_word(0).unwrap().load(Relaxed), 1);
        assert_eq!(
            page.user_word(2).unwrap().load(Relaxed),
            0xffff_8000_dead_b000
        );
        assert_eq!(page.user_word(4).unwrap().load(Relaxed), 7);
        assert!(page.user_word(meminit::USER_WORDS).is_none());
        // Allocating and freeing other pages leaves it alone.
        let q = a.alloc(AllocRequest::order(3).node(NodeId(1))).unwrap();
        a.free(FreeRequest::pfn(q).order(3)).unwrap();
        assert_eq!(meta.flags.load(Relaxed), 0);
        assert_eq!(meta.refcount.load(Relaxed), 1);
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
        a.give_back();
        assert_eq!(a.give_back().chunks_given_back, 1);
        let p = a.alloc(AllocRequest::order(0).node(NodeId(1))).unwrap();
        let meta: &KernelPage = a.page(p).unwrap().meta();
        assert_eq!(
            meta.refcount.load(Relaxed),
            0,
            "zeroed when initialised anew"
        );
        assert_eq!(meta.mapping.load(Relaxed), 0);
        a.free(FreeRequest::pfn(p).order(0)).unwrap();
    });
}

#[test]
fn start_up_in_place_builds_the_layout_there_and_drops_on_failure() {
    use meminit::{Allocator, Config, InitError, SliceBacking};
    use std::mem::MaybeUninit;
    let l = small();
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(0x100000, 12 * MIB, RangeKind::Usable, NodeId(0));
    for strategy in Strategy::ALL {
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&l);
        let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
        let a = Allocator::build_in_place(
            &mut slot,
            &b,
            |_| Ok(SliceBacking::new(&mut lent.memmap)),
            &lent.slots,
            &lent.cpus,
            Config::new(strategy),
        )
        .unwrap();
        let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
        a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
        assert_eq!(a.layout().usable_pages(), (12 * MIB - MIB) / 4096);
        // SAFETY: started above; `a` is not used after this.
        unsafe { slot.assume_init_drop() };
    }
    // Eager start-up over a memmap too short: the backing fails, the allocator
    // written into the slot is dropped there.
    let lent = Lent::<parking_lot::RawMutex>::for_layout(&l);
    let err = start_in_place_over_a_short_memmap(&l, &lent, 16);
    assert!(matches!(err, InitError::Backing(_)), "{err}");
}
