//! What more than one command parses from its command line: a strategy, a
//! size, a workload. It parses; what each command does with them is its own.

use clap::ValueEnum;
use meminit::Strategy;
use meminit_host::mix::{BadMix, Mix};
use meminit_host::sim::{BadWorkload, Workload};
use meminit_host::size;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StrategyArg {
    Eager,
    Deferred,
    Ondemand,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Strategy {
        match s {
            StrategyArg::Eager => Strategy::Eager,
            StrategyArg::Deferred => Strategy::Deferred,
            StrategyArg::Ondemand => Strategy::OnDemand,
        }
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    size::parse(s)
}

pub(crate) fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse().map_err(|e: BadWorkload| e.to_string())
}

/// What `meminit report --workload` takes: a workload the guest shares, or a
/// `mixed` or `churn` mix of lifetimes (the simulator's alone).
#[derive(Clone, Copy, Debug)]
pub(crate) enum WorkloadArg {
    /// `idle`, `container`, `random`, `smp` or `spike`.
    Boot(Workload),
    /// `mixed:SIZE:KEEP` or `churn:SIZE:KEEP[:huge]`.
    Mix(Mix),
}

pub(crate) fn parse_report_workload(s: &str) -> Result<WorkloadArg, String> {
    match s.parse::<Mix>() {
        Ok(mix) => Ok(WorkloadArg::Mix(mix)),
        Err(BadMix::NotMix) => s.parse().map(WorkloadArg::Boot).map_err(|_: BadWorkload| {
            "unknown workload: expected idle, container[:SIZE], random[:OPS], smp[:OPS], spike[:SIZE], mixed:SIZE:KEEP or churn:SIZE:KEEP[:huge]".to_string()
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// A fraction: `0.01` or `1%`, from 0 to 1.
pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    meminit_host::mix::parse_fraction(s)
        .ok_or_else(|| format!("'{s}' is not a fraction from 0 to 1 (examples: 0.01, 1%)"))
}
