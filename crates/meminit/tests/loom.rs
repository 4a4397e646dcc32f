//! loom models of the section-claim protocol and of the grow path racing a deferred
//! worker. They drive the crate's own `section` module, compiled against loom's
//! atomics. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p meminit --release --test loom
//! ```
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use meminit::section::{SectionSlot, SectionState, Sections};

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

/// Claim, write, publish, splice, finish: what `init_section` does.
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

#[test]
fn a_section_is_claimed_once_and_read_only_when_ready() {
    loom::model(|| {
        let slots: &'static mut [SectionSlot] =
            Box::leak(vec![SectionSlot::new()].into_boxed_slice());
        let sections = Arc::new(Sections::new(slots, 1, [(0, 1)].into_iter()).unwrap());
        let memmap = Arc::new(Memmap::new(1));
        let free = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (sections, memmap, free) = (sections.clone(), memmap.clone(), free.clone());
                thread::spawn(move || {
                    if !init(&sections, &memmap, &free, 0) {
                        // The loser waits, then may read what the winner wrote.
                        assert_eq!(sections.wait_while_initialising(0), SectionState::Ready);
                        assert_eq!(memmap.read(0), 0xd00d);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(memmap.writes[0].load(Ordering::Relaxed), 1);
        assert!(sections.all_initialised());
    });
}

#[test]
fn growth_races_a_deferred_worker() {
    loom::model(|| {
        const N: usize = 2;
        let slots: &'static mut [SectionSlot] = Box::leak(
            (0..N)
                .map(|_| SectionSlot::new())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let sections = Arc::new(Sections::new(slots, N, [(0, N)].into_iter()).unwrap());
        let memmap = Arc::new(Memmap::new(N));
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
                        SectionState::Uninit => {
                            init(&sections, &memmap, &free, i);
                        }
                        SectionState::Initialising => busy = Some(i),
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
            assert_eq!(sections.state(i), SectionState::Ready);
        }
        assert!(sections.all_initialised());
        let free = free.lock().unwrap();
        assert_eq!(free.len(), N - 1);
        assert!(!free.contains(&taken));
    });
}
