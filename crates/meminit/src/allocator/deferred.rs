//! Deferred initialisation: the embedder's workers, which split a node's chunks
//! between them a section at a time from a per-node atomic cursor.
//!
//! A worker only decides which chunks to initialise next (a run of its node's
//! chunks in the section it took) and retries those whose backing failed; the
//! initialisation itself is the grow path's (`Allocator::init_run`, in
//! [`super::grow`]).

use core::sync::atomic::Ordering::Relaxed;

use lock_api::RawMutex;

use super::stats::InitCause;
use super::Allocator;
use crate::config::Strategy;
use crate::error::ChunkError;
use crate::memmap::{InitPass, MemmapBacking};
use crate::section::ChunkState;
use crate::types::{NodeId, Pfn};

/// How many times a deferred worker tries again, after its pass over its node,
/// each chunk whose initialisation failed.
pub const WORKER_RETRIES: u32 = 3;

/// The most chunks a deferred worker initialises as one run (see
/// [`Allocator::run_deferred_worker`]).
pub const WORKER_RUN: usize = 8;

/// What one call of [`Allocator::run_deferred_worker`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// The node the worker ran for.
    pub node: NodeId,
    /// Chunks this worker initialised.
    pub chunks: u64,
    /// Pages it put on free lists.
    pub pages: u64,
    /// Chunks it could not initialise, even after [`WORKER_RETRIES`] more tries:
    /// they stay uninitialised, and the grow path or a later worker tries them
    /// again when they are needed.
    pub failed: u64,
    /// Why the last of those failed.
    pub error: Option<ChunkError>,
}

impl<B: MemmapBacking, R: RawMutex> Allocator<'_, B, R> {
    /// Runs one deferred worker for `node` until the node has no chunk left to hand
    /// out. Call it from as many threads (or CPUs) per node as you like: each takes
    /// a section's chunks at a time from the node's cursor, without a lock, and
    /// skips those the grow path or a look-up already took. Returns at once under
    /// any strategy but [`Strategy::Deferred`], and for a node not in the layout.
    ///
    /// It initialises a section's chunks in runs of up to [`WORKER_RUN`]
    /// (claimed, published and put on the free lists together, which saves most
    /// of the per-chunk bookkeeping); an allocation or look-up that needs a chunk
    /// of a run in flight waits for the run, so the bound keeps that wait to a
    /// few chunks' accepts and writes (eight 4 MiB chunks' descriptors take
    /// some 15 µs to write at the 1.8 µs a chunk measured on a host) rather than
    /// a section's.
    ///
    /// A chunk whose memmap cannot be populated (or whose memory cannot be
    /// accepted) does not stop the worker: it goes on with the node's other
    /// chunks, then tries each failed one again, up to [`WORKER_RETRIES`] times.
    /// Those that still fail are counted in [`WorkerReport::failed`], with the last
    /// error; they stay uninitialised, so the grow path tries them again when their
    /// zone needs them. (A worker remembers at most 64 failed chunks to retry; the
    /// rest are counted failed at once.) Called from inside a callback, it stops
    /// at its first chunk with [`ChunkError::Reentrant`].
    pub fn run_deferred_worker(&self, node: NodeId) -> WorkerReport {
        let mut report = WorkerReport {
            node,
            ..WorkerReport::default()
        };
        if self.config.strategy != Strategy::Deferred {
            return report;
        }
        // `node` answers a span only below `node_count()`, so it indexes `work`.
        let Some(span) = self.layout.node(node) else {
            return report;
        };
        let mut retry = [0usize; 64];
        let mut retries = 0;
        let first = self.layout.section_of(span.start_pfn);
        let end = self.layout.section_of(Pfn(span.end_pfn.0 - 1)) + 1;
        let chunks_shift = self.memmap.sections().chunks_shift();
        let mut pass = InitPass::new();
        loop {
            // Relaxed: the fetch_add alone hands each section (a batch of chunks) to
            // exactly one worker of this node; the chunk claims order everything the
            // chunks hold.
            let section = first + self.work[node.index()].fetch_add(1, Relaxed);
            if section >= end {
                break;
            }
            let section_end = (section + 1) << chunks_shift;
            let mut index = section << chunks_shift;
            while index < section_end {
                // This node's chunks from `index` on, at most `WORKER_RUN`: a run
                // for `init_run`, which claims those of them that are `Uninit`.
                if self.memmap.sections().state(index) != ChunkState::Uninit {
                    index += 1;
                    continue;
                }
                let mine = (index..section_end)
                    .take(WORKER_RUN)
                    .take_while(|&i| self.chunk_has_node(i, node))
                    .count();
                if mine == 0 {
                    index += 1;
                    continue;
                }
                let run = self.init_run(index, mine, InitCause::Worker, &mut pass);
                report.chunks += run.chunks as u64;
                report.pages += run.pages;
                index = run.next;
                match run.error {
                    None => {}
                    Some(e @ ChunkError::Reentrant { .. }) => {
                        report.failed += 1;
                        report.error = Some(e);
                        return report;
                    }
                    Some(e) => {
                        report.error = Some(e);
                        match retry.get_mut(retries) {
                            Some(slot) => {
                                // The chunk that failed: the one before `next`.
                                *slot = run.next - 1;
                                retries += 1;
                            }
                            None => report.failed += 1,
                        }
                    }
                }
            }
        }
        // The failed chunks, again: a backing may fail for a moment (no memory for
        // a page table just then). Whoever took one meanwhile has it.
        let mut left = &mut retry[..retries];
        for _ in 0..WORKER_RETRIES {
            let mut still = 0;
            for i in 0..left.len() {
                let index = left[i];
                match self.init_chunk(index, InitCause::Worker, &mut pass) {
                    Ok(Some(pages)) => {
                        report.chunks += 1;
                        report.pages += pages;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.error = Some(e);
                        left[still] = index;
                        still += 1;
                    }
                }
            }
            left = &mut left[..still];
            if left.is_empty() {
                break;
            }
        }
        report.failed += left.len() as u64;
        if report.failed == 0 {
            report.error = None;
        }
        report
    }

    /// Whether chunk `index` holds memory (usable or reserved) of `node`.
    fn chunk_has_node(&self, index: usize, node: NodeId) -> bool {
        let (s, e) = self.memmap.chunk_pfns(index);
        self.layout
            .memory_runs(Pfn(s)..Pfn(e))
            .any(|r| r.node == node)
    }
}
