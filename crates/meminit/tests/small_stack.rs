//! Bring-up on a kernel's boot stack: the memory map built, the allocator started
//! in place, and the first allocations and frees made, on a 16 KiB thread stack
//! under each strategy, in every profile: the workspace's `dev` (opt-level 1,
//! what `cargo test` builds), `release`, and unoptimised (`scripts/test` runs
//! these tests again with the crate at opt-level 0). And the peak stack of each
//! start-up path, measured with a painted stack, that the docs quote.

#![cfg(not(miri))]

mod common;

use std::mem::MaybeUninit;

use common::{start_in_place_over_a_short_memmap, Lent};
use meminit::{
    AllocError, AllocRequest, Allocator, AllocatorCell, Config, Constraint, CpuCache, CpuId,
    FreeRequest, InitError, Layout, LayoutBuilder, LayoutError, NodeId, Page, Pfn, RangeKind,
    SectionSlot, SliceBacking, Strategy,
};

const MIB: u64 = 1 << 20;
const STACK: usize = 16 << 10;

type Alloc<'a> = Allocator<'a, SliceBacking<'a>, parking_lot::RawMutex>;

/// The memory map: two nodes, a hole, a reserved range, 8 MiB sections.
fn map(b: &mut LayoutBuilder) -> &mut LayoutBuilder {
    b.section_size(8 * MIB)
        .add(MIB, 40 * MIB, RangeKind::Usable, NodeId(0))
        .add(12 * MIB, 13 * MIB, RangeKind::Reserved, NodeId(0))
        .add(48 * MIB, 96 * MIB, RangeKind::Usable, NodeId(1))
}

/// Runs `f` on a thread with a 16 KiB stack; a stack overflow aborts the test
/// binary, which fails it.
fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// What a boot CPU does first: allocations of a few orders (growing the zones
/// under the lazy strategies), through its cache and not, then frees.
fn first_steps(a: &Alloc<'_>) {
    if a.config().strategy == Strategy::Deferred {
        for node in [NodeId(0), NodeId(1)] {
            assert_eq!(a.run_deferred_worker(node).failed, 0);
        }
    }
    let p = a.alloc(AllocRequest::order(0).on(CpuId(0))).unwrap();
    let q = a
        .alloc(AllocRequest::order(10).within(Constraint::Dma))
        .unwrap();
    let r = a
        .alloc(AllocRequest::order(3).on(CpuId(1)).node(NodeId(1)))
        .unwrap();
    assert_eq!(a.page(r).unwrap().zone().map(|z| z.0), Some(NodeId(1)));
    a.free(FreeRequest::pfn(p).on(CpuId(1)).order(0)).unwrap();
    a.free(FreeRequest::pfn(q).order(10)).unwrap();
    a.free(FreeRequest::pfn(r).on(CpuId(0)).order(3)).unwrap();
    assert!(a.page_or_init(Pfn(90 * MIB / 4096)).is_ok());
}

/// The memory map, built.
fn layout() -> Layout {
    let mut b = LayoutBuilder::new();
    map(&mut b).build().unwrap()
}

/// For every strategy: lends an allocator over `layout` what it needs, and runs
/// `start` on a 16 KiB stack to start one in the slot it is given (and take its
/// first steps); then drops it. `start` must start the allocator or panic.
fn in_place_on_small_stack(
    layout: &Layout,
    start: impl for<'s, 'a> Fn(
            &'s mut MaybeUninit<Alloc<'a>>,
            &'a mut [MaybeUninit<Page>],
            &'a [SectionSlot],
            &'a [CpuCache<parking_lot::RawMutex>],
            Strategy,
        ) + Sync,
) {
    for strategy in Strategy::ALL {
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(layout);
        let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
        let Lent {
            memmap,
            slots,
            cpus,
        } = &mut lent;
        on_small_stack(|| start(&mut slot, memmap, slots, cpus, strategy));
        // SAFETY: `start` returned, so it started the allocator in the slot;
        // nothing borrows the allocator now.
        unsafe { slot.assume_init_drop() };
    }
}

#[test]
fn bring_up_in_place_and_first_allocations_fit_a_16_kib_stack() {
    // What the memmap, the slots and the caches need comes from the heap here (a
    // kernel's statics); the allocator's own memory too.
    in_place_on_small_stack(&layout(), |slot, memmap, slots, cpus, strategy| {
        // The memory map is built on this stack too.
        let mut b = LayoutBuilder::new();
        let a = Allocator::build_in_place(
            slot,
            map(&mut b),
            |_| Ok(SliceBacking::new(memmap)),
            slots,
            cpus,
            Config::new(strategy),
        )
        .unwrap();
        assert_eq!(a.config().strategy, strategy);
        first_steps(a);
    });
}

#[test]
fn init_in_place_from_a_built_layout_fits_a_16_kib_stack() {
    let layout = layout();
    in_place_on_small_stack(&layout, |slot, memmap, slots, cpus, strategy| {
        let a = Allocator::init_in_place(
            slot,
            &layout,
            SliceBacking::new(memmap),
            slots,
            cpus,
            Config::new(strategy),
        )
        .unwrap();
        first_steps(a);
    });
}

#[test]
fn in_place_start_up_reports_every_error() {
    let layout = layout();
    let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&layout);
    // A map that does not validate.
    let mut bad = LayoutBuilder::new();
    bad.add(8 * MIB, 4 * MIB, RangeKind::Usable, NodeId(0));
    let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
    let err = Allocator::build_in_place(
        &mut slot,
        &bad,
        |_| Ok(SliceBacking::new(&mut lent.memmap)),
        &lent.slots,
        &lent.cpus,
        Config::new(Strategy::OnDemand),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, InitError::Layout(LayoutError::Inverted { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("memory map"), "{err}");
    // Too few slots.
    let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
    let err = Allocator::init_in_place(
        &mut slot,
        &layout,
        SliceBacking::new(&mut lent.memmap),
        &lent.slots[..1],
        &lent.cpus,
        Config::new(Strategy::OnDemand),
    )
    .err()
    .unwrap();
    assert!(matches!(err, InitError::TooFewSlots { .. }), "{err}");
    // A memmap too short for eager start-up: the backing fails, and the slot is
    // left with nothing in it to drop.
    let err = start_in_place_over_a_short_memmap(&layout, &lent, 1024);
    assert!(matches!(err, InitError::Backing(_)), "{err}");
    // The slots and caches then serve an allocator that works.
    let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
    let a = Allocator::init_in_place(
        &mut slot,
        &layout,
        SliceBacking::new(&mut lent.memmap),
        &lent.slots,
        &lent.cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    assert!(matches!(
        a.alloc(AllocRequest::order(11)),
        Err(AllocError::OrderTooLarge { order: 11 })
    ));
    first_steps(a);
    // SAFETY: the last start-up succeeded; `a` is not used after this.
    unsafe { slot.assume_init_drop() };
}

#[test]
fn the_layout_built_in_place_is_the_layout_built_by_value() {
    let mut b = LayoutBuilder::new();
    map(&mut b);
    let by_value = b.build().unwrap();
    let mut other = LayoutBuilder::new();
    other.add(0, 4 << 30, RangeKind::Usable, NodeId(3));
    let mut in_place: Layout = other.build().unwrap();
    b.build_into(&mut in_place).unwrap();
    assert_eq!(format!("{by_value:?}"), format!("{in_place:?}"));
    assert_eq!(in_place.node_count(), 2);
    // An error leaves a layout with no memory, or the old one.
    let mut none = LayoutBuilder::new();
    none.add(0, 1 << 20, RangeKind::Reserved, NodeId(0));
    assert_eq!(
        none.build_into(&mut in_place),
        Err(LayoutError::NoUsableMemory)
    );
    assert_eq!(in_place.usable_pages(), 0);
}

// --- Measured: the peak stack of each start-up path ---------------------------

/// The stack of a measuring thread, and how much of it is painted.
const MEASURE_STACK: usize = 1 << 20;
const PAINTED: usize = 768 << 10;
/// Left unpainted right below the measuring frame, for `paint`'s own frame.
const GAP: usize = 1 << 10;
const PATTERN: u8 = 0xa7;

/// Writes `PATTERN` over `[low, high)`.
#[inline(never)]
fn paint(low: usize, high: usize) {
    for a in low..high {
        // SAFETY: `[low, high)` is this thread's stack (below the caller's frame,
        // at most `PAINTED` of a `MEASURE_STACK` stack), mapped and not in use:
        // no live frame is there, and this frame is above `high` (`GAP`).
        unsafe { std::ptr::write_volatile(a as *mut u8, PATTERN) };
    }
}

/// The lowest address in `[low, high)` whose byte is no longer `PATTERN`
/// (`high` if none).
#[inline(never)]
fn deepest_written(low: usize, high: usize) -> usize {
    // SAFETY: as in `paint`: mapped stack that no live frame is in.
    (low..high)
        .find(|&a| unsafe { std::ptr::read_volatile(a as *const u8) } != PATTERN)
        .unwrap_or(high)
}

/// Paints the stack below this frame, runs `f`, and returns the bytes below
/// this frame that `f` wrote at most (its own frames, and whatever it calls).
#[inline(never)]
fn painted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let marker = 0u8;
    let top = std::hint::black_box(&marker) as *const u8 as usize;
    let (low, high) = (top - PAINTED, top - GAP);
    paint(low, high);
    let r = below(f);
    (r, top - deepest_written(low, high))
}

/// Calls `f` in a frame of its own, so that none of `f`'s locals can be part
/// of the caller's frame (above its marker).
#[inline(never)]
fn below<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// The peak stack of `f`, on a thread of its own (see [`painted`]): what `f`
/// wrote below the measuring frame, which counts `f`'s call too (a few words).
fn peak_stack<T: Send>(f: impl FnOnce() -> T + Send) -> (T, usize) {
    on_measuring_thread(|| painted(f))
}

/// Runs `f` on a thread with a `MEASURE_STACK` stack.
fn on_measuring_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(MEASURE_STACK)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// One row of the figures: a path's peak stack under each strategy.
fn row(path: &str, peaks: &[usize]) {
    let kib: Vec<String> = peaks
        .iter()
        .map(|b| format!("{:.1}", *b as f64 / 1024.0))
        .collect();
    eprintln!("{path:<44} {}", kib.join(" / "));
}

/// Prints the peak stack of each start-up path (eager / deferred / on-demand,
/// KiB), with a painted stack; run with `--nocapture` in each profile. The
/// crate docs and `docs/embedding.md` quote these figures. Every path that
/// starts in place must stay within 16 KiB.
#[test]
fn peak_stack_of_each_start_up_path() {
    let layout = layout();
    let (mut by_value, mut init, mut build, mut cell, mut first) =
        (vec![], vec![], vec![], vec![], vec![]);
    for strategy in Strategy::ALL {
        let config = Config::new(strategy);
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&layout);
        let ((), used) = peak_stack(|| {
            let backing = SliceBacking::new(&mut lent.memmap);
            let a =
                Allocator::new(layout.clone(), backing, &lent.slots, &lent.cpus, config).unwrap();
            std::hint::black_box(&a);
        });
        by_value.push(used);
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&layout);
        let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
        let (_, used) = peak_stack(|| {
            let backing = SliceBacking::new(&mut lent.memmap);
            Allocator::init_in_place(&mut slot, &layout, backing, &lent.slots, &lent.cpus, config)
                .map(|_| ())
                .unwrap()
        });
        init.push(used);
        // SAFETY: `init_in_place` succeeded; nothing borrows the allocator.
        unsafe { slot.assume_init_drop() };
        let mut lent = Lent::<parking_lot::RawMutex>::for_layout(&layout);
        let mut slot: Box<MaybeUninit<Alloc<'_>>> = Box::new_uninit();
        let Lent {
            memmap,
            slots,
            cpus,
        } = &mut lent;
        let (_, used) = peak_stack(|| {
            let mut b = LayoutBuilder::new();
            Allocator::build_in_place(
                &mut slot,
                map(&mut b),
                |_| Ok(SliceBacking::new(memmap)),
                slots,
                cpus,
                config,
            )
            .map(|_| ())
            .unwrap()
        });
        build.push(used);
        // SAFETY: `build_in_place` succeeded, so the slot holds the allocator.
        let a = unsafe { slot.assume_init_ref() };
        first.push(peak_stack(|| first_steps(a)).1);
        // SAFETY: nothing borrows the allocator any more.
        unsafe { slot.assume_init_drop() };
        // A cell in a `static`: leaked here, with what it borrows.
        let lent: &'static mut Lent<parking_lot::RawMutex> =
            Box::leak(Box::new(Lent::for_layout(&layout)));
        let home: &'static AllocatorCell<SliceBacking<'static>, parking_lot::RawMutex> =
            Box::leak(Box::new(AllocatorCell::new()));
        let Lent {
            memmap,
            slots,
            cpus,
        } = lent;
        let (_, used) = peak_stack(move || {
            let mut b = LayoutBuilder::new();
            home.build(
                map(&mut b),
                |_| Ok(SliceBacking::new(memmap)),
                slots,
                cpus,
                config,
            )
            .map(|_| ())
            .unwrap()
        });
        cell.push(used);
    }
    eprintln!(
        "sizes: Allocator {} B, Layout {} B, LayoutBuilder {} B",
        std::mem::size_of::<Alloc<'_>>(),
        std::mem::size_of::<Layout>(),
        std::mem::size_of::<LayoutBuilder>()
    );
    eprintln!("peak stack, KiB (eager / deferred / on-demand):");
    row("Allocator::new (by value)", &by_value);
    row("Allocator::init_in_place (layout built)", &init);
    row("Allocator::build_in_place (builder on stack)", &build);
    row("AllocatorCell::build (builder on stack)", &cell);
    row("first allocations and frees after", &first);
    for peak in [&init, &build, &cell, &first].into_iter().flatten() {
        assert!(*peak <= STACK, "{peak} bytes");
    }
}
