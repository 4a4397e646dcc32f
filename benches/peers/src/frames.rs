//! The allocators under test behind one trait, [`Frames`]: meminit (with either
//! lock type, with or without per-CPU caches), LLFree, `buddy_system_allocator`,
//! and no allocator at all. It owns their set-up on the same number of frames; it
//! does not run threads or time anything (`workloads` does).

use std::mem::MaybeUninit;

use llfree::{Alloc, Class, Classing, FrameId, Init, LLFree, MetaData, Request};
use lock_api::RawMutex;
use meminit::{
    AllocRequest, Allocator, Config, CpuCache, CpuId, FreeRequest, LayoutBuilder, NodeId, Page,
    RangeKind, SectionSlot, SliceBacking, Strategy,
};

/// Frames (blocks of 2^order), shared by threads; `cpu` is the calling thread's
/// CPU index (for a free: the CPU it runs the free on, not necessarily the
/// allocation's).
pub(crate) trait Frames: Sync {
    fn alloc_order(&self, cpu: usize, order: u32) -> u64;
    fn free_order(&self, cpu: usize, frame: u64, order: u32);
    #[inline]
    fn alloc(&self, cpu: usize) -> u64 {
        self.alloc_order(cpu, 0)
    }
    #[inline]
    fn free(&self, cpu: usize, frame: u64) {
        self.free_order(cpu, frame, 0)
    }
    /// After a run, with every frame freed: whether all frames are free again.
    fn check(&self) -> Result<(), String>;
}

/// meminit over a heap memmap; `CACHED` picks `alloc_on`/`free_on` or `alloc`/`free`.
pub(crate) struct Meminit<R: RawMutex + 'static, const CACHED: bool> {
    pub(crate) a: Allocator<'static, SliceBacking<'static>, R>,
    pub(crate) usable: u64,
}

impl<R: RawMutex + 'static, const CACHED: bool> Meminit<R, CACHED> {
    pub(crate) fn new(frames: u64, cpus: usize) -> Self {
        let mut map = LayoutBuilder::new();
        map.add(0, frames * 4096, RangeKind::Usable, NodeId(0));
        let layout = map.build().expect("layout");
        // Leaked: they live as long as the benchmark.
        let memmap: &'static mut [MaybeUninit<Page>] =
            Box::leak(Box::new_uninit_slice(layout.memmap_descriptors() as usize));
        let slots: &'static [SectionSlot] = Box::leak(
            (0..layout.section_count())
                .map(|_| SectionSlot::new())
                .collect(),
        );
        let caches: &'static [CpuCache<R>] = if CACHED {
            Box::leak((0..cpus).map(|_| CpuCache::new()).collect())
        } else {
            &[]
        };
        let a = Allocator::new(
            layout,
            SliceBacking::new(memmap),
            slots,
            caches,
            Config::new(Strategy::Eager),
        )
        .expect("start meminit");
        let usable = a.zones().map(|z| z.managed).sum();
        Meminit { a, usable }
    }
}

impl<R: RawMutex + Sync + 'static, const CACHED: bool> Frames for Meminit<R, CACHED>
where
    Allocator<'static, SliceBacking<'static>, R>: Sync,
{
    #[inline]
    fn alloc_order(&self, cpu: usize, order: u32) -> u64 {
        let r = if CACHED {
            self.a
                .alloc(AllocRequest::order(order).on(CpuId(cpu as u32)))
        } else {
            self.a.alloc(AllocRequest::order(order))
        };
        r.expect("meminit alloc").0
    }

    #[inline]
    fn free_order(&self, cpu: usize, frame: u64, order: u32) {
        let r = if CACHED {
            self.a.free(
                FreeRequest::pfn(meminit::Pfn(frame))
                    .on(CpuId(cpu as u32))
                    .order(order),
            )
        } else {
            self.a
                .free(FreeRequest::pfn(meminit::Pfn(frame)).order(order))
        };
        r.expect("meminit free");
    }

    fn check(&self) -> Result<(), String> {
        self.a.drain(None).unwrap_or(0);
        let free: u64 = self.a.zones().map(|z| z.free).sum();
        (free == self.usable)
            .then_some(())
            .ok_or_else(|| format!("{free} pages free of {}", self.usable))
    }
}

/// LLFree with one local reservation per thread.
pub(crate) struct Llfree {
    pub(crate) ll: LLFree<'static>,
    pub(crate) frames: usize,
}

impl Llfree {
    pub(crate) fn new(frames: usize, cores: usize) -> Self {
        let (classing, _) = Classing::simple(cores);
        let meta = MetaData::alloc(&LLFree::metadata_size(&classing, frames));
        let ll = LLFree::new(frames, Init::FreeAll, &classing, meta).expect("start LLFree");
        Llfree { ll, frames }
    }

    /// What `Classing::simple`'s request function makes for `order` on `cpu`
    /// (small frames are class 0, huge ones (order 9 and up) class 1, each with
    /// its own local reservation), built inline rather than through its closure.
    #[inline]
    pub(crate) fn request(cpu: usize, order: u32) -> Request {
        Request::new(order as usize, Class((order >= 9) as u8), Some(cpu))
    }
}

impl Frames for Llfree {
    #[inline]
    fn alloc_order(&self, cpu: usize, order: u32) -> u64 {
        let (frame, _) = self
            .ll
            .get(None, Self::request(cpu, order))
            .expect("LLFree get");
        frame.0 as u64
    }

    #[inline]
    fn free_order(&self, cpu: usize, frame: u64, order: u32) {
        self.ll
            .put(FrameId(frame as usize), Self::request(cpu, order))
            .expect("LLFree put");
    }

    fn check(&self) -> Result<(), String> {
        let free = self.ll.stats().free_frames;
        (free == self.frames)
            .then_some(())
            .ok_or_else(|| format!("{free} frames free of {}", self.frames))
    }
}

/// buddy_system_allocator's locked frame allocator.
pub(crate) struct Buddy {
    pub(crate) b: buddy_system_allocator::LockedFrameAllocator<32>,
}

impl Buddy {
    pub(crate) fn new(frames: usize) -> Self {
        let b = buddy_system_allocator::LockedFrameAllocator::<32>::new();
        b.lock().add_frame(0, frames);
        Buddy { b }
    }
}

impl Frames for Buddy {
    #[inline]
    fn alloc_order(&self, _cpu: usize, order: u32) -> u64 {
        self.b.lock().alloc(1 << order).expect("buddy alloc") as u64
    }

    #[inline]
    fn free_order(&self, _cpu: usize, frame: u64, order: u32) {
        self.b.lock().dealloc(frame as usize, 1 << order);
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// No allocator at all: frames out of thin air. Measures the harness (the loop, the
/// queue between pairs) and how much parallelism the machine gives right now: on a
/// shared machine, 2 threads may not get 2 cores.
pub(crate) struct Nothing;

impl Frames for Nothing {
    #[inline]
    fn alloc_order(&self, cpu: usize, order: u32) -> u64 {
        std::hint::black_box((cpu as u64) << order)
    }

    #[inline]
    fn free_order(&self, _cpu: usize, frame: u64, _order: u32) {
        std::hint::black_box(frame);
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
