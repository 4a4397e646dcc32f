//! The simulator's compaction hook.

use std::io;

use super::run::Owners;
use super::MixReport;
use crate::region::Region;
use crate::spike::HostAllocator;

/// Runs a compaction pass on `allocator` with the simulator's hook.
pub(super) fn compact(
    _allocator: &HostAllocator<'_>,
    _physical: &Region,
    _owners: &mut Owners,
    _report: &mut MixReport,
) -> io::Result<()> {
    Err(io::Error::other("compaction is not implemented yet"))
}
