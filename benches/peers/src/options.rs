//! The command line: its options, their defaults and the usage text. It parses;
//! it runs nothing.

use std::time::Duration;

use crate::harness::QUEUE;

pub(crate) struct Options {
    pub(crate) threads: usize,
    pub(crate) rounds: usize,
    pub(crate) time: Duration,
    pub(crate) frames: u64,
    pub(crate) pin: bool,
    pub(crate) queue: usize,
    pub(crate) json: Option<String>,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) workloads: Vec<String>,
}

/// Every workload, in the order they run.
pub(crate) const ALL: [&str; 5] = ["batch", "pairs", "huge", "mix", "scatter"];

pub(crate) const USAGE: &str = "\
meminit-peers: allocate + free throughput of meminit, LLFree and
buddy_system_allocator on the same frames, at 1..N threads, rounds interleaved.

options:
  --threads N     the most threads (default: this machine's cores; more is allowed)
  --rounds N      rounds per point; min/median/max over them (default 5)
  --ms N          milliseconds per measurement (default 200)
  --frames N      frames each allocator manages, a multiple of 16384 (default 2^20: 4 GiB)
  --queue N       batches of 32 in flight from a producer to its consumer (default 64)
  --pin           pin thread i to the i-th CPU of the affinity mask (default: unpinned)
  --only A,B      only these allocators: meminit-spin, meminit-pl, meminit-zone, llfree,
                  buddy, none (no allocator: the harness alone, and the machine's parallelism)
  --workload W,.. batch (32 order-0 frames per thread, own CPU), pairs (producer/
                  consumer), huge (16 order-9 frames per thread), mix (orders 0-3, freed
                  naming random threads' CPUs), scatter (orders 0-3, handed to random
                  threads and freed on theirs), or all (default all)
  --json FILE     also write the results as JSON to FILE (- for stdout; tables then go
                  to stderr)";

pub(crate) fn options() -> Result<Options, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Options {
        threads: cores,
        rounds: 5,
        time: Duration::from_millis(200),
        frames: 1 << 20,
        pin: false,
        queue: QUEUE,
        json: None,
        only: None,
        workloads: ALL.iter().map(|w| w.to_string()).collect(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match arg.as_str() {
            "--threads" => o.threads = number(value()?)? as usize,
            "--rounds" => o.rounds = number(value()?)? as usize,
            "--ms" => o.time = Duration::from_millis(number(value()?)?),
            "--frames" => o.frames = number(value()?)?,
            "--pin" => o.pin = true,
            "--queue" => o.queue = number(value()?)? as usize,
            "--json" => o.json = Some(value()?),
            "--only" => o.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--workload" => {
                o.workloads = Vec::new();
                for w in value()?.split(',') {
                    match w {
                        "all" | "both" => o.workloads.extend(ALL.iter().map(|w| w.to_string())),
                        w if ALL.contains(&w) => o.workloads.push(w.into()),
                        w => return Err(format!("unknown workload {w}")),
                    }
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            _ => return Err(format!("unknown argument {arg}\n\n{USAGE}")),
        }
    }
    if o.threads == 0 || o.rounds == 0 || o.queue == 0 {
        return Err("--threads, --rounds and --queue must be at least 1".into());
    }
    if o.frames == 0 || !o.frames.is_multiple_of(16384) {
        return Err("--frames must be a positive multiple of 16384 (LLFree's tree)".into());
    }
    Ok(o)
}
