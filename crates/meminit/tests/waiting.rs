//! Waiting without burning a CPU: with [`Config::wait`], threads that wait for
//! another thread's populate (of their chunk, or of their chunk's section) or
//! for blocks out for free page reporting spin only briefly, then call the
//! hook between re-checks.
//!
//! A behaviour check, not a benchmark: four waiters on a populate (or a
//! report) that sleeps 200 ms must each use at most a tenth of their wall time
//! as CPU (with a hook that sleeps 50 µs they use about 1%; spinning, they use
//! all the CPU they get). Each waiter's CPU time is its own thread's, from
//! `getrusage(RUSAGE_THREAD)`, so other work on the machine does not count.
#![cfg(target_os = "linux")]

mod common;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{one_node, with_double, Double, Phase};
use meminit::{AllocRequest, Config, FreeReporter, Layout, Pfn, ReportError, Strategy};

const MIB: u64 = 1 << 20;
/// How long the populate or the report that the waiters wait for takes.
const HOLD: Duration = Duration::from_millis(200);
/// The most CPU time a waiter may use, as a fraction of its wall time.
const MAX_CPU_SHARE: f64 = 0.10;

/// The embedder's wait hook on a host: a short sleep.
fn nap() {
    std::thread::sleep(Duration::from_micros(50));
}

/// A small id per thread: the embedder's "current context" on a host.
fn thread_context() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, SeqCst));
    ID.with(|id| *id)
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` writes the whole `rusage` it is given and reads
    // nothing else; an all-zero `rusage` is a valid value of a plain C struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs `f` and returns its result with the calling thread's CPU time and the
/// wall time it took.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let r = f();
    (r, thread_cpu() - cpu, wall.elapsed())
}

/// A reporter that takes [`HOLD`] per batch.
struct SlowReporter<'f>(&'f AtomicBool);

impl FreeReporter for SlowReporter<'_> {
    fn report(&mut self, _: &[Range<Pfn>]) -> Result<(), ReportError> {
        self.0.store(true, SeqCst);
        std::thread::sleep(HOLD);
        Ok(())
    }
}

/// One node with `usable` bytes from 16 MiB (DMA32 only), in 8 MiB sections.
fn layout(usable: u64) -> Layout {
    one_node(16 * MIB, 16 * MIB + usable, 8 * MIB)
}

fn config(wait: Option<fn()>) -> Config {
    Config {
        context: Some(thread_context),
        wait,
        ..Config::new(Strategy::OnDemand)
    }
}

/// CPU time over wall time of each waiter.
fn shares(waits: &[(Duration, Duration)]) -> Vec<f64> {
    waits
        .iter()
        .map(|(cpu, wall)| cpu.as_secs_f64() / wall.as_secs_f64())
        .collect()
}

/// Four threads wait while a fifth populates: two for the chunk it holds
/// (`Initialising`), two for the other chunk of its section, whose memmap it
/// is populating (`Populating`). Returns each waiter's CPU and wall time.
fn wait_on_populate(wait: Option<fn()>) -> Vec<(Duration, Duration)> {
    // The double's `populate` takes [`HOLD`], saying first that it started.
    let inside = Arc::new(AtomicBool::new(false));
    let started = inside.clone();
    let slow = Double::new().hook(move |phase, _| {
        if phase == Phase::Populate {
            started.store(true, SeqCst);
            std::thread::sleep(HOLD);
        }
    });
    let first = Pfn((16 * MIB) >> 12);
    let second = Pfn((20 * MIB) >> 12);
    with_double(&layout(8 * MIB), config(wait), slow, |a| {
        std::thread::scope(|s| {
            let populating = s.spawn(|| a.page_or_init(first).map(|_| ()));
            while !inside.load(SeqCst) {
                std::thread::yield_now();
            }
            let waiters: Vec<_> = [first, first, second, second]
                .into_iter()
                .enumerate()
                .map(|(i, chunk)| {
                    s.spawn(move || {
                        let (r, cpu, wall) = measured(|| a.page_or_init(Pfn(chunk.0 + i as u64)));
                        assert!(r.is_ok(), "{r:?}");
                        (cpu, wall)
                    })
                })
                .collect();
            let got = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            populating.join().unwrap().unwrap();
            got
        })
    })
}

/// Four threads allocate while the zone's only free memory is out for
/// reporting. Returns each waiter's CPU and wall time.
fn wait_on_report(wait: Option<fn()>) -> Vec<(Duration, Duration)> {
    with_double(&layout(4 * MIB), config(wait), Double::new(), |a| {
        a.page_or_init(Pfn((16 * MIB) >> 12)).unwrap();
        let reporting = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reporter = s.spawn(|| a.report_free(&mut SlowReporter(&reporting)));
            while !reporting.load(SeqCst) {
                std::thread::yield_now();
            }
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(move || {
                        let (r, cpu, wall) = measured(|| a.alloc(AllocRequest::order(0)));
                        assert!(r.is_ok(), "{r:?}");
                        (cpu, wall)
                    })
                })
                .collect();
            let got = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            reporter.join().unwrap().unwrap();
            got
        })
    })
}

#[test]
fn waiters_on_a_populate_call_the_hook_instead_of_spinning() {
    let waits = wait_on_populate(Some(nap));
    let shares = shares(&waits);
    eprintln!("waiters on a {HOLD:?} populate, CPU / wall: {shares:.4?} ({waits:?})");
    for (share, (_, wall)) in shares.iter().zip(&waits) {
        // They did wait: most of the populate was still ahead of them.
        assert!(*wall >= HOLD / 2, "{waits:?}");
        assert!(*share <= MAX_CPU_SHARE, "{shares:?}");
    }
}

#[test]
fn waiters_on_a_report_call_the_hook_instead_of_spinning() {
    let waits = wait_on_report(Some(nap));
    let shares = shares(&waits);
    eprintln!("waiters on a {HOLD:?} report, CPU / wall: {shares:.4?} ({waits:?})");
    for (share, (_, wall)) in shares.iter().zip(&waits) {
        assert!(*wall >= HOLD / 2, "{waits:?}");
        assert!(*share <= MAX_CPU_SHARE, "{shares:?}");
    }
}

/// Without a hook the same waiters spin, as before: printed for comparison,
/// not checked (their share depends on how many cores they get).
#[test]
fn waiters_without_a_hook_spin() {
    let waits = wait_on_populate(None);
    eprintln!(
        "without a hook, waiters on a {HOLD:?} populate, CPU / wall: {:.4?}",
        shares(&waits)
    );
}
