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
