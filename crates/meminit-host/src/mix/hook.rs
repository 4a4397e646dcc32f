//! The simulator's compaction hook: it moves a block the workload keeps by
//! copying its bytes in the simulated physical memory and updating the
//! workload's table of what it holds, as a kernel's migration copies a page
//! and rewrites the page-table entries and caches that point at it.

use std::io;

use meminit::{Migrate, MigrateError, Pfn, PAGE_SIZE};

use super::run::Owners;
use super::MixReport;
use crate::region::Region;
use crate::spike::HostAllocator;

/// The hook, over the workload's table.
pub(crate) struct CopyingHook<'x> {
    pub(crate) physical: &'x Region,
    pub(crate) owners: &'x mut Owners,
}

// SAFETY: on `Ok` the block's bytes are at `to` and the table (the workload's
// only reference to its blocks) names `to`; nothing else holds `from`. On
// `Err` nothing was changed: `to` was not written.
unsafe impl Migrate for CopyingHook<'_> {
    fn migrate(&mut self, from: Pfn, to: Pfn, order: u32) -> Result<(), MigrateError> {
        let Some(index) = self.owners.at.get(&from.0).copied() else {
            return Err(MigrateError {
                reason: "the workload does not hold this block",
            });
        };
        let held = &mut self.owners.blocks[index];
        if held.order != order {
            return Err(MigrateError {
                reason: "the workload holds this block with another order",
            });
        }
        let len = (PAGE_SIZE << order) as usize;
        // SAFETY: the workload holds `from` (its table says so) and the
        // allocator just allocated `to` for this move; no one else touches
        // either while the hook runs (the workload is on this thread).
        unsafe {
            self.physical
                .copy(from.addr() as usize, to.addr() as usize, len)
        };
        held.pfn = to;
        self.owners.at.remove(&from.0);
        self.owners.at.insert(to.0, index);
        Ok(())
    }
}

/// Runs a compaction pass on `allocator` with the simulator's hook.
pub(super) fn compact(
    allocator: &HostAllocator<'_>,
    physical: &Region,
    owners: &mut Owners,
    report: &mut MixReport,
) -> io::Result<()> {
    let mut hook = CopyingHook { physical, owners };
    let stats = allocator.compact(&mut hook);
    report.migrated_blocks += stats.blocks_moved;
    report.refused_blocks += stats.blocks_refused;
    report.chunks_emptied += stats.chunks_emptied;
    Ok(())
}
