//! A backing that fails on command: a section whose memmap cannot be populated
//! must not stop growth from the zone's other sections, nor the fall-back to lower
//! zones, and the failure is reported only when nothing else can serve.

#![cfg(not(miri))]

mod common;

use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::Mutex;

use common::Lent;
use meminit::NodeId;
use meminit::{
    AllocError, Allocator, BackingError, Config, Constraint, CpuId, Layout, LayoutBuilder,
    MemmapBacking, MemmapPiece, Page, Populated, RangeKind, SliceBacking, Strategy, ZoneType,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// [`SliceBacking`], except for the sections in `failing`.
struct Failing<'m> {
    inner: SliceBacking<'m>,
    failing: Mutex<HashSet<usize>>,
}

// SAFETY: every promise is `SliceBacking`'s, to which this delegates; it only
// refuses some calls, which the trait allows.
unsafe impl MemmapBacking for Failing<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        self.inner.descriptors()
    }

    fn populate(&self, section: MemmapPiece, layout: &Layout) -> Result<Populated, BackingError> {
        if self.failing.lock().unwrap().contains(&section.section) {
            return Err(BackingError {
                section: section.section,
                reason: "injected failure",
            });
        }
        self.inner.populate(section, layout)
    }
}

type Alloc<'a> = Allocator<'a, Failing<'a>, parking_lot::RawMutex>;

fn with_failing(layout: &Layout, failing: &[usize], f: impl FnOnce(&Alloc<'_>)) {
    let mut lent = Lent::for_layout(layout);
    let backing = Failing {
        inner: SliceBacking::new(&mut lent.memmap),
        failing: Mutex::new(failing.iter().copied().collect()),
    };
    let a = Allocator::new(
        layout.clone(),
        backing,
        &lent.slots,
        &lent.cpus,
        Config::new(Strategy::OnDemand),
    )
    .unwrap();
    f(&a);
}

#[test]
fn a_failing_section_does_not_block_its_zone() {
    let mut b = LayoutBuilder::new();
    b.section_size(4 * MIB)
        .add(16 * MIB, 32 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    // Section 4 is the zone's first: it never populates.
    with_failing(&l, &[4], |a| {
        let p = a.alloc_on(CpuId(0), 0, Constraint::Any, NodeId(0)).unwrap();
        assert!(p.addr() >= 20 * MIB);
        let mut n = 1;
        let err = loop {
            match a.alloc(0, Constraint::Any, NodeId(0)) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        // Three sections served; the fourth's memory remains, unreachable: the
        // caller hears why, not "out of memory".
        assert_eq!(n, 3 * 1024);
        assert!(
            matches!(err, AllocError::Backing(BackingError { section: 4, .. })),
            "{err}"
        );
        // Once the backing recovers, the section serves.
        a.backing().failing.lock().unwrap().clear();
        let p = a.alloc(0, Constraint::Any, NodeId(0)).unwrap();
        assert!(p.addr() < 20 * MIB);
    });
}

#[test]
fn a_failing_zone_falls_back_to_the_next() {
    let mut b = LayoutBuilder::new();
    b.section_size(128 * MIB)
        .add(MIB, 256 * MIB, RangeKind::Usable, NodeId(0))
        .add(4 * GIB, 4 * GIB + 256 * MIB, RangeKind::Usable, NodeId(0));
    let l = b.build().unwrap();
    // Both sections of the Normal zone fail.
    with_failing(&l, &[32, 33], |a| {
        let p = a.alloc_on(CpuId(1), 3, Constraint::Any, NodeId(0)).unwrap();
        assert_eq!(
            a.page(p).unwrap().zone(),
            Some((NodeId(0), ZoneType::Dma32))
        );
        let z = a.zone_stats_of(NodeId(0), ZoneType::Normal).unwrap();
        assert_eq!(z.uninitialised, z.managed);
    });
}
