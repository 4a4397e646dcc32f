//! Unit tests of the claim protocols, single-threaded (the loom models race them).

use super::*;

#[test]
fn claim_is_exclusive_and_publish_is_final() {
    let slots: [SectionSlot; 2] = Default::default();
    // Two sections of four chunks; chunks 0..2 and 5 present.
    let s = Sections::new(&slots, 0, 2, 2, [(0, 2), (5, 6)].into_iter()).unwrap();
    assert_eq!(s.present(), 3);
    assert_eq!(s.state(2), ChunkState::Absent);
    assert_eq!(s.state(4), ChunkState::Absent);
    assert_eq!(s.state(5), ChunkState::Uninit);
    assert_eq!(s.unfinished(), 3);
    let c = s.claim(0).unwrap();
    assert_eq!(s.claim(0).err(), Some(ChunkState::Initialising));
    // The neighbour in the same word is claimed independently.
    let d = s.claim(1).unwrap();
    assert!(!c.publish().finish());
    assert_eq!(s.claim(0).err(), Some(ChunkState::Ready));
    assert_eq!(s.state(1), ChunkState::Initialising);
    drop(d);
    assert_eq!(s.state(1), ChunkState::Uninit);
    assert_eq!(s.claim(2).err(), Some(ChunkState::Absent));
    assert_eq!(s.claim(99).err(), Some(ChunkState::Absent));
    assert!(!s.claim(1).unwrap().publish().finish());
    assert!(!s.all_initialised());
    assert!(s.claim(5).unwrap().publish().finish());
    assert!(s.all_initialised());
}

#[test]
fn a_run_claims_the_uninit_chunks_that_follow_and_moves_them_together() {
    let slots: [SectionSlot; 2] = Default::default();
    // Two sections of eight chunks; chunks 0..6 and 8..16 present.
    let s = Sections::new(&slots, 0, 2, 3, [(0, 6), (8, 16)].into_iter()).unwrap();
    let other = s.claim(3).unwrap();
    // From 1: chunks 1 and 2, up to the one someone else holds.
    let run = s.claim_run(1, 8).unwrap();
    assert_eq!(run.chunks(), 1..3);
    assert_eq!(s.state(0), ChunkState::Uninit);
    assert_eq!(s.claim_run(2, 4).err(), Some(ChunkState::Initialising));
    // From 4: up to the absent chunk 6, whatever `most` says.
    let tail = s.claim_run(4, 100).unwrap();
    assert_eq!(tail.chunks(), 4..6);
    // Never past the section, and never more than `most` (at least one).
    let next = s.claim_run(8, 0).unwrap();
    assert_eq!(next.chunks(), 8..9);
    let rest = s.claim_run(9, 100).unwrap();
    assert_eq!(rest.chunks(), 9..16);
    assert_eq!(s.claim_run(6, 4).err(), Some(ChunkState::Absent));
    // Published together; the rest of the word is untouched.
    assert!(!run.publish().finish());
    assert_eq!(s.state(1), ChunkState::Ready);
    assert_eq!(s.state(2), ChunkState::Ready);
    assert_eq!(s.state(3), ChunkState::Initialising);
    assert_eq!(s.state(4), ChunkState::Initialising);
    // Dropped together: both back to Uninit.
    drop(tail);
    assert_eq!(
        (s.state(4), s.state(5)),
        (ChunkState::Uninit, ChunkState::Uninit)
    );
    // Cut: the chunks from the cut on go back, the rest stay held.
    let mut cut = s.claim_run(4, 2).unwrap();
    cut.give_back_from(5);
    assert_eq!(cut.chunks(), 4..5);
    assert_eq!(
        (s.state(4), s.state(5)),
        (ChunkState::Initialising, ChunkState::Uninit)
    );
    // A cut at the first chunk or past the run changes nothing.
    cut.give_back_from(4);
    cut.give_back_from(9);
    assert_eq!(cut.chunks(), 4..5);
    assert!(!cut.publish().finish());
    assert_eq!(s.state(5), ChunkState::Uninit);
    assert!(!other.publish().finish());
    assert!(!next.publish().finish());
    // The finish of a run counts all its chunks: 0, 5 and 9..16 are left.
    assert_eq!(s.unfinished(), 9);
    assert!(!s.claim_run(0, 1).unwrap().publish().finish());
    assert!(!s.claim_run(5, 1).unwrap().publish().finish());
    assert!(rest.publish().finish());
    assert!(s.all_initialised());
}

#[test]
fn a_run_of_a_whole_section_of_32_chunks_fills_the_word() {
    let slots: [SectionSlot; 1] = Default::default();
    let s = Sections::new(&slots, 0, 1, 5, [(0, 32)].into_iter()).unwrap();
    let run = s.claim_run(0, 32).unwrap();
    assert_eq!(run.chunks(), 0..32);
    assert!((0..32).all(|c| s.state(c) == ChunkState::Initialising));
    drop(run);
    assert!((0..32).all(|c| s.state(c) == ChunkState::Uninit));
    let mut run = s.claim_run(0, 32).unwrap();
    run.give_back_from(31);
    assert_eq!(s.state(31), ChunkState::Uninit);
    assert!(!run.publish().finish());
    assert!((0..31).all(|c| s.state(c) == ChunkState::Ready));
    assert!(s.claim_run(31, 32).unwrap().publish().finish());
}

#[test]
fn a_memmap_is_populated_once_and_keeps_what_was_taken() {
    let slots: [SectionSlot; 1] = Default::default();
    let s = Sections::new(&slots, 0, 1, 0, [(0, 1)].into_iter()).unwrap();
    assert_eq!(s.memmap_state(0), MemmapState::Unpopulated);
    let m = s.claim_memmap(0).unwrap();
    assert_eq!(s.claim_memmap(0).err(), Some(MemmapState::Populating));
    drop(m);
    let m = s.claim_memmap(0).unwrap();
    m.publish(7..519);
    assert_eq!(s.memmap_state(0), MemmapState::Populated(7..519));
    assert_eq!(
        s.claim_memmap(0).err(),
        Some(MemmapState::Populated(7..519))
    );
    assert_eq!(s.memmap_state(3), MemmapState::Unpopulated);
}

#[test]
fn too_few_slots_or_too_many_chunks() {
    let slots: [SectionSlot; 1] = Default::default();
    assert_eq!(
        Sections::new(&slots, 0, 2, 0, [(0, 2)].into_iter()).err(),
        Some(SlotsError::TooFew)
    );
    assert_eq!(
        Sections::new(&slots, 0, 1, 6, [(0, 1)].into_iter()).err(),
        Some(SlotsError::TooManyChunks)
    );
    // A present chunk past the slots: refused, and the slot is fresh again.
    assert_eq!(
        Sections::new(&slots, 0, 1, 0, [(0, 2)].into_iter()).err(),
        Some(SlotsError::TooFew)
    );
    assert!(!slots[0].is_owned());
    assert!(Sections::new(&slots, 0, 1, 5, [(0, 32)].into_iter()).is_ok());
    assert!(!slots[0].is_owned());
}

/// Slots start at the first section with memory: section and chunk numbers
/// stay absolute, and those before the first slot are absent.
#[test]
fn slots_start_at_the_first_present_section() {
    let slots: [SectionSlot; 2] = Default::default();
    // Sections 5 and 6 of two chunks each; chunks 11..13 present.
    let s = Sections::new(&slots, 5, 2, 1, [(11, 13)].into_iter()).unwrap();
    assert_eq!(s.present(), 2);
    assert_eq!(s.state(0), ChunkState::Absent);
    assert_eq!(s.state(9), ChunkState::Absent);
    assert_eq!(s.state(10), ChunkState::Absent);
    assert_eq!(s.state(11), ChunkState::Uninit);
    assert_eq!(s.state(12), ChunkState::Uninit);
    assert_eq!(s.state(14), ChunkState::Absent);
    assert_eq!(s.claim(3).err(), Some(ChunkState::Absent));
    assert_eq!(s.claim_memmap(4).err(), Some(MemmapState::Unpopulated));
    s.claim_memmap(6).unwrap().publish(0..0);
    assert_eq!(s.memmap_state(6), MemmapState::Populated(0..0));
    assert_eq!(s.memmap_state(5), MemmapState::Unpopulated);
    // A present chunk before the first slot is refused.
    drop(s);
    assert_eq!(
        Sections::new(&slots, 5, 2, 1, [(9, 12)].into_iter()).err(),
        Some(SlotsError::TooFew)
    );
    assert!(slots.iter().all(|s| !s.is_owned()));
}

#[test]
fn slots_in_use_are_refused_and_released_on_drop() {
    let slots: [SectionSlot; 3] = Default::default();
    let first = Sections::new(&slots[1..], 0, 2, 0, [(0, 2)].into_iter()).unwrap();
    assert!(slots[1].is_owned() && slots[2].is_owned() && !slots[0].is_owned());
    // Overlapping the owned ones: refused, naming the first owned slot, and
    // slot 0, taken on the way, is fresh again.
    assert_eq!(
        Sections::new(&slots, 0, 3, 0, [(0, 3)].into_iter()).err(),
        Some(SlotsError::InUse { index: 1 })
    );
    assert!(!slots[0].is_owned());
    // A populated memmap keeps the slot owned.
    first.claim_memmap(0).unwrap().publish(1..3);
    assert!(slots[1].is_owned());
    assert_eq!(first.memmap_state(0), MemmapState::Populated(1..3));
    drop(first);
    assert!(slots.iter().all(|s| !s.is_owned()));
    let again = Sections::new(&slots, 0, 3, 0, [(2, 3)].into_iter()).unwrap();
    assert_eq!(again.state(0), ChunkState::Absent);
    assert_eq!(again.state(2), ChunkState::Uninit);
    assert_eq!(again.memmap_state(1), MemmapState::Unpopulated);
}
