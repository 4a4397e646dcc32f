//! One configurable memmap backing for the tests: [`Double`] says how it behaves,
//! [`Double::over`] puts it over a memmap slice as a [`TestBacking`].
//!
//! By default it is [`SliceBacking`] with every call recorded: the memory is all
//! there, `populate` checks the bounds, `accept` accepts, `depopulate` keeps the
//! memmap and `zero` cannot. Options make it fail `populate` or `accept` (always,
//! some times, or the next calls whatever the piece), carve the memmap and its page
//! tables out of the section's own pages as a kernel does, release the memmap it is
//! asked to depopulate (scribbling over it, so that a descriptor read before it is
//! written again shows up as garbage), zero blocks, hand out a misaligned memmap,
//! and call a hook (which may call the allocator back, wait or sleep) from
//! `populate`, `accept`, `depopulate` and `zero`.
//!
//! Whatever the options, it checks the allocator's side of the contract: no piece
//! is populated while it is populated, none depopulated unless it is.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use meminit::{
    BackingError, Granularity, Layout, MemmapBacking, MemmapPiece, Page, PageSource, Pfn,
    Populated, SliceBacking, SourceError,
};

/// Where a [`Hook`] is called from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// [`MemmapBacking::populate`], first thing.
    Populate,
    /// [`MemmapBacking::accept`], first thing.
    Accept,
    /// [`MemmapBacking::depopulate`], first thing.
    Depopulate,
    /// [`MemmapBacking::zero`], first thing: the piece is the block to zero (in
    /// its section).
    Zero,
}

/// Called first thing from inside `populate`, `accept`, `depopulate` and `zero`
/// with the piece, chunk or block: it may wait, sleep, or call the allocator back.
pub type Hook = Box<dyn Fn(Phase, MemmapPiece) + Send + Sync>;

/// One call into a [`TestBacking`], in the order they came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `populate`, and whether it returned `Ok`.
    Populate { piece: MemmapPiece, ok: bool },
    /// `accept`, with the pages it was told were taken, and whether it returned
    /// `Ok`.
    Accept {
        chunk: MemmapPiece,
        taken: Range<u64>,
        ok: bool,
    },
    /// `depopulate`.
    Depopulate(MemmapPiece),
    /// `zero`.
    Zero(Range<Pfn>),
    /// `reuse_reported`.
    ReuseReported(Range<Pfn>),
}

/// Injected failures: the keys that always fail, the keys that fail a number of
/// times more, and a number of calls more that fail whatever their key.
#[derive(Default, Debug)]
struct Faults {
    always: HashSet<u64>,
    times: HashMap<u64, u32>,
    next: u32,
}

impl Faults {
    /// Whether the call for `key` fails; counts it down if it fails for a time.
    fn hit(&mut self, key: u64) -> bool {
        if self.next > 0 {
            self.next -= 1;
            return true;
        }
        match self.times.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => self.always.contains(&key),
        }
    }
}

/// How a [`TestBacking`] behaves: a builder, made before the memmap it will serve.
#[derive(Default)]
pub struct Double {
    granularity: Option<Granularity>,
    /// Keyed by section.
    populate_faults: Faults,
    /// Keyed by the piece's first pfn.
    piece_faults: Faults,
    /// Keyed by the chunk's first pfn.
    accept_faults: Faults,
    carving: bool,
    returned: Option<fn(Range<u64>) -> Range<u64>>,
    releasing: bool,
    zeroing: bool,
    misaligned: bool,
    hook: Option<Hook>,
}

impl Double {
    /// [`SliceBacking`], every call recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Populates in pieces of `granularity` (sections by default).
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = Some(granularity);
        self
    }

    /// `populate` fails for these sections, until [`TestBacking::recover`].
    pub fn failing_populate(mut self, sections: impl IntoIterator<Item = usize>) -> Self {
        let sections = sections.into_iter().map(|s| s as u64);
        self.populate_faults.always.extend(sections);
        self
    }

    /// Fails every `populate` of the piece that starts at `start` (a chunk,
    /// under [`Granularity::Chunk`]), whatever its section.
    pub fn failing_populate_of(mut self, start: Pfn) -> Self {
        self.piece_faults.always.insert(start.0);
        self
    }

    /// `populate` fails the next `n` times it is asked for `section`.
    pub fn failing_populate_times(mut self, section: usize, n: u32) -> Self {
        self.populate_faults.times.insert(section as u64, n);
        self
    }

    /// The next `n` calls of `populate` fail, whatever the section.
    pub fn failing_next_populates(mut self, n: u32) -> Self {
        self.populate_faults.next = n;
        self
    }

    /// `accept` fails for the chunks starting at these pfns, until
    /// [`TestBacking::recover`].
    pub fn failing_accept(mut self, chunks: impl IntoIterator<Item = Pfn>) -> Self {
        self.accept_faults
            .always
            .extend(chunks.into_iter().map(|p| p.0));
        self
    }

    /// `accept` fails the next `n` times it is asked for the chunk starting at
    /// `chunk`.
    pub fn failing_accept_times(mut self, chunk: Pfn, n: u32) -> Self {
        self.accept_faults.times.insert(chunk.0, n);
        self
    }

    /// The next `n` calls of `accept` fail, whatever the chunk.
    pub fn failing_next_accepts(mut self, n: u32) -> Self {
        self.accept_faults.next = n;
        self
    }

    /// A kernel's `populate`: the memmap "mapped" on a naturally aligned block of
    /// the section's own pages and two page-table pages right after it, all from
    /// the [`PageSource`] (whose failures fail the call and are recorded).
    pub fn carving(mut self) -> Self {
        self.carving = true;
        self
    }

    /// `populate` returns `f(the pages the source gave)` as [`Populated::taken`]
    /// (nothing by default). The tests pick `f`; the contract wants the result
    /// adjacent to the source's pages.
    pub fn returning_taken(mut self, f: fn(Range<u64>) -> Range<u64>) -> Self {
        self.returned = Some(f);
        self
    }

    /// `depopulate` releases the piece: returns `true`, after overwriting its
    /// descriptors with garbage (as released memory may read).
    pub fn releasing(mut self) -> Self {
        self.releasing = true;
        self
    }

    /// `zero` succeeds (it only records what it was asked); by default it cannot.
    pub fn zeroing(mut self) -> Self {
        self.zeroing = true;
        self
    }

    /// `descriptors` points 8 bytes past the memmap's start: misaligned, against
    /// the contract.
    ///
    /// # Safety
    ///
    /// Only for an allocator that must refuse the backing before it reads or
    /// writes a descriptor: no call but `descriptors` may reach it.
    pub unsafe fn misaligned(mut self) -> Self {
        self.misaligned = true;
        self
    }

    /// Calls `hook` first thing in every `populate`, `accept`, `depopulate` and
    /// `zero` (it can also be set later, once, with [`TestBacking::set_hook`]).
    pub fn hook(mut self, hook: impl Fn(Phase, MemmapPiece) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// The backing, over `memmap`: the descriptors of `layout`'s pfns from
    /// [`Layout::memmap_start`].
    pub fn over<'m>(self, memmap: &'m mut [MaybeUninit<Page>], layout: &Layout) -> TestBacking<'m> {
        let granularity = self.granularity.unwrap_or(Granularity::Section);
        let hook = OnceLock::new();
        if let Some(h) = self.hook {
            let _ = hook.set(h);
        }
        TestBacking {
            inner: SliceBacking::new(memmap).with_granularity(granularity),
            memmap_start: layout.memmap_start(),
            section_shift: layout.section_shift(),
            populate_faults: Mutex::new(self.populate_faults),
            piece_faults: Mutex::new(self.piece_faults),
            accept_faults: Mutex::new(self.accept_faults),
            carving: self.carving,
            returned: self.returned,
            releasing: self.releasing,
            zeroing: self.zeroing,
            misaligned: self.misaligned,
            hook,
            calls: Mutex::new(Vec::new()),
            populated: Mutex::new(HashSet::new()),
            carved: Mutex::new(Vec::new()),
            source_errors: Mutex::new(Vec::new()),
        }
    }
}

/// A memmap backing over a slice that behaves as its [`Double`] said, and records
/// every call.
pub struct TestBacking<'m> {
    inner: SliceBacking<'m>,
    memmap_start: Pfn,
    /// `layout.section_shift()`: which section a block to zero is in.
    section_shift: u32,
    populate_faults: Mutex<Faults>,
    piece_faults: Mutex<Faults>,
    accept_faults: Mutex<Faults>,
    carving: bool,
    returned: Option<fn(Range<u64>) -> Range<u64>>,
    releasing: bool,
    zeroing: bool,
    misaligned: bool,
    hook: OnceLock<Hook>,
    calls: Mutex<Vec<Call>>,
    /// The first pfns of the pieces populated now.
    populated: Mutex<HashSet<u64>>,
    /// Per carving `populate`: the pages the source gave.
    carved: Mutex<Vec<Range<u64>>>,
    source_errors: Mutex<Vec<SourceError>>,
}

impl TestBacking<'_> {
    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls so far `which` picks.
    pub fn count(&self, which: impl Fn(&Call) -> bool) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| which(c))
            .count()
    }

    /// Calls of `populate` so far, failed ones included.
    pub fn populates(&self) -> usize {
        self.count(|c| matches!(c, Call::Populate { .. }))
    }

    /// Calls of `populate` so far for `section`, failed ones included.
    pub fn populates_of(&self, section: usize) -> u32 {
        let of = |c: &Call| matches!(c, Call::Populate { piece, .. } if piece.section == section);
        self.count(of) as u32
    }

    /// How many pieces are populated now (populated and not released since).
    pub fn populated_now(&self) -> usize {
        self.populated.lock().unwrap().len()
    }

    /// What `pick` takes from each call so far, in order.
    pub fn pick<T>(&self, pick: impl Fn(&Call) -> Option<T>) -> Vec<T> {
        self.calls.lock().unwrap().iter().filter_map(pick).collect()
    }

    /// The first pfns of the chunks accepted so far (the calls that succeeded),
    /// in order.
    pub fn accepted(&self) -> Vec<u64> {
        self.pick(|c| match c {
            Call::Accept {
                chunk, ok: true, ..
            } => Some(chunk.start.0),
            _ => None,
        })
    }

    /// What `accept` was told was taken, where that was anything, in order.
    pub fn accept_taken(&self) -> Vec<Range<u64>> {
        self.pick(|c| match c {
            Call::Accept { taken, .. } if !taken.is_empty() => Some(taken.clone()),
            _ => None,
        })
    }

    /// The blocks `zero` was asked to zero, in order.
    pub fn zeroed(&self) -> Vec<Range<Pfn>> {
        self.pick(|c| match c {
            Call::Zero(pages) => Some(pages.clone()),
            _ => None,
        })
    }

    /// What `reuse_reported` was told, in order.
    pub fn reused(&self) -> Vec<Range<Pfn>> {
        self.pick(|c| match c {
            Call::ReuseReported(pages) => Some(pages.clone()),
            _ => None,
        })
    }

    /// Per carving `populate` that got its pages: the pages the source gave.
    pub fn carved(&self) -> Vec<Range<u64>> {
        self.carved.lock().unwrap().clone()
    }

    /// The page source's refusals, in order.
    pub fn source_errors(&self) -> Vec<SourceError> {
        self.source_errors.lock().unwrap().clone()
    }

    /// No more injected failures, of `populate` or `accept`.
    pub fn recover(&self) {
        *self.populate_faults.lock().unwrap() = Faults::default();
        *self.piece_faults.lock().unwrap() = Faults::default();
        *self.accept_faults.lock().unwrap() = Faults::default();
    }

    /// Sets the hook (see [`Double::hook`]), if none is set yet: typically one that
    /// holds a reference to the allocator over this backing.
    pub fn set_hook(&self, hook: impl Fn(Phase, MemmapPiece) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    fn call_hook(&self, phase: Phase, piece: MemmapPiece) {
        if let Some(hook) = self.hook.get() {
            hook(phase, piece);
        }
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    /// The carving part of `populate`: the memmap's block and two page tables
    /// from the source, recorded.
    fn carve(&self, piece: MemmapPiece, pages: &mut PageSource<'_>) -> Result<(), BackingError> {
        let fail = |e: SourceError| {
            self.source_errors.lock().unwrap().push(e);
            BackingError {
                section: piece.section,
                reason: e.reason(),
            }
        };
        // The memmap: 64 bytes a page, in a naturally aligned block.
        let order = (piece.memmap_bytes() / 4096).trailing_zeros();
        let block = pages.take(order).map_err(fail)?;
        // Two page tables: a page directory and a page table.
        let pd = pages.take(0).map_err(fail)?;
        let pt = pages.take(0).map_err(fail)?;
        assert_eq!(pd.0, block.0 + (1 << order));
        assert_eq!(pt.0, pd.0 + 1);
        assert_eq!(pages.taken(), block.0..pt.0 + 1);
        self.carved.lock().unwrap().push(pages.taken());
        Ok(())
    }

    fn try_populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        if self
            .populate_faults
            .lock()
            .unwrap()
            .hit(piece.section as u64)
            || self.piece_faults.lock().unwrap().hit(piece.start.0)
        {
            return Err(BackingError {
                section: piece.section,
                reason: "injected failure",
            });
        }
        if self.carving {
            self.carve(piece, pages)?;
        }
        self.inner.populate(piece, layout, pages)?;
        let taken = self.returned.map_or(Pfn(0)..Pfn(0), |f| {
            let r = f(pages.taken());
            Pfn(r.start)..Pfn(r.end)
        });
        assert!(
            self.populated.lock().unwrap().insert(piece.start.0),
            "{piece:?} populated twice"
        );
        Ok(Populated { taken })
    }
}

// SAFETY: the memory is the exclusive borrow `SliceBacking` holds; this backing
// writes to it only in `depopulate` (when releasing), which the allocator calls for
// a piece none of whose chunks is readable, and then only from the one thread that
// retired the piece. Everything else it holds is behind mutexes or in a `OnceLock`
// of a `Send + Sync` hook.
unsafe impl Sync for TestBacking<'_> {}
// SAFETY: as above; the borrow moves with the backing.
unsafe impl Send for TestBacking<'_> {}

// SAFETY: the descriptors are `SliceBacking`'s (one aligned slice, exclusively
// borrowed for `'m`, the same pointer every time), and `populate` succeeds only
// where `SliceBacking::populate` does, so its promises hold, but for what the
// options change, each within the contract: failures are allowed; carving takes
// pages only from the page source, and `returning_taken` is set only by tests that
// make the range adjacent to them (or test that the allocator refuses it);
// `depopulate` when releasing overwrites the piece's descriptors but keeps them
// mapped and valid memory; the granularity is fixed at creation. The one exception
// is `misaligned`, whose own safety rule limits it to an allocator that refuses the
// backing before it touches a descriptor.
unsafe impl MemmapBacking for TestBacking<'_> {
    fn descriptors(&self) -> NonNull<Page> {
        let base = self.inner.descriptors();
        if !self.misaligned {
            return base;
        }
        let p = base.as_ptr().cast::<u8>().wrapping_add(8);
        NonNull::new(p.cast()).unwrap()
    }

    fn granularity(&self) -> Granularity {
        self.inner.granularity()
    }

    fn populate(
        &self,
        piece: MemmapPiece,
        layout: &Layout,
        pages: &mut PageSource<'_>,
    ) -> Result<Populated, BackingError> {
        self.call_hook(Phase::Populate, piece);
        let result = self.try_populate(piece, layout, pages);
        let ok = result.is_ok();
        self.record(Call::Populate { piece, ok });
        result
    }

    fn accept(
        &self,
        chunk: MemmapPiece,
        taken: Range<u64>,
        _: &Layout,
    ) -> Result<(), BackingError> {
        self.call_hook(Phase::Accept, chunk);
        let fails = self.accept_faults.lock().unwrap().hit(chunk.start.0);
        self.record(Call::Accept {
            chunk,
            taken,
            ok: !fails,
        });
        if fails {
            return Err(BackingError {
                section: chunk.section,
                reason: "injected: the chunk could not be accepted",
            });
        }
        Ok(())
    }

    fn depopulate(&self, piece: MemmapPiece) -> bool {
        self.call_hook(Phase::Depopulate, piece);
        self.record(Call::Depopulate(piece));
        let mut populated = self.populated.lock().unwrap();
        assert!(
            populated.contains(&piece.start.0),
            "{piece:?} depopulated but not populated"
        );
        if !self.releasing {
            return false;
        }
        populated.remove(&piece.start.0);
        let offset = piece.start.0 - self.memmap_start.0;
        // SAFETY: the piece lies in the slice (`populate` succeeded for it, inside
        // `SliceBacking`'s bounds), and no chunk of it is readable: the allocator
        // asks only then. A descriptor is all atomics, so a stale `&Page` a test may
        // still hold stays valid; no test reads one while a give-back runs.
        unsafe {
            self.inner
                .descriptors()
                .as_ptr()
                .add(offset as usize)
                .cast::<u8>()
                .write_bytes(0xa5, piece.memmap_bytes() as usize)
        };
        true
    }

    fn reuse_reported(&self, pages: Range<Pfn>) {
        self.record(Call::ReuseReported(pages));
    }

    fn zero(&self, pages: Range<Pfn>) -> Result<(), BackingError> {
        let block = MemmapPiece {
            section: (pages.start.0 >> self.section_shift) as usize,
            start: pages.start,
            end: pages.end,
        };
        self.call_hook(Phase::Zero, block);
        self.record(Call::Zero(pages.clone()));
        if self.zeroing {
            Ok(())
        } else {
            self.inner.zero(pages)
        }
    }
}
