//! loom models of the chunk-claim and memmap-claim protocols (single chunks
//! and runs), of the grow path
//! racing a deferred worker, and of the allocator itself (per-CPU caches against
//! remote drains, an allocation's re-check against the last initialisation, the
//! depots' pushes and pops against a drain and against the last look before
//! `OutOfMemory`). They
//! drive the crate's own code, compiled against loom's atomics. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p meminit --release --test loom
//! ```
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use meminit::section::{ChunkState, SectionSlot, Sections};

/// Descriptors of a model section: written by the claimant only, read after Ready.
struct Memmap {
    cells: Vec<UnsafeCell<u32>>,
    writes: Vec<AtomicUsize>,
}

impl Memmap {
    fn new(n: usize) -> Self {
        Memmap {
            cells: (0..n).map(|_| UnsafeCell::new(0)).collect(),
            writes: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn write(&self, i: usize) {
        self.writes[i].fetch_add(1, Ordering::Relaxed);
        // Loom checks this write races with no read of the cell.
        self.cells[i].with_mut(|p| unsafe { *p = 0xd00d });
    }

    fn read(&self, i: usize) -> u32 {
        self.cells[i].with(|p| unsafe { *p })
    }
}

/// Claim, write, publish, splice, finish: what `init_chunk` does.
fn init(sections: &Sections<'_>, memmap: &Memmap, free: &Mutex<Vec<usize>>, i: usize) -> bool {
    match sections.claim(i) {
        Ok(claim) => {
            memmap.write(i);
            let published = claim.publish();
            free.lock().unwrap().push(i);
            published.finish();
            true
        }
        Err(_) => false,
    }
}

/// One section (slot leaked, for loom's threads) of `2^chunks_shift` chunks, all
/// present, and a model memmap of `cells` cells.
fn one_section(chunks_shift: u32, cells: usize) -> (Arc<Sections<'static>>, Arc<Memmap>) {
    let slots: &'static [SectionSlot] = Box::leak(vec![SectionSlot::new()].into_boxed_slice());
    let present = [(0, 1 << chunks_shift)].into_iter();
    let sections = Sections::new(slots, 0, 1, chunks_shift, present).unwrap();
    (Arc::new(sections), Arc::new(Memmap::new(cells)))
}

/// Runs `f(0)` and `f(1)` on two loom threads, and waits for both. (Loom runs its
/// threads on one OS thread and asks no `Send`; the closure is shared through an
/// `Rc`, because sharing it is no part of what is modelled.)
fn on_two_threads(f: impl Fn(usize) + 'static) {
    let f = std::rc::Rc::new(f);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let f = f.clone();
            thread::spawn(move || f(i))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_chunk_is_claimed_once_and_read_only_when_ready() {
    loom::model(|| {
        let (sections, memmap) = one_section(0, 1);
        let free = Arc::new(Mutex::new(Vec::new()));
        on_two_threads({
            let (sections, memmap) = (sections.clone(), memmap.clone());
            move |_| {
                if !init(&sections, &memmap, &free, 0) {
                    // The loser waits, then may read what the winner wrote.
                    assert_eq!(sections.wait_while_initialising(0), ChunkState::Ready);
                    assert_eq!(memmap.read(0), 0xd00d);
                }
            }
        });
        assert_eq!(memmap.writes[0].load(Ordering::Relaxed), 1);
        assert!(sections.all_initialised());
    });
}

/// Two chunks of one section initialised at once: the section's memmap is
/// populated exactly once, by one of them, and the other uses what it mapped.
#[test]
fn a_sections_memmap_is_populated_once_for_two_chunks() {
    use meminit::section::MemmapState;
    loom::model(|| {
        // Two chunks, one memmap cell: the section's.
        let (sections, memmap) = one_section(1, 1);
        on_two_threads({
            let (sections, memmap) = (sections.clone(), memmap.clone());
            move |chunk| {
                let claim = sections.claim(chunk).unwrap();
                loop {
                    match sections.claim_memmap(0) {
                        Ok(m) => {
                            memmap.write(0);
                            m.publish(0..0);
                            break;
                        }
                        Err(MemmapState::Populating) => {
                            sections.wait_while_populating(0);
                        }
                        Err(MemmapState::Populated(_)) => break,
                        Err(MemmapState::Unpopulated) => {}
                    }
                }
                // Whoever populated it, the mapping is there to use.
                assert_eq!(memmap.read(0), 0xd00d);
                claim.publish().finish();
            }
        });
        assert_eq!(memmap.writes[0].load(Ordering::Relaxed), 1);
        assert!(sections.all_initialised());
    });
}

/// A pass's run over a section's two chunks races a single claim of the second
/// (growth): each chunk is claimed and written once, and whoever loses reads
/// only after the run is published. The run gives its second chunk back when
/// `cut` (a failure there), and the grower then takes it.
fn run_races_a_single_claim(cut: bool) {
    loom::model(move || {
        let (sections, memmap) = one_section(1, 2);
        on_two_threads({
            let (sections, memmap) = (sections.clone(), memmap.clone());
            move |thread| {
                if thread == 0 {
                    let Ok(mut run) = sections.claim_run(0, 2) else {
                        unreachable!("chunk 0 is the run's alone");
                    };
                    if cut && run.chunks().len() == 2 {
                        run.give_back_from(1);
                    }
                    run.chunks().for_each(|c| memmap.write(c));
                    run.publish().finish();
                    return;
                }
                loop {
                    match sections.claim(1) {
                        Ok(claim) => {
                            memmap.write(1);
                            claim.publish().finish();
                            return;
                        }
                        Err(ChunkState::Initialising) => {
                            if sections.wait_while_initialising(1) == ChunkState::Ready {
                                assert_eq!(memmap.read(1), 0xd00d);
                                return;
                            }
                        }
                        Err(ChunkState::Ready) => {
                            assert_eq!(memmap.read(1), 0xd00d);
                            return;
                        }
                        Err(other) => unreachable!("chunk 1 was {other:?}"),
                    }
                }
            }
        });
        assert_eq!(memmap.writes[0].load(Ordering::Relaxed), 1);
        assert_eq!(memmap.writes[1].load(Ordering::Relaxed), 1);
        assert!(sections.all_initialised());
    });
}

#[test]
fn a_run_races_a_single_claim_in_its_section() {
    run_races_a_single_claim(false);
}

#[test]
fn a_run_cut_short_hands_the_rest_to_a_single_claim() {
    run_races_a_single_claim(true);
}

#[test]
fn growth_races_a_deferred_worker() {
    loom::model(|| {
        // Two chunks of one section: their claims share one word.
        const N: usize = 2;
        let (sections, memmap) = one_section(1, N);
        let free = Arc::new(Mutex::new(Vec::new()));
        let cursor = Arc::new(AtomicUsize::new(0));

        // The worker takes sections in order from its node's cursor.
        let worker = {
            let (sections, memmap, free, cursor) = (
                sections.clone(),
                memmap.clone(),
                free.clone(),
                cursor.clone(),
            );
            thread::spawn(move || loop {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    break;
                }
                init(&sections, &memmap, &free, i);
            })
        };

        // The allocation: take a free section, else grow one (from the top, the
        // way a zone's cursor may point past the worker), else wait for one.
        let grower = {
            let (sections, memmap, free) = (sections.clone(), memmap.clone(), free.clone());
            thread::spawn(move || loop {
                if let Some(i) = free.lock().unwrap().pop() {
                    assert_eq!(memmap.read(i), 0xd00d);
                    return i;
                }
                let mut busy = None;
                for i in (0..N).rev() {
                    match sections.state(i) {
                        ChunkState::Uninit => {
                            init(&sections, &memmap, &free, i);
                        }
                        ChunkState::Initialising => busy = Some(i),
                        _ => {}
                    }
                }
                if let Some(i) = busy {
                    sections.wait_while_initialising(i);
                }
                thread::yield_now();
            })
        };

        worker.join().unwrap();
        let taken = grower.join().unwrap();
        for i in 0..N {
            assert_eq!(memmap.writes[i].load(Ordering::Relaxed), 1, "section {i}");
            assert_eq!(sections.state(i), ChunkState::Ready);
        }
        assert!(sections.all_initialised());
        let free = free.lock().unwrap();
        assert_eq!(free.len(), N - 1);
        assert!(!free.contains(&taken));
    });
}

/// The allocator itself under loom: its zone and cache locks are this spin lock
/// over loom's atomics, so every lock, unlock and section-state load is a point
/// where loom may switch threads.
mod real {
    use std::mem::MaybeUninit;
    use std::sync::OnceLock;

    use lock_api::{GuardSend, RawMutex};
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::thread;
    use meminit::{
        AllocFlags, AllocRequest, Allocator, Config, CpuCache, CpuId, FreeRequest, Layout,
        LayoutBuilder, MobilityClass, NodeId, Page, Pfn, RangeKind, SectionSlot, SliceBacking,
        Strategy, ZoneType,
    };

    /// A test-and-set lock on a loom atomic, created on first use (loom's atomics
    /// cannot be built in a `const`).
    pub struct LoomLock(OnceLock<AtomicBool>);

    impl LoomLock {
        fn flag(&self) -> &AtomicBool {
            self.0.get_or_init(|| AtomicBool::new(false))
        }
    }

    // SAFETY: `try_lock` succeeds for one caller until `unlock`; Acquire on taking
    // the lock pairs with the Release of `unlock`.
    unsafe impl RawMutex for LoomLock {
        #[allow(clippy::declare_interior_mutable_const)]
        const INIT: Self = LoomLock(OnceLock::new());
        type GuardMarker = GuardSend;

        fn lock(&self) {
            while !self.try_lock() {
                thread::yield_now();
            }
        }

        fn try_lock(&self) -> bool {
            self.flag()
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }

        unsafe fn unlock(&self) {
            self.flag().store(false, Ordering::Release);
        }
    }

    type Alloc = Allocator<'static, SliceBacking<'static>, LoomLock>;

    /// A layout of `[start, end)` usable on node 0, in 4 MiB sections, with a
    /// memmap (uninitialised) and section slots for it.
    fn machine(start: u64, end: u64) -> (Layout, Box<[MaybeUninit<Page>]>, Vec<SectionSlot>) {
        let mut b = LayoutBuilder::new();
        b.section_size(4 << 20)
            .add(start, end, RangeKind::Usable, NodeId(0));
        let layout = b.build().unwrap();
        let memmap = Box::new_uninit_slice(layout.memmap_descriptors() as usize);
        let slots = (0..layout.section_count())
            .map(|_| SectionSlot::new())
            .collect();
        (layout, memmap, slots)
    }

    /// Builds an allocator over `[start, end)` (one 4 MiB section), runs `f` on it
    /// with a `'static` reference for loom's threads, and drops it after.
    fn with_allocator(start: u64, end: u64, strategy: Strategy, f: impl FnOnce(&'static Alloc)) {
        let (layout, mut memmap, slots) = machine(start, end);
        let cpus: Vec<CpuCache<LoomLock>> = (0..2).map(|_| CpuCache::new()).collect();
        let a = Allocator::new(
            layout,
            SliceBacking::new(&mut memmap),
            &slots,
            &cpus,
            Config::new(strategy),
        )
        .unwrap();
        // Create every lock's loom atomic on this thread, before any other thread
        // exists: a lock created lazily by one thread and then used by another is,
        // to loom, a creation racing a use.
        a.drain(None).unwrap_or(0);
        for zone in ZoneType::ALL {
            a.zone(NodeId(0), zone)
                .map(|z| z.free_blocks)
                .unwrap_or_default();
        }
        // SAFETY: every thread `f` spawns is joined before `f` returns, and `a`
        // (with what it borrows) outlives `f`.
        let shared: &'static Alloc = unsafe { &*(&a as *const Allocator<'_, _, _>).cast() };
        f(shared);
    }

    /// A loom thread with room for the allocator (tens of KiB) on its stack; loom's
    /// default is far smaller.
    fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
        thread::Builder::new().stack_size(4 << 20).spawn(f).unwrap()
    }

    fn model(f: fn()) {
        model_with(f, 20_000);
    }

    /// [`model`] allowing `max_branches` on one path.
    fn model_with(f: fn(), max_branches: usize) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        // Give-back walks more states than the default allows on one path.
        builder.max_branches = max_branches;
        builder.check(move || spawn(f).join().unwrap());
    }

    /// A CPU allocating and freeing through its cache (refills and a drain at its
    /// high mark) while another CPU drains that cache remotely: no block is lost or
    /// handed out twice, and every page ends free and merged.
    #[test]
    fn cache_refill_and_drain_race_a_remote_drain() {
        model(|| {
            // 15 pages: blocks of order 0, 1, 2 and 3.
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let owner = spawn(move || {
                    let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
                    let q = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
                    assert_ne!(p, q);
                    a.free(FreeRequest::pfn(p).on(CpuId(0)).order(0)).unwrap();
                    a.free(FreeRequest::pfn(q).on(CpuId(0)).order(0)).unwrap();
                });
                let remote = spawn(move || {
                    a.drain(Some(CpuId(0))).unwrap();
                });
                owner.join().unwrap();
                remote.join().unwrap();
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!(z.free, 15, "{z:?}");
                a.drain(None).unwrap_or(0);
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.free, z.cached), (15, 0));
                assert_eq!(
                    a.zone(NodeId(0), ZoneType::Dma)
                        .map(|z| z.free_blocks)
                        .unwrap_or_default()[..4],
                    [1, 1, 1, 1]
                );
            });
        });
    }

    /// A block allocated on one CPU and freed on another while the first refills:
    /// the counts hold and the block returns to its zone.
    #[test]
    fn a_block_freed_on_another_cpu_goes_where_it_belongs() {
        model(|| {
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let p = a.alloc(AllocRequest::order(1).on(CpuId(0))).unwrap();
                let other =
                    spawn(move || a.free(FreeRequest::pfn(p).on(CpuId(1)).order(1)).unwrap());
                let owner = spawn(move || {
                    let q = a.alloc(AllocRequest::order(1).on(CpuId(0))).unwrap();
                    a.free(FreeRequest::pfn(q).on(CpuId(0)).order(1)).unwrap();
                });
                other.join().unwrap();
                owner.join().unwrap();
                a.drain(None).unwrap_or(0);
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.free, z.cached), (15, 0));
            });
        });
    }

    /// Frees the pages `pfns` (order 0, allocated from the zones) on `cpu`, in
    /// order: with loom's high mark of 4 and batch of 2, the fifth free pushes
    /// the two coldest to the depot.
    fn free_on(a: &Alloc, cpu: u32, pfns: impl IntoIterator<Item = u64>) {
        for p in pfns {
            a.free(FreeRequest::pfn(Pfn(p)).on(CpuId(cpu)).order(0))
                .unwrap();
        }
    }

    /// Every page of the zone allocated as order 0 from the zones, in pfn order.
    fn all_pages(a: &Alloc) -> Vec<u64> {
        let mut all: Vec<u64> = (0..15)
            .map(|_| a.alloc(AllocRequest::order(0)).unwrap().0)
            .collect();
        all.sort_unstable();
        all
    }

    /// Every page of the zone allocated (as `all_pages`), split into those
    /// below the order-3 block at 8 and the block's eight pages.
    fn outside_and_block(a: &Alloc) -> (Vec<u64>, Vec<u64>) {
        let (outside, block): (Vec<u64>, Vec<u64>) = all_pages(a).iter().partition(|&&p| p < 8);
        assert_eq!(block, (8..16).collect::<Vec<u64>>());
        (outside, block)
    }

    /// With every page freed: a drain puts everything back on the lists, the
    /// counts and the chunks' words agree.
    fn all_back_merged(a: &Alloc) {
        a.drain(None).unwrap();
        let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
        assert_eq!((z.free, z.cached, z.depot), (15, 0, 0), "{z:?}");
        assert_eq!(a.miscounted_chunks(), 0);
    }

    /// A CPU popping a batch from the depot (its stock is empty) and pushing one
    /// (the other CPU's stock is full), while a third thread drains every cache
    /// and the depot: no block is lost, handed out twice or left unmerged, and
    /// the counts hold throughout.
    #[test]
    fn depot_pushes_and_pops_race_a_drain() {
        model(|| {
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let all = all_pages(a);
                // Six frees on CPU 1: its stock full (4), one batch of 2 in the depot.
                free_on(a, 1, all[..6].iter().copied());
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.cached, z.depot), (4, 2), "{z:?}");
                let owner = spawn(move || {
                    // CPU 0's stock is empty: the batch from the depot serves.
                    let q = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
                    // CPU 1's stock is full (unless drained): a batch goes to the depot.
                    a.free(FreeRequest::pfn(q).on(CpuId(1)).order(0)).unwrap();
                });
                let remote = spawn(move || {
                    a.drain(None).unwrap();
                });
                owner.join().unwrap();
                remote.join().unwrap();
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!(z.free, 6, "{z:?}");
                assert_eq!(a.miscounted_chunks(), 0);
                free_on(a, 0, all[6..].iter().copied());
                a.drain(None).unwrap();
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.free, z.cached, z.depot), (15, 0, 0), "{z:?}");
                assert_eq!(z.free_blocks[..4], [1, 1, 1, 1]);
                assert_eq!(a.miscounted_chunks(), 0);
            });
        });
    }

    /// The only order-3 block is in pieces: four pages in two batches in the
    /// depot, four in CPU 1's stock. An order-3 allocation must merge them (the
    /// flush of its zone's depot, then the drains of its last look before
    /// `OutOfMemory`) while CPU 1 frees another page, which pushes a batch of
    /// those pieces to the depot behind the drain's back: it never fails.
    #[test]
    fn the_last_look_before_out_of_memory_finds_the_depot() {
        model(|| {
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let (outside, block) = outside_and_block(a);
                free_on(a, 1, block.iter().copied());
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.cached, z.depot, z.free_blocks[0]), (4, 4, 0), "{z:?}");
                let extra = outside[0];
                let freer = spawn(move || {
                    a.free(FreeRequest::pfn(Pfn(extra)).on(CpuId(1)).order(0))
                        .unwrap();
                });
                let big = spawn(move || a.alloc(AllocRequest::order(3).on(CpuId(0))));
                freer.join().unwrap();
                let got = big.join().unwrap().expect("the pieces merge and serve");
                assert_eq!(got, Pfn(8));
                assert_eq!(a.miscounted_chunks(), 0);
                a.free(FreeRequest::pfn(got).order(3)).unwrap();
                free_on(a, 0, outside[1..].iter().copied());
                all_back_merged(a);
            });
        });
    }

    /// Every free page of the zone is in the depot, in four batches of two
    /// (pages 8 to 15, an order-3 block in pieces): two order-2 allocations at
    /// once both find their lists empty and flush. Whichever flush finds the
    /// depot already taken must wait for the other to put the batches on the
    /// lists, and its last look must look after a drain that found nothing:
    /// both allocations are served, from the two halves of the merged block.
    #[test]
    fn two_last_looks_at_once_both_find_the_depots_batches() {
        model(|| {
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let (outside, block) = outside_and_block(a);
                // CPU 1: 8..16 then four pages outside; every second free past
                // the high mark pushes the two coldest, so 8..16 end in the depot.
                free_on(a, 1, block.iter().copied());
                free_on(a, 1, outside[..4].iter().copied());
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.cached, z.depot, z.free_blocks[0]), (4, 8, 0), "{z:?}");
                let first = spawn(move || a.alloc(AllocRequest::order(2).on(CpuId(0))));
                let second = spawn(move || a.alloc(AllocRequest::order(2)));
                let mut got = [
                    first.join().unwrap().expect("the depot's batches serve"),
                    second.join().unwrap().expect("the depot's batches serve"),
                ];
                got.sort_unstable();
                assert_eq!(got, [Pfn(8), Pfn(12)]);
                assert_eq!(a.miscounted_chunks(), 0);
                for p in got {
                    a.free(FreeRequest::pfn(p).order(2)).unwrap();
                }
                free_on(a, 0, outside[4..].iter().copied());
                all_back_merged(a);
            });
        });
    }

    /// An allocation's take and its look at what is left to initialise, racing the
    /// initialisation of its zone's only section by a descriptor look-up: whichever
    /// order they run in, the allocation succeeds.
    #[test]
    fn take_and_recheck_race_the_last_initialisation() {
        model(|| {
            with_allocator(16 << 20, (16 << 20) + 0x8000, Strategy::OnDemand, |a| {
                let lookup = spawn(move || {
                    a.page_or_init(Pfn(4096)).unwrap();
                });
                let alloc = spawn(move || a.alloc(AllocRequest::order(0)));
                lookup.join().unwrap();
                let got = alloc.join().unwrap();
                assert!(got.is_ok(), "{got:?}");
            });
        });
    }

    /// The models' memmap backing: a slice that really releases a section's
    /// memmap (as far as the model can tell), with one flag per section that
    /// fails the model if the section is populated twice or released while not
    /// populated.
    ///
    /// Not the shared test double (`tests/common`): that one keeps its records
    /// behind std mutexes, which loom neither sees nor can switch threads at, so
    /// the model would explore none of the interleavings around the flags. Here
    /// each flag is a loom atomic: each populate and release is a point where the
    /// model may switch threads, and its ordering is checked.
    pub struct Flagged<'m> {
        inner: SliceBacking<'m>,
        populated: Vec<AtomicBool>,
    }

    impl<'m> Flagged<'m> {
        /// Over `memmap`, the descriptors of `layout`'s pfns; no section populated.
        fn over(memmap: &'m mut [MaybeUninit<Page>], layout: &Layout) -> Self {
            Flagged {
                inner: SliceBacking::new(memmap),
                populated: (0..layout.memmap_sections().end)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
            }
        }
    }

    // SAFETY: every promise is `SliceBacking`'s: the memory stays mapped after
    // `depopulate`, which only flips the model's flag.
    unsafe impl meminit::MemmapBacking for Flagged<'_> {
        fn descriptors(&self) -> std::ptr::NonNull<Page> {
            self.inner.descriptors()
        }

        fn populate(
            &self,
            piece: meminit::MemmapPiece,
            layout: &meminit::Layout,
            pages: &mut meminit::PageSource<'_>,
        ) -> Result<meminit::Populated, meminit::BackingError> {
            let was = self.populated[piece.section].swap(true, Ordering::SeqCst);
            assert!(!was, "section {} populated twice", piece.section);
            self.inner.populate(piece, layout, pages)
        }

        fn depopulate(&self, piece: meminit::MemmapPiece) -> bool {
            let was = self.populated[piece.section].swap(false, Ordering::SeqCst);
            assert!(
                was,
                "section {} released while not populated",
                piece.section
            );
            true
        }
    }

    /// A chunk that stayed free is given back (its section's memmap released)
    /// while an allocation grows the same zone: the allocation succeeds, the
    /// memmap is never populated twice nor released under a chunk in use, and
    /// the counts hold.
    #[test]
    fn give_back_races_a_grow_of_the_same_chunk() {
        model(|| {
            let (layout, mut memmap, slots) = machine(16 << 20, (16 << 20) + 0x4000);
            let cpus: Vec<CpuCache<LoomLock>> = Vec::new();
            let mut config = Config::new(Strategy::OnDemand);
            config.give_back_reserve = 0;
            let backing = Flagged::over(&mut memmap, &layout);
            let a = Allocator::new(layout, backing, &slots, &cpus, config).unwrap();
            for zone in ZoneType::ALL {
                a.zone(NodeId(0), zone)
                    .map(|z| z.free_blocks)
                    .unwrap_or_default();
            }
            // Initialise the chunk, free it, and mark it: the next pass gives it
            // back.
            let p = a.alloc(AllocRequest::order(0)).unwrap();
            a.free(FreeRequest::pfn(p).order(0)).unwrap();
            assert_eq!(a.give_back().chunks_marked, 1);
            // SAFETY: both threads are joined before `a` goes out of scope.
            let a: &'static Allocator<'static, Flagged<'static>, LoomLock> =
                unsafe { &*(&a as *const Allocator<'_, _, _>).cast() };
            let trim = spawn(move || a.give_back().chunks_given_back);
            let alloc = spawn(move || a.alloc(AllocRequest::order(0)));
            let given = trim.join().unwrap();
            let got = alloc.join().unwrap().expect("the allocation succeeds");
            assert!(given <= 1);
            // The block's chunk is Ready, so its memmap must be there.
            assert_eq!(
                a.page(got).unwrap().state(),
                meminit::PageState::Allocated { order: 0 }
            );
            let section = (got.0 >> a.layout().section_shift()) as usize;
            assert!(a.backing().populated[section].load(Ordering::SeqCst));
            let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
            assert_eq!(
                z.free + 1 + z.uninitialised + z.reserved,
                z.present,
                "{z:?}"
            );
            a.free(FreeRequest::pfn(got).order(0)).unwrap();
        });
    }

    /// An unmovable allocation that can only steal (every page is movable, one
    /// is free) racing a free of another movable page into a CPU's cache: the
    /// allocation never fails, steals exactly once, and the chunk's word of use
    /// matches its descriptors at the end.
    #[test]
    fn a_steal_races_a_free_of_the_other_class() {
        model(|| {
            // 15 pages: blocks of order 0, 1, 2 and 3.
            with_allocator(0x1000, 0x10000, Strategy::Eager, |a| {
                let movable = |_| {
                    a.alloc_traced(AllocRequest::order(0).flags(AllocFlags::MOVABLE))
                        .unwrap()
                        .0
                };
                let mut held: Vec<Pfn> = (0..15).map(movable).collect();
                a.free(held.pop().unwrap()).unwrap();
                let other = held.pop().unwrap();
                let free = spawn(move || a.free(FreeRequest::pfn(other).on(CpuId(1))).unwrap());
                let steal = spawn(move || {
                    a.alloc_traced(
                        AllocRequest::order(0)
                            .on(CpuId(0))
                            .flags(AllocFlags::NO_GROW),
                    )
                });
                free.join().unwrap();
                let (stolen, _) = steal.join().unwrap().expect("the steal serves");
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!(z.steals, 1, "{z:?}");
                assert_eq!(
                    a.page(stolen).unwrap().mobility(),
                    Some(MobilityClass::Unmovable)
                );
                assert_eq!(a.chunk_use(stolen).class(), Some(MobilityClass::Movable));
                assert_eq!(a.chunk_use(stolen).pages(), 14 + z.cached);
                assert_eq!(a.miscounted_chunks(), 0);
                held.push(stolen);
                for p in held {
                    a.free(p).unwrap();
                }
                a.drain(None).unwrap_or(0);
                let z = a.zone(NodeId(0), ZoneType::Dma).unwrap();
                assert_eq!((z.free, z.free_whole), (15, 15), "{z:?}");
                assert_eq!(a.miscounted_chunks(), 0);
            });
        });
    }

    /// A give-back pass over a chunk that stayed free, racing an allocation
    /// (and its free) in the same chunk: the pass reads the chunk's word of use
    /// without the lock and again under it, so it never gives back a chunk with
    /// a page allocated, and the word matches the descriptors at the end.
    #[test]
    fn chunk_counts_race_a_give_back_pass() {
        // A pass over a chunk being given back while the allocation spins on it
        // takes more steps than the other models.
        model_with(
            || {
                let mut b = LayoutBuilder::new();
                b.section_size(4 << 20).add(
                    16 << 20,
                    (16 << 20) + 0x4000,
                    RangeKind::Usable,
                    NodeId(0),
                );
                let layout = b.build().unwrap();
                let mut memmap: Box<[MaybeUninit<Page>]> =
                    Box::new_uninit_slice(layout.memmap_descriptors() as usize);
                let slots: Vec<SectionSlot> = (0..layout.section_count())
                    .map(|_| SectionSlot::new())
                    .collect();
                let cpus: Vec<CpuCache<LoomLock>> = Vec::new();
                let mut config = Config::new(Strategy::OnDemand);
                config.give_back_reserve = 0;
                let a = Allocator::new(
                    layout,
                    SliceBacking::new(&mut memmap),
                    &slots,
                    &cpus,
                    config,
                )
                .unwrap();
                for zone in ZoneType::ALL {
                    a.zone(NodeId(0), zone)
                        .map(|z| z.free_blocks)
                        .unwrap_or_default();
                }
                let p = a.alloc(AllocRequest::order(0)).unwrap();
                a.free(FreeRequest::pfn(p).order(0)).unwrap();
                assert_eq!(a.give_back().chunks_marked, 1);
                // SAFETY: both threads are joined before `a` goes out of scope.
                let a: &'static Alloc = unsafe { &*(&a as *const Allocator<'_, _, _>).cast() };
                let pass = spawn(move || a.give_back().chunks_given_back);
                let user = spawn(move || {
                    let (p, _) = a
                        .alloc_traced(AllocRequest::order(0).flags(AllocFlags::MOVABLE))
                        .unwrap();
                    // While it is held, its chunk is in use and Ready.
                    assert_eq!(a.chunk_use(p).pages(), 1);
                    assert_eq!(a.chunk_use(p).class(), Some(MobilityClass::Movable));
                    p
                });
                let given = pass.join().unwrap();
                let p = user.join().unwrap();
                assert!(given <= 1);
                assert_eq!(
                    a.page(p).unwrap().state(),
                    meminit::PageState::Allocated { order: 0 }
                );
                assert_eq!(a.miscounted_chunks(), 0);
                let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
                assert_eq!(
                    z.free + 1 + z.uninitialised + z.reserved,
                    z.present,
                    "{z:?}"
                );
                a.free(p).unwrap();
                assert_eq!(a.chunk_use(p), meminit::ChunkUse::FREE);
                assert_eq!(a.miscounted_chunks(), 0);
            },
            200_000,
        );
    }

    type Hot = Allocator<'static, Flagged<'static>, LoomLock>;

    /// Four usable pages at 16 MiB and one 4 MiB section (one chunk)
    /// hot-pluggable at 20 MiB, in 4 MiB sections; every boot page allocated
    /// (so an allocation can only be served by hot-plugged memory), and `f`
    /// run on the allocator with a `'static` reference for loom's threads.
    fn with_hot(add: bool, f: impl FnOnce(&'static Hot, &[Pfn])) {
        let mut b = LayoutBuilder::new();
        b.section_size(4 << 20)
            .add(16 << 20, (16 << 20) + 0x4000, RangeKind::Usable, NodeId(0))
            .add(20 << 20, 24 << 20, RangeKind::Hotplug, NodeId(0));
        let layout = b.build().unwrap();
        let mut memmap = Box::new_uninit_slice(layout.memmap_descriptors() as usize);
        let slots: Vec<SectionSlot> = (0..layout.section_count())
            .map(|_| SectionSlot::new())
            .collect();
        let backing = Flagged::over(&mut memmap, &layout);
        let cpus: Vec<CpuCache<LoomLock>> = Vec::new();
        let mut config = Config::new(Strategy::OnDemand);
        config.give_back_reserve = 0;
        let a = Allocator::new(layout, backing, &slots, &cpus, config).unwrap();
        // Every lock's loom atomic made on this thread first, as in
        // `with_allocator`.
        a.drain(None).unwrap_or(0);
        for zone in ZoneType::ALL {
            a.zone(NodeId(0), zone)
                .map(|z| z.free_blocks)
                .unwrap_or_default();
        }
        let boot: Vec<Pfn> = (0..4)
            .map(|_| a.alloc(AllocRequest::order(0)).unwrap())
            .collect();
        if add {
            a.add_memory(hot()).unwrap();
        }
        // SAFETY: every thread `f` spawns is joined before it returns, and `a`
        // (with what it borrows) outlives `f`.
        let shared: &'static Hot = unsafe { &*(&a as *const Allocator<'_, _, _>).cast() };
        f(shared, &boot);
    }

    fn hot() -> std::ops::Range<Pfn> {
        Pfn((20 << 20) >> 12)..Pfn((24 << 20) >> 12)
    }

    /// free + held + uninitialised + reserved == present in DMA32.
    fn counts_hold(a: &Hot, held: u64) {
        let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
        assert_eq!(
            z.free + held + z.uninitialised + z.reserved,
            z.present,
            "{z:?}"
        );
    }

    /// An add of memory racing an allocation that needs it: the allocation
    /// either grows into the new chunk or (having looked before the add) fails;
    /// the chunk is initialised at most once, and once the add is done an
    /// allocation succeeds and the counts hold.
    #[test]
    fn an_add_races_a_grow_of_its_zone() {
        model(|| {
            with_hot(false, |a, boot| {
                let add = spawn(move || a.add_memory(hot()).unwrap());
                let alloc =
                    spawn(move || a.alloc(AllocRequest::order(0).flags(AllocFlags::MOVABLE)));
                assert_eq!(add.join().unwrap(), 1024);
                let got = match alloc.join().unwrap() {
                    Ok(p) => p,
                    Err(_) => a
                        .alloc(AllocRequest::order(0))
                        .expect("added memory serves"),
                };
                assert!(hot().contains(&got));
                counts_hold(a, boot.len() as u64 + 1);
                a.free(FreeRequest::pfn(got).order(0)).unwrap();
                counts_hold(a, boot.len() as u64);
            });
        });
    }

    /// A remove racing an allocation that grows into the same chunk: either the
    /// allocation holds a page of it and the chunk is kept, or the chunk is
    /// removed and the allocation fails; never a page held in a removed chunk.
    #[test]
    fn a_remove_races_a_grow_of_the_same_chunk() {
        model(|| {
            with_hot(true, |a, boot| {
                let remove = spawn(move || a.remove_memory(hot()).unwrap());
                let alloc =
                    spawn(move || a.alloc(AllocRequest::order(0).flags(AllocFlags::MOVABLE)));
                let removed = remove.join().unwrap();
                match alloc.join().unwrap() {
                    Ok(p) => {
                        assert!(!removed.is_complete(), "{removed:?}");
                        assert_eq!(
                            a.page(p).unwrap().state(),
                            meminit::PageState::Allocated { order: 0 }
                        );
                        counts_hold(a, boot.len() as u64 + 1);
                        a.free(FreeRequest::pfn(p).order(0)).unwrap();
                    }
                    Err(_) => assert!(removed.is_complete(), "{removed:?}"),
                }
                assert!(a.remove_memory(hot()).unwrap().is_complete());
                counts_hold(a, boot.len() as u64);
                assert!(!a.backing().populated[5].load(Ordering::SeqCst));
            });
        });
    }

    /// A remove racing a give-back of the same wholly free chunk: the chunk goes
    /// whoever gets there first (taken `Ready`, or after the give-back as
    /// `Uninit`), its memmap is released exactly once, and the counts hold.
    #[test]
    fn a_remove_races_a_give_back_of_the_same_chunk() {
        model(|| {
            with_hot(true, |a, boot| {
                let p = a
                    .alloc(AllocRequest::order(0).flags(AllocFlags::MOVABLE))
                    .unwrap();
                a.free(FreeRequest::pfn(p).order(0)).unwrap();
                assert_eq!(a.give_back().chunks_marked, 1);
                let trim = spawn(move || a.give_back().chunks_given_back);
                let remove = spawn(move || a.remove_memory(hot()).unwrap());
                let given = trim.join().unwrap();
                let removed = remove.join().unwrap();
                assert!(given <= 1);
                assert!(removed.is_complete(), "{removed:?}");
                assert_eq!(removed.pages, 1024);
                assert!(!a.backing().populated[5].load(Ordering::SeqCst));
                counts_hold(a, boot.len() as u64);
                let z = a.zone(NodeId(0), ZoneType::Dma32).unwrap();
                assert_eq!(z.present, 4);
            });
        });
    }
}
