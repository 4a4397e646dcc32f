//! # meminit-host: meminit on a simulated machine
//!
//! Runs the `meminit` crate on a host as if it were a machine's page allocator:
//! physical memory and the memmap live in address space that is reserved but not
//! committed ([`region`]), so a 1 TiB machine costs only what is touched; the memmap
//! is committed a section at a time by [`backing::HostBacking`], and its residency is
//! read back from the OS. [`machine`] makes machines (built-in shapes, any size, a
//! JSON map or a Linux boot log via [`dmesg`]); [`sim`] boots them under each
//! strategy and measures, beside the physical limit of [`limit`], into the figures
//! of [`report`]; [`spike`] is the load spike after which memory (and memmap)
//! should go back to the host, [`mix`] the `mixed` and `churn` workloads that
//! measure what placement and compaction give back, and [`hotplug`] memory that
//! arrives after start-up and leaves again.
//!
//! Unsafe code lives in [`region`] (system calls) and in the backing's `unsafe impl`.
//!
//! It knows nothing of QEMU: guests under QEMU are the `meminit-vm` crate's, which
//! depends on this one (for [`dmesg`]), never the other way round.

pub mod backing;
pub mod dmesg;
pub mod hotplug;
pub mod limit;
pub mod machine;
pub mod mix;
pub mod region;
pub mod report;
pub mod sim;
pub mod size;
mod smp;
pub mod spike;

pub use backing::HostBacking;
pub use machine::{Machine, MachineError};
pub use sim::{Options, Report, StrategyReport, Workload};
