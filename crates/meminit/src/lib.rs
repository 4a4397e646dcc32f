//! # meminit: a physical page allocator whose memmap is initialised lazily
//!
//! A kernel's page allocator needs a descriptor for every page frame (Linux's
//! `struct page`: 64 bytes per 4 KiB page, 1/64 of memory). Writing them is the
//! slowest part of bringing memory up on a large machine, and in a small virtual
//! machine they are dead weight its host keeps resident. meminit writes almost
//! nothing at start-up and initialises descriptors a *chunk* at a time when they
//! are needed:
//!
//! - [`Strategy::Eager`]: every chunk at start-up, like a kernel without deferred
//!   initialisation.
//! - [`Strategy::Deferred`]: nothing at start-up; the embedder runs
//!   [`Allocator::run_deferred_worker`] on as many threads or CPUs per node as it
//!   has, and they split the chunks between them without a lock.
//! - [`Strategy::OnDemand`]: nothing at start-up and nothing in the background. The
//!   memmap, and the memory under it, exist only where memory is used.
//!
//! Under every strategy an allocation that finds its zone empty while uninitialised
//! memory remains there initialises another chunk of that zone and retries (the
//! *grow path*), so no allocation fails for lack of initialised memory. Once every
//! chunk is done, one flag switches growth off (a chunk given back switches it on
//! again); the fast path never had a check.
//!
//! ## Sections and chunks
//!
//! Two units, as in the project's design words:
//!
//! - the **section** (128 MiB by default, [`LayoutBuilder::section_size`]) is the
//!   unit of *memmap backing*: the backing maps a section's 2 MiB of descriptors at
//!   once (one huge page), when the first chunk of the section is initialised;
//! - the **chunk** (one max-order block, 4 MiB, 1024 descriptors, 64 KiB of memmap
//!   by default; [`Config::chunk_size`], a power of two up to a section, at most
//!   [`MAX_CHUNKS_PER_SECTION`] per section) is the unit of *initialisation*: what
//!   one claim covers, what the grow path writes before an allocation returns (tens
//!   of microseconds, not the milliseconds of a section), and what
//!   [`MemmapBacking::accept`] is asked to accept (TDX, SNP) or zero before first
//!   use, exactly once.
//!
//! A backing that wants resident memmap to follow chunks rather than sections
//! returns [`Granularity::Chunk`] from [`MemmapBacking::granularity`] and is then
//! asked to populate each chunk's 64 KiB (small pages) instead. One whose
//! `populate` leaves the memmap in cache (it zeroes the pages it maps, or a
//! hypervisor zeroes them on the first touch) says so with
//! [`MemmapBacking::populate_leaves_memmap_cached`]: the chunks written right
//! after are then stored with ordinary stores rather than non-temporal ones.
//!
//! ## Embedding: a page allocator in a `static`, with no heap
//!
//! You provide the memory map (a [`LayoutBuilder`] of byte ranges, each usable,
//! reserved or other, on a NUMA node), a [`MemmapBacking`] (the virtual range of
//! the descriptor array, indexed by pfn from [`Layout::memmap_start`], and a
//! `populate` that maps a section's (or chunk's) part of it when first needed),
//! one [`SectionSlot`] per section and one [`CpuCache`] per CPU in `static`s,
//! and a lock type (any [`lock_api::RawMutex`]; [`IrqSafe`] makes a spin lock
//! interrupt-safe over your "interrupts off / restore" pair). An
//! [`AllocatorCell`] holds the allocator itself in a `static`: it is started
//! there, in place, and shared as `&'static` after. This is a whole embedding,
//! with no `unsafe` and no heap (a small kernel whose memmap sits in its image;
//! a larger one writes its own backing that maps the memmap on demand, as the
//! repository's `examples/kernel.rs` and guest kernel do):
//!
//! ```
//! use meminit::{AllocRequest, Allocator, AllocatorCell, Config, CpuCache, CpuId, FreeRequest,
//!               InitError, Interrupts, IrqSafe, LayoutBuilder, NodeId, RangeKind, SectionSlot,
//!               SliceBacking, StaticMemmap, Strategy};
//!
//! /// The kernel's interrupt control (here a host, where there is none).
//! struct Cpu;
//! impl Interrupts for Cpu {
//!     fn disable() -> bool { false } // x86-64: read IF, then `cli`
//!     fn restore(_on: bool) {}       // x86-64: `sti` if IF was set
//! }
//! type Lock = IrqSafe<spin::mutex::SpinMutex<()>, Cpu>;
//!
//! const MEMORY: u64 = 64 << 20; // 64 MiB of RAM: 16 Ki pages, 1 MiB of descriptors
//! static MEMMAP: StaticMemmap<{ (MEMORY >> 12) as usize }> = StaticMemmap::new();
//! static SLOTS: [SectionSlot; 16] = [const { SectionSlot::new() }; 16];
//! static CPUS: [CpuCache<Lock>; 4] = [const { CpuCache::new() }; 4];
//! static PAGES: AllocatorCell<SliceBacking<'static>, Lock> = AllocatorCell::new();
//!
//! /// Called once, early, on the boot CPU, from the firmware's memory map.
//! fn boot() -> Result<&'static Allocator<'static, SliceBacking<'static>, Lock>, InitError> {
//!     let mut map = LayoutBuilder::new();
//!     map.section_size(4 << 20) // 16 sections of 4 MiB, one slot each
//!         .add(0x1000, 0x9f000, RangeKind::Usable, NodeId(0))
//!         .add(0x100000, MEMORY, RangeKind::Usable, NodeId(0))
//!         .add(0x100000, 0x400000, RangeKind::Reserved, NodeId(0)); // the kernel image
//!     let Some(backing) = MEMMAP.take() else {
//!         return Err(InitError::AlreadyStarted);
//!     };
//!     // Validated straight into the cell: no layout or allocator on the stack.
//!     PAGES.build(&map, |_layout| Ok(backing), &SLOTS, &CPUS, Config::new(Strategy::OnDemand))
//! }
//!
//! let pages = boot()?;
//! assert_eq!(pages.stats().memmap_bytes, 0); // nothing written at start-up
//!
//! // On CPU 0: a page. The first allocation initialises one chunk (4 MiB, 64 KiB
//! // of descriptors) of its zone, and no more.
//! let page = pages.alloc(AllocRequest::order(0).on(CpuId(0)))?;
//! assert_eq!(pages.stats().memmap_bytes, 1024 * 64);
//! // Freed on another CPU, into that CPU's cache; the descriptor knows the order.
//! assert_eq!(pages.free(FreeRequest::pfn(page).on(CpuId(1)))?, 0);
//! assert!(pages.free(page).is_err()); // a double free is refused
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every allocation is an [`AllocRequest`]: the order, then the calling CPU
//! (whose cache serves orders 0 to 3 and the pageblock order), the zones
//! ([`Constraint`]), the preferred node and the [`AllocFlags`]. Every free is a
//! [`FreeRequest`] (or a bare [`Pfn`]: through the zones, the order read from the
//! descriptor). Pages are named by [`Pfn`] (ranges by `Range<Pfn>`) and nodes by
//! [`NodeId`] everywhere. Every public function answers any argument with a
//! value, `None`, an empty answer or a typed error; none panics.
//!
//! A whole kernel-style embedding is in the crate's `examples/kernel.rs` (run by
//! `cargo test`; `cargo run -p meminit --example kernel` on Linux): two NUMA nodes
//! with a hole and a reservation inside usable memory, a vmemmap mapped section by
//! section with the section's own pages and a page-table page from the
//! [`PageSource`], start-up in place on a 16 KiB stack, deferred workers per node,
//! `NO_GROW`, `THIS_NODE` and `ZEROED` allocations, the kernel's per-page data
//! ([`PageMeta`]) and free page reporting. `examples/bare` builds the embedding
//! above for `x86_64-unknown-none`.
//!
//! With [`Strategy::Deferred`], start workers after start-up:
//!
//! ```ignore
//! std::thread::scope(|s| {
//!     for (node, _) in allocator.layout().nodes() {
//!         for _ in 0..threads_per_node {
//!             s.spawn(|| allocator.run_deferred_worker(node));
//!         }
//!     }
//! });
//! ```
//!
//! A worker initialises a section's chunks in runs of up to [`WORKER_RUN`],
//! each claimed, published and put on the free lists together.
//! A worker whose chunk cannot be populated goes on with the others, tries the
//! failed ones again [`WORKER_RETRIES`] times, and reports those it could not do
//! in its [`WorkerReport`] (`failed`, `error`); they stay uninitialised, and the
//! grow path takes them when their zone needs them.
//!
//! ## The backing: pages for its own mapping, and calls back
//!
//! A kernel's `populate` needs pages: for the memmap itself and for the page
//! tables that map it. It must not ask the allocator for them (under
//! [`Strategy::Eager`] there is none yet, and otherwise the allocator is the
//! caller). It takes them from the [`PageSource`] that every `populate` of a
//! section is lent: naturally aligned blocks of the section's own usable pages,
//! one after the other in one run of the section, at most [`MAX_SOURCE_PAGES`] per
//! call. They are recorded with the section (as [`Populated::taken`] is), get
//! reserved descriptors and are never handed out; `accept` is told which pages of
//! its chunk they are, so that it does not zero them. Ask for the memmap's block
//! first, then single pages for tables:
//!
//! ```ignore
//! fn populate(&self, piece: MemmapPiece, _: &Layout, pages: &mut PageSource<'_>)
//!     -> Result<Populated, BackingError>
//! {
//!     let fail = |e: SourceError| BackingError { section: piece.section, reason: e.reason() };
//!     let memmap = pages.take(9).map_err(fail)?;          // 2 MiB: the section's memmap
//!     if self.needs_page_directory(piece) {
//!         let table = pages.take(0).map_err(fail)?;       // right after it
//!         self.link_page_directory(piece, table);         // cleared first
//!     }
//!     self.map_2mib(piece, memmap);
//!     Ok(Populated::ELSEWHERE)                            // the source's pages are recorded anyway
//! }
//! ```
//!
//! Under [`Granularity::Chunk`] the source has nothing
//! ([`SourceError::ChunkGranularity`]): a chunk must stay whole, so such a backing
//! brings its own pool (the guest reserves one in the memory map).
//!
//! If a callback calls the allocator anyway, the call must not wait for what its
//! own caller holds. One rule covers every callback: the backing's `populate`,
//! `accept`, `depopulate` and `zero`, and a [`FreeReporter`]'s `report` (which
//! runs on the context of whoever called [`Allocator::report_free`]). With
//! [`Config::context`] set (a function that names the calling CPU or thread),
//! **a call from inside a callback, on the same context, is served only from
//! initialised free memory; where it would initialise a chunk or wait (for a
//! chunk, a section's memmap, a retirement, or blocks out for reporting), it
//! fails** with [`AllocError::Reentrant`], [`LookupError::Reentrant`] or
//! [`ChunkError::Reentrant`] (a worker stops with the latter). Frees, drains,
//! give-back and reporting from inside a callback simply run: none of them
//! waits on a callback's caller. The context is recorded around every callback
//! and looked up only on the paths that would initialise or wait, never on the
//! fast path. Without a context the allocator cannot tell a call back from
//! another CPU's wait, and a call back that must wait spins forever. (The
//! backing's `reuse_reported` is called under a zone lock and must not call
//! the allocator at all.)
//!
//! ## Waiting: the embedder's wait hook
//!
//! An allocation, a look-up or a worker sometimes waits for another CPU: for
//! its initialisation of a chunk, its populate of a section's memmap, its
//! give-back of a chunk, or a batch of blocks it has out for free page
//! reporting (a populate can take milliseconds, a report as long as the host
//! takes). Each such wait re-checks its condition with a pause instruction a
//! hundred-odd times, then calls [`Config::wait`] between re-checks: a `pause`
//! loop or `hlt` until the next interrupt in a kernel, `std::thread::yield_now`
//! or a sleep of tens of microseconds on a host. The hook decides nothing (the
//! condition is re-checked after it), must not call the allocator, and is never
//! called on the fast path or with an allocator lock held. Without it a waiter
//! spins: eight threads waiting on one 200 ms populate burned 0.23 s of CPU in
//! 0.22 s; with a 50 µs sleep, four such waiters use about 3% of their wall
//! time as CPU each (`tests/waiting.rs`).
//!
//! ```
//! # use meminit::*;
//! fn nap() {
//!     std::thread::sleep(std::time::Duration::from_micros(50));
//! }
//! let config = Config { wait: Some(nap), ..Config::new(Strategy::OnDemand) };
//! # let _ = config;
//! ```
//!
//! ## Stack: start-up in place
//!
//! An [`Allocator`] is about 67 KB (most of it the free lists of 48 possible
//! zones, per mobility class and order, and their depots), a [`Layout`] about 11 KB and a
//! [`LayoutBuilder`] about 6 KB. [`Allocator::new`] takes the layout and returns
//! the allocator by value, so start-up that way needs over 150 KiB of stack. A
//! kernel's boot stack is often 16 to 64 KiB, with no guard page: start in place
//! instead. [`AllocatorCell::build`] (and [`Allocator::build_in_place`], for a
//! place of your own) validates the memory map straight into the allocator's
//! place and writes every field there, making the backing only once the layout
//! is known (so it can learn [`Layout::memmap_start`] first). No value larger
//! than one zone is made on the stack, and the steps of start-up are functions
//! of their own, so that unoptimised, too, their frames do not add up.
//!
//! Measured with a painted stack on x86-64 (`tests/small_stack.rs`, which also
//! runs start-up and the first allocations on a 16 KiB stack under every
//! strategy, in each profile), the most any strategy took, in KiB:
//!
//! | path | opt-level 0 | `dev` (opt-level 1) | `release` |
//! | --- | --- | --- | --- |
//! | [`Allocator::new`], by value, with the layout passed by value | 364 | 152 | 152 |
//! | [`Allocator::init_in_place`] from a [`Layout`] built elsewhere | 6.6 | 2.2 | 3.1 |
//! | [`Allocator::build_in_place`], the builder on the caller's stack | 13.5 | 8.2 | 9.1 |
//! | [`AllocatorCell::build`], the builder on the caller's stack | 14.3 | 8.4 | 9.2 |
//! | the first allocations and frees after (growing a zone) | 7.8 | 2.5 | 2.3 |
//!
//! Of the `build` figures, about 6 KiB is the caller's builder itself: a builder
//! in a `static` leaves the rest. [`AllocatorCell::init`] and
//! [`Allocator::init_in_place`] start from a [`Layout`] built beforehand:
//! building that layout by value on the stack costs its size again and more, so
//! prefer `build` on a small stack.
//!
//! ## Per-CPU caches, and the rules in interrupt context
//!
//! An [`AllocRequest::on`] or [`FreeRequest::on`] names the calling CPU with a
//! [`CpuId`], an index into the [`CpuCache`]s lent at start-up. In a kernel that
//! is the CPU's number, read with preemption disabled (or from a per-CPU
//! variable); the caches live in a static array or in the per-CPU areas. A
//! request naming a CPU with no cache is refused ([`AllocError::UnknownCpu`],
//! [`FreeError::UnknownCpu`]); one naming no CPU goes to the zones directly (for
//! early boot, before per-CPU data exists, or when no caches were lent). Each CPU
//! keeps, per zone type and [`MobilityClass`], up to [`CACHE_HIGH`] blocks of
//! each of the orders in [`CACHED_ORDERS`] (0 to 3 and the pageblock order, as
//! Linux's per-CPU lists; a [`CpuCache`] is 9.75 KiB);
//! an empty stock is refilled and a full one drained a batch of blocks at a
//! time. Larger orders go to the zones directly.
//!
//! Between the caches and each zone's lists sits a **depot** per mobility
//! class and cached order (Bonwick and Adams' magazines and depot, USENIX
//! 2001): a full stock pushes its coldest batch there whole, and an empty one
//! pops a whole batch from there before it takes from the lists, each under a
//! lock of type `R` held for a pointer swap (the batch is chained through its
//! blocks' descriptors: no heap, no array). So a block allocated on one CPU and
//! freed on another crosses no zone lock and is neither merged nor split. A
//! depot holds at most [`DEPOT_BATCHES_PER_CPU`] batches per CPU cache lent,
//! within [`DEPOT_MAX_BATCHES`]; beyond that, batches go to the lists. Depots
//! are flushed to the lists (their blocks merge) by [`Allocator::drain`], by
//! every idle-time pass ([`Allocator::report_free`], [`Allocator::give_back`],
//! [`Allocator::tick`]), by an allocation that finds its zone's lists without
//! a block for it, and before any `OutOfMemory`. Their pages count as free
//! ([`ZoneStats::depot`]).
//!
//! A stock's batch follows its traffic, as Linux auto-tunes its per-CPU lists:
//! it starts at [`CACHE_BATCH`], doubles when a stock drains twice with no
//! refill between (its CPU frees more than it allocates: blocks allocated
//! elsewhere come back to it) and halves when it refills twice with no drain
//! between, within [`CACHE_BATCH_MAX`] (half the high mark). A cache that
//! allocated and freed nothing between two passes of [`Allocator::tick`] is
//! drained by the second: what a sleeping CPU keeps would otherwise pin its
//! chunks. A block may be freed on any CPU; a block of a zone other than the one that CPU's stock
//! holds goes back to its own zone.
//!
//! What the embedder must guarantee, and what it need not:
//!
//! - **Correctness never depends on the `CpuId`.** Each cache is behind one lock of
//!   type `R`. Its CPU takes it with `try_lock` and never waits: if the lock is held
//!   (by the context this one interrupted on the same CPU, by a thread that was
//!   preempted or migrated while it used the same id, or by a remote drain), the
//!   operation goes to the zone under the zone lock instead. A wrong or shared id
//!   costs speed, never a page. So the caller need not disable preemption around an
//!   allocation for safety; it should for speed.
//! - **A remote CPU** may only drain a cache ([`Allocator::drain`]): it waits for
//!   the owner's operation to finish, then returns every cached block to its
//!   zone. Do it for a CPU going offline. An allocation that finds every eligible
//!   zone empty drains all caches itself and looks again before it reports
//!   [`AllocError::OutOfMemory`].
//! - **Interrupt context**: an allocation or free from an interrupt handler takes
//!   zone locks (to refill, drain, or when its cache is busy) and, on the slow path,
//!   may initialise memory and call the backing. Two rules make that safe:
//!   1. if interrupt handlers allocate or free, `R` must be a lock that keeps
//!      interrupts off while held (Linux's `spin_lock_irqsave`): otherwise a
//!      handler that interrupts a zone lock's holder on the same CPU spins
//!      forever. [`IrqSafe`] makes one of any raw spin lock over your
//!      [`Interrupts`] pair. With such a lock an interrupt can never find its
//!      own CPU's cache held. No lock of `R` is ever held while another CPU's
//!      cache lock is awaited, nor while descriptors are written;
//!   2. an allocation in interrupt context sets [`AllocFlags::NO_GROW`] (Linux's
//!      `GFP_ATOMIC`): it then never initialises memory, never calls the backing
//!      (whose `populate` may sleep or take locks of its own), and never waits
//!      for another CPU's initialisation or for free page reporting; it takes a
//!      free block or fails with [`AllocError::WouldGrow`].
//!      [`AllocFlags::THIS_NODE`] keeps an allocation on its node,
//!      [`AllocFlags::ZEROED`] has the backing zero the block
//!      ([`MemmapBacking::zero`]).
//!
//! With the feature `x86_64`, `frames::Frames` offers the `x86_64` crate's
//! `FrameAllocator` and `FrameDeallocator` (4 KiB and 2 MiB frames) over one CPU's
//! cache, for kernels that already ask for page-table frames that way; its
//! `last_error` keeps why a request was refused, which the traits cannot say.
//!
//! ## Memory follows use down: give-back and free page reporting
//!
//! On-demand initialisation keeps memmap only where memory was used; once a
//! workload's memory grew and shrank again, give-back lets it follow use down.
//! Call [`Allocator::tick`] from an idle loop or a timer with the time in
//! nanoseconds: it runs one pass every half [`Config::give_back_delay_ns`]
//! (default one second; Linux's page reporting starts two seconds after the
//! free), so memory that stays free goes back within the delay, and a zone that
//! grows again soon after giving back holds its give-back for a while
//! ([`HOLD_DELAYS`] delays). A pass (also [`Allocator::report_free`], unpaced)
//! uses a [`FreeReporter`] that hands memory to the host (a virtio-balloon
//! reporting queue; see the guest kernel in this repository):
//!
//! - free blocks of a pageblock (2 MiB) or more that were not reported yet are
//!   taken off the free lists, reported, and put back marked as reported, behind
//!   the others; an allocation that finds only them waits until they are back,
//!   and the backing hears ([`MemmapBacking::reuse_reported`]) when reported
//!   memory is taken again;
//! - with [`Config::give_back`] (on by default for [`Strategy::OnDemand`]), every
//!   chunk whose usable pages all stayed free on the free lists since the
//!   previous call goes back to uninitialised, beyond [`Config::give_back_reserve`]
//!   of initialised free memory per zone: its blocks leave the lists, its pages
//!   count as uninitialised (still available), its memory is reported if it was
//!   not, and the backing may release its memmap ([`MemmapBacking::depopulate`]:
//!   the chunk's own part, or the section's once every chunk of it is given
//!   back). The next allocation that needs it initialises it again.
//!
//! [`Allocator::give_back`] does the second part alone, for a kernel with no host.
//! [`Allocator::compact`] empties nearly free movable chunks through the
//! embedder's [`Migrate`] hook (it moves a block's contents and fixes the
//! references, or refuses), so that the next pass can give them back; call it
//! before a pass, with [`Config::compact_max_used`] saying how full a chunk may
//! be to be worth it. It moves blocks out of sections that can then go back
//! whole, into sections unmovable memory keeps anyway;
//! [`Allocator::compact_up_to`] bounds a pass by pages moved, for an idle loop
//! that spreads the work over its rounds.
//! Chunks holding an allocated page, pages in CPU caches, or pages of two zones
//! are never given back; every pass first flushes the depots, whose batches
//! would pin their chunks. A descriptor reference taken before give-back stays
//! valid memory (the backing keeps the range mapped), but says nothing useful
//! about a page one does not own.
//!
//! ## Mobility classes: placement that lets memory go back
//!
//! Give-back returns only chunks that are wholly free, and a buddy allocator that
//! ignores lifetime pins them all: with 1% of order-0 pages kept at random among
//! short-lived ones, every 4 MiB chunk keeps a page and nothing comes back. An
//! allocation says what it is with [`AllocFlags::MOVABLE`] (user data, page
//! cache: memory the embedder can move or will soon free) or not (the default,
//! [`MobilityClass::Unmovable`]: kernel objects, page tables), and a chunk serves
//! one class while any of its pages is off the free lists:
//!
//! - each chunk has a *word of use* ([`ChunkUse`], in its [`SectionSlot`]): the
//!   pages of it off the free lists (allocated, in a CPU cache, or away for
//!   reporting) and its class, kept where blocks enter or leave the lists, under
//!   the zone lock, never on the CPU-cache fast path;
//! - each zone keeps free lists per class and order, and lists of wholly free
//!   chunks: a free block is on its chunk's class's lists, and joins the wholly
//!   free lists when its chunk's last page comes back;
//! - an allocation takes, in order: the smallest block that serves on its
//!   class's lists (partly used chunks fill before a wholly free one is split:
//!   the buddy's own approximation of "fullest first"), a wholly free chunk's
//!   block (the chunk becomes the class's), growth (a new chunk, wholly free),
//!   the same in the next eligible zones, and only then the **largest** block
//!   on the other class's lists (a *steal*,
//!   Linux's rule; the chunk keeps its class; counted in [`ZoneStats::steals`]).
//!   [`AllocFlags::NO_GROW`] allocations, and the last look before
//!   [`AllocError::OutOfMemory`], steal too: no allocation fails while the other
//!   class has a free block;
//! - give-back passes a chunk in use with one load of its word, no descriptor.
//!
//! With hints, the kept pages fill chunks of their own and the chunks of freed
//! movable memory are wholly free: the crate's test with 1% kept at random gets
//! every such chunk back, and none without hints. A wrong hint costs only that.
//! [`ZoneStats`] says the free pages in each class's chunks and in wholly free
//! ones; [`Allocator::miscounted_chunks`] checks every word against the
//! descriptors.
//!
//! ## Memory that arrives later: hot-plug
//!
//! A range the memory map declares [`RangeKind::Hotplug`] (a virtio-mem region,
//! whole sections) has section slots and memmap address space from start-up,
//! but no present page: its chunks are `Absent`.
//! [`Allocator::add_memory`] makes whole chunks of it present and uninitialised
//! in a few atomic operations per section, writing no descriptor; the grow path
//! initialises them when they are needed. [`Allocator::remove_memory`] takes
//! them out again: uninitialised chunks at once, initialised ones if wholly
//! free (their memmap released), and says in a [`Removed`] what it could not
//! take. Hot-plugged memory serves movable allocations first: a zone of
//! hot-pluggable memory alone comes last for unmovable ones.
//!
//! ## Guarantees
//!
//! - A chunk is initialised exactly once, by whoever claims it first (start-up, a
//!   worker, the grow path, [`Allocator::page_or_init`]); the others wait or move on.
//!   No zone lock is held while descriptors are written.
//! - A descriptor is never read before it is written: [`Allocator::page`] says
//!   [`LookupError::Uninitialised`] rather than return one. Holes and reserved pages
//!   get reserved descriptors.
//! - Per zone, free + allocated + uninitialised + reserved = present whenever no
//!   operation is in flight, and [`ZoneStats::available`] counts uninitialised pages
//!   as available.
//! - [`Allocator::free`] reads a block's order from its head descriptor, or
//!   checks the order a [`FreeRequest`] gives against it.
//! - A double free, a free with the wrong order, of a reserved or never-initialised
//!   page, or outside the map is a [`FreeError`], with nothing changed; of two frees
//!   of one block racing on two CPUs, exactly one succeeds.
//! - Pages in CPU caches and depots count as free ([`ZoneStats::cached`] and
//!   [`ZoneStats::depot`] say how many), and no allocation reports `OutOfMemory`
//!   while an eligible zone has a free block of its order (of either mobility
//!   class), memory left to initialise, or pages in a CPU's cache or a depot
//!   that could make one: it looks again after every step that could have added
//!   memory.
//!
//! ## Layers
//!
//! Dependencies run one way, from the bottom up:
//!
//! | layer | module | owns |
//! |---|---|---|
//! | vocabulary | `types` | [`Pfn`], [`NodeId`], [`ZoneType`], [`CpuId`], [`Constraint`], constants |
//! | memory map | `layout` | [`LayoutBuilder`] and its validation, the [`Layout`] of nodes, zones, sections |
//! | descriptor | `page` | the 64-byte [`Page`], its state word, the embedder's [`PageMeta`] |
//! | claims | `section` | per-section words: chunk states and the memmap's, claimed by compare-and-swap; each chunk's word of use |
//! | memmap | `memmap` | the descriptor array over a [`MemmapBacking`]: populate, write, publish, depopulate; the [`PageSource`] |
//! | free lists | `buddy`, `zone` | split and merge under one lock per zone, lists per mobility class; the zone's counters |
//! | CPU caches | `cpu_cache` | the storage of each CPU's stock of small free blocks |
//! | depots | `depot` | per zone, class and cached order, a stack of whole batches of free blocks chained through their descriptors |
//! | policy | `allocator` | start-up, allocation, free, CPU-cache policy, growth, deferred workers, give-back, hot-plug, compaction through the embedder's [`Migrate`] hook |
//! | errors, choices | `error`, `config` | the entry points' errors; [`Config`] and [`Strategy`] |
//!
//! The `unsafe` code lives in `memmap` (the descriptor array and the backing
//! contract), relying on the claim protocol of `section`; besides it, `page` views
//! the embedder's per-page data ([`PageMeta`]) and `allocator::start` writes an
//! allocator into place field by field (start-up in place). Zones, the buddy
//! lists, the per-CPU caches, the strategies and give-back are safe code over
//! them.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

mod allocator;
mod buddy;
mod cell;
mod config;
mod cpu_cache;
mod depot;
mod error;
#[cfg(feature = "x86_64")]
pub mod frames;
mod irq;
mod layout;
mod memmap;
mod page;
// The claim machinery is crate-private: an embedder only lends the slots. loom
// builds expose it so that `tests/loom.rs` can model the protocol on its own.
#[cfg(loom)]
pub mod section;
#[cfg(not(loom))]
mod section;
mod sync;
mod types;
mod zone;

pub use allocator::{
    AllocFlags, AllocPath, AllocRequest, Allocator, CompactStats, FreeReporter, FreeRequest,
    HotplugError, Migrate, MigrateError, NoReporter, Removed, ReportError, ReportStats, Stats,
    WorkerReport, HOLD_DELAYS, REPORT_BATCH, REPORT_ORDER, WORKER_RETRIES, WORKER_RUN,
};
pub use cell::AllocatorCell;
pub use config::{
    Config, Strategy, UnknownStrategy, DEFAULT_CHUNK_SIZE, DEFAULT_COMPACT_MAX_USED,
    DEFAULT_GIVE_BACK_DELAY_NS, DEFAULT_GIVE_BACK_RESERVE,
};
pub use cpu_cache::{CpuCache, CACHED_ORDERS, CACHE_BATCH, CACHE_BATCH_MAX, CACHE_HIGH};
pub use depot::{DEPOT_BATCHES_PER_CPU, DEPOT_MAX_BATCHES};
pub use error::{AllocError, ChunkError, FreeError, InitError};
pub use irq::{Interrupts, IrqSafe};
pub use layout::{
    Layout, LayoutBuilder, LayoutError, MemoryRange, MemoryRuns, NodeSpan, PresentRun, PresentRuns,
    RangeKind, ZoneSpan, DEFAULT_SECTION_SIZE, MAX_HOTPLUG_RANGES, MAX_RANGES, MIN_SECTION_SIZE,
};
pub use lock_api;
pub use memmap::{
    BackingError, Granularity, LookupError, MemmapBacking, MemmapPiece, PageSource, Populated,
    SliceBacking, SourceError, StaticMemmap, MAX_BACKING_CONTEXTS, MAX_SOURCE_PAGES,
};
pub use page::{Page, PageMeta, PageState, USER_BYTES, USER_WORDS};
pub use section::{ChunkState, ChunkUse, SectionSlot, MAX_CHUNKS_PER_SECTION};
pub use types::{
    Constraint, CpuId, MobilityClass, NodeId, Pfn, ZoneType, CLASSES, DESCRIPTOR_SIZE, MAX_NODES,
    MAX_ORDER, MAX_PFN, PAGEBLOCK_ORDER, PAGE_SHIFT, PAGE_SIZE, PHYS_ADDR_BITS, ZONE_TYPES,
};
pub use zone::ZoneStats;
