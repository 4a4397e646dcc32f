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

/// Order-0 frames, shared by threads; `cpu` is the calling thread's CPU index.
pub(crate) trait Frames: Sync {
    fn alloc(&self, cpu: usize) -> u64;
    fn free(&self, cpu: usize, frame: u64);
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
    fn alloc(&self, cpu: usize) -> u64 {
        let r = if CACHED {
            self.a.alloc(AllocRequest::order(0).on(CpuId(cpu as u32)))
        } else {
            self.a.alloc(AllocRequest::order(0))
        };
        r.expect("meminit alloc").0
    }

    #[inline]
    fn free(&self, cpu: usize, frame: u64) {
        let r = if CACHED {
            self.a.free(
                FreeRequest::pfn(meminit::Pfn(frame))
                    .on(CpuId(cpu as u32))
                    .order(0),
            )
        } else {
            self.a.free(FreeRequest::pfn(meminit::Pfn(frame)).order(0))
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

    /// What `Classing::simple`'s request function makes for order 0 on `cpu` (small
    /// frames are class 0), built inline rather than through its closure.
    #[inline]
    pub(crate) fn request(cpu: usize) -> Request {
        Request::new(0, Class(0), Some(cpu))
    }
}

impl Frames for Llfree {
    #[inline]
    fn alloc(&self, cpu: usize) -> u64 {
        let (frame, _) = self.ll.get(None, Self::request(cpu)).expect("LLFree get");
        frame.0 as u64
    }

    #[inline]
    fn free(&self, cpu: usize, frame: u64) {
        self.ll
            .put(FrameId(frame as usize), Self::request(cpu))
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
    fn alloc(&self, _cpu: usize) -> u64 {
        self.b.lock().alloc(1).expect("buddy alloc") as u64
    }

    #[inline]
    fn free(&self, _cpu: usize, frame: u64) {
        self.b.lock().dealloc(frame as usize, 1);
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
    fn alloc(&self, cpu: usize) -> u64 {
        std::hint::black_box(cpu as u64)
    }

    #[inline]
    fn free(&self, _cpu: usize, frame: u64) {
        std::hint::black_box(frame);
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
