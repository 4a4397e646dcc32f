//! What more than one command parses from its command line: a strategy, a
//! size, a workload. It parses; what each command does with them is its own.

use clap::ValueEnum;
use meminit::Strategy;
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
