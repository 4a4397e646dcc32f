//! Unit tests of the chunk writer's choice of stores: ordinary stores for a
//! chunk whose memmap its pass has just populated (when the backing says that
//! leaves it in cache), non-temporal ones otherwise.

use super::*;
use crate::layout::{LayoutBuilder, RangeKind};
use crate::section::SectionSlot;
use crate::types::NodeId;

const MIB: u64 = 1 << 20;

/// A slice memmap whose populate leaves it in cache if `warm` says so.
struct Warm<'m> {
    slice: SliceBacking<'m>,
    warm: bool,
}

// SAFETY: every promise is the slice backing's, which this delegates to; the
// answer of `populate_leaves_memmap_cached` is fixed at creation.
unsafe impl MemmapBacking for Warm<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        self.slice.descriptors()
    }

    fn granularity(&self) -> Granularity {
        self.slice.granularity()
    }

    fn populate_leaves_memmap_cached(&self) -> bool {
        self.warm
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        self.slice.populate(piece, layout, pages)
    }
}

/// Runs `f` on a memmap of two 8 MiB sections of 4 MiB chunks (chunks 0 and 1
/// in section 0, 2 and 3 in section 1) over `Warm { warm }`.
fn with_memmap(
    warm: bool,
    granularity: Granularity,
    f: impl FnOnce(&Memmap<'_, Warm<'_>>, &Layout),
) {
    let mut b = LayoutBuilder::new();
    b.section_size(8 * MIB)
        .add(0, 16 * MIB, RangeKind::Usable, NodeId(0));
    let layout = b.build().unwrap();
    let mut memory = Box::<[Page]>::new_uninit_slice(layout.memmap_descriptors() as usize);
    let slots: Vec<SectionSlot> = (0..layout.section_count())
        .map(|_| SectionSlot::new())
        .collect();
    let sections = Sections::new(&slots, 0, 2, 1, [(0, 4)].into_iter()).unwrap();
    let backing = Warm {
        slice: SliceBacking::new(&mut memory).with_granularity(granularity),
        warm,
    };
    let memmap = Memmap::new(backing, sections, &layout, 10).unwrap();
    f(&memmap, &layout);
}

/// The stores chunk `chunk`'s writer would use in `pass`; the claim is given
/// back unwritten.
fn stores_of(
    memmap: &Memmap<'_, Warm<'_>>,
    layout: &Layout,
    chunk: usize,
    pass: &mut InitPass,
) -> Stores {
    let claim = memmap.sections().claim(chunk).unwrap();
    memmap.populate(claim, layout, pass).unwrap().0.stores()
}

#[test]
fn a_pass_writes_the_section_it_populated_with_ordinary_stores() {
    with_memmap(true, Granularity::Section, |m, layout| {
        let mut pass = InitPass::new();
        assert_eq!(stores_of(m, layout, 0, &mut pass), Stores::Cached);
        // The same pass, the next chunk of the section it populated.
        assert_eq!(stores_of(m, layout, 1, &mut pass), Stores::Cached);
        // Another pass finds the section populated by someone else, earlier.
        assert_eq!(
            stores_of(m, layout, 1, &mut InitPass::new()),
            Stores::Streaming
        );
        // A pass moving on to a section it populates.
        assert_eq!(stores_of(m, layout, 2, &mut pass), Stores::Cached);
        assert_eq!(stores_of(m, layout, 0, &mut pass), Stores::Streaming);
        // Having moved on, the pass no longer takes section 1 for its own.
        assert_eq!(stores_of(m, layout, 3, &mut pass), Stores::Streaming);
    });
}

#[test]
fn memmap_that_may_be_cold_gets_non_temporal_stores() {
    with_memmap(false, Granularity::Section, |m, layout| {
        let mut pass = InitPass::new();
        for chunk in 0..4 {
            assert_eq!(stores_of(m, layout, chunk, &mut pass), Stores::Streaming);
        }
    });
}

#[test]
fn a_chunk_s_own_memmap_is_cached_only_when_just_populated() {
    with_memmap(true, Granularity::Chunk, |m, layout| {
        let mut pass = InitPass::new();
        assert_eq!(stores_of(m, layout, 0, &mut pass), Stores::Cached);
        // Populated once, by the claim given back above.
        assert_eq!(stores_of(m, layout, 0, &mut pass), Stores::Streaming);
        assert_eq!(stores_of(m, layout, 1, &mut pass), Stores::Cached);
    });
}

/// Writes `count` descriptors at `offset` into a buffer of sentinel words with
/// `stores`, and checks every descriptor of the run and none around it.
fn check_run(count: usize, offset: usize, stores: Stores) {
    const SENTINEL: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    let words = [1, 2, 3, 4, 5, 6, 7, 8];
    let len = offset + count + 2;
    let mut buffer = Box::<[Page]>::new_uninit_slice(len);
    let base = buffer.as_mut_ptr().cast::<Page>();
    for i in 0..len {
        // SAFETY: inside the buffer, which is this test's alone; any eight
        // words are valid bytes for a `Page`.
        unsafe { base.add(i).cast::<[u64; 8]>().write([SENTINEL; 8]) };
    }
    // SAFETY: the `count` descriptors from `offset` on are inside the buffer
    // (valid for reads and writes, aligned as `Page` is: 64 bytes) and this
    // test's alone.
    unsafe { store::descriptors(base.add(offset), count, words, stores) };
    for i in 0..len {
        // SAFETY: inside the buffer, every word written above or by the store.
        let got = unsafe { base.add(i).cast::<[u64; 8]>().read() };
        let want = if (offset..offset + count).contains(&i) {
            words
        } else {
            [SENTINEL; 8]
        };
        assert_eq!(
            got, want,
            "descriptor {i} of a run of {count} at {offset} ({stores:?})"
        );
    }
}

#[test]
fn both_kinds_of_stores_write_every_descriptor_of_a_run_and_nothing_else() {
    for stores in [Stores::Cached, Stores::Streaming] {
        // Around the cached stores' seed (16) and its multiples, and a run of
        // a whole 2 MiB of memmap.
        for count in [
            0, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 1024, 32768,
        ] {
            if cfg!(miri) && count > 1024 {
                // Plain stores under Miri: the small runs cover them.
                continue;
            }
            for offset in [0, 1, 5] {
                check_run(count, offset, stores);
            }
        }
    }
}
