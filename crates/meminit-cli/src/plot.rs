//! `--plot DIR`: charts, as SVG and PNG.
//!
//! - `ready`: time until the allocator serves and until all memory is initialised,
//!   against memory size, per strategy (QEMU-like machines of 1 GiB up to 1 TiB;
//!   strategies that do not fit this host are left out at those sizes): the
//!   median of `--runs` runs, with a bar from the minimum to the maximum.
//! - `resident`: memmap resident on the host against the working set touched after
//!   boot, per strategy, on the machine of the report, over the whole range of
//!   working sets, drawn as steps (the memmap grows a section at a time).
//!
//! Every chart says what it swept (the machine, its CPUs, the deferred workers)
//! and names the host it was measured on. Progress goes to stderr: the report's
//! spinner on a terminal, a plain line per point otherwise.
//!
//! Text is drawn with the DejaVu font embedded in the binary, so PNGs need no
//! system font library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use meminit::Strategy;
use meminit_host::machine::Machine;
use meminit_host::sim::{self, Options, Progress, Workload};
use meminit_host::size;
use plotters::coord::Shift;
use plotters::prelude::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// One line of a chart: a label, its points, and the spread at each (x, min,
/// max), drawn as bars where there is any.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    bars: Vec<(f64, f64, f64)>,
    /// Drawn as steps: flat until the next point, then up.
    steps: bool,
}

/// The host the charts were measured on: CPU model, cores, memory.
fn host_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or("? memory".into(), |kib| size::format(kib * 1024));
    format!("on {cpu}, {cores} cores, {memory}")
}

/// Progress through a chart's points: on a terminal, the report's spinner;
/// elsewhere (where the spinner hides itself), a plain line per point.
struct Points<'a> {
    inner: &'a dyn Progress,
    plain: bool,
}

impl Points<'_> {
    fn point(&self, chart: &str, i: usize, n: usize, what: &str) {
        let line = format!("plot {chart}: point {i} of {n}: {what}");
        if self.plain {
            eprintln!("{line}");
        } else {
            self.inner.step(&line);
        }
    }
}

impl Progress for Points<'_> {
    fn step(&self, what: &str) {
        if !self.plain {
            self.inner.step(what);
        }
    }
}

/// `s` for a count other than one.
fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Median, minimum and maximum.
fn median_min_max(v: Vec<f64>) -> Option<(f64, f64, f64)> {
    crate::repeated::Spread::of(v).map(|s| (s.median, s.min, s.max))
}

/// Runs the measurements and writes every chart into `dir`.
pub fn write_all(
    dir: &Path,
    machine: &Machine,
    opts: &Options,
    runs: u32,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded font did not load"))?;
    let points = Points {
        inner: progress,
        plain: !std::io::stderr().is_terminal(),
    };
    let mut written = Vec::new();
    written.extend(ready_chart(dir, opts, runs.max(1), &points)?);
    written.extend(resident_chart(dir, machine, opts, &points)?);
    Ok(written)
}

fn ready_chart(dir: &Path, opts: &Options, runs: u32, progress: &Points) -> Result<Vec<PathBuf>> {
    let series = |label: &str, color| Series {
        label: label.into(),
        color,
        points: vec![],
        bars: vec![],
        steps: false,
    };
    let mut series = vec![
        series("eager: ready = all initialised", RGBColor(200, 60, 40)),
        series("deferred: ready", RGBColor(40, 110, 200)),
        series("deferred: all initialised", RGBColor(120, 170, 230)),
        series("on-demand: ready", RGBColor(40, 160, 80)),
    ];
    let mut run = opts.clone();
    run.workload = Workload::Idle;
    for shift in 0..=10 {
        let memory = GIB << shift;
        let machine = Machine::qemu_like(memory, 1, 1)?;
        let layout = machine.layout()?;
        let x = memory as f64 / GIB as f64;
        progress.point("ready", shift + 1, 11, &size::format(memory));
        for strategy in Strategy::ALL {
            let mut ready = Vec::new();
            let mut full = Vec::new();
            for _ in 0..runs {
                let r = sim::run_strategy(&machine, &layout, strategy, &run, progress);
                if r.skipped.is_some() {
                    break;
                }
                let ms = |ns: u64| (ns as f64 / 1e6).max(1e-3);
                ready.push(ms(r.ready_ns));
                if let Some(t) = r.full_init_ns {
                    full.push(ms(t));
                }
            }
            let mut add = |i: usize, values: Vec<f64>| {
                if let Some((median, min, max)) = median_min_max(values) {
                    series[i].points.push((x, median));
                    series[i].bars.push((x, min, max));
                }
            };
            match strategy {
                Strategy::Eager => add(0, ready),
                Strategy::Deferred => {
                    add(1, ready);
                    add(2, full);
                }
                Strategy::OnDemand => add(3, ready),
            }
        }
    }
    let workers = run.threads.max(1) as u64;
    let mut title = vec![
        "Time until ready and until all initialised".to_string(),
        format!(
            "QEMU-like machines of 1G to 1T: 1 node, 1 CPU, {workers} deferred worker{}; median of {runs}, bars min–max",
            plural(workers)
        ),
    ];
    if workers == 1 {
        title.push(
            "One worker does eager's work after boot, so deferred is all initialised later than eager"
                .into(),
        );
    }
    title.push(host_name());
    draw_both(
        &dir.join("ready"),
        &title,
        "memory (GiB)",
        "time (ms)",
        &series,
        true,
    )
}

fn resident_chart(
    dir: &Path,
    machine: &Machine,
    opts: &Options,
    progress: &Points,
) -> Result<Vec<PathBuf>> {
    let layout = machine.layout()?;
    let present = layout.present_pages() * 4096;
    let colors = [
        RGBColor(200, 60, 40),
        RGBColor(40, 110, 200),
        RGBColor(40, 160, 80),
    ];
    let mut series: Vec<Series> = Strategy::ALL
        .iter()
        .zip(colors)
        .map(|(s, color)| Series {
            label: s.name().to_string(),
            color,
            points: vec![],
            bars: vec![],
            steps: true,
        })
        .collect();
    // The whole range of working sets, a section's worth at a time where that
    // gives at most 64 points (the memmap grows a section at a time), else in
    // 64 even steps; short of all of memory by what the boot allocations take.
    let section = layout.section_pages() * 4096;
    let most = present - present / 16;
    let step = section.max(most / 64).next_multiple_of(section);
    let mut set = 0;
    let n = (most / step + 1) as usize;
    while set <= most {
        progress.point(
            "resident",
            (set / step) as usize + 1,
            n,
            &format!("working set {}", size::format(set)),
        );
        let mut run = opts.clone();
        run.workload = Workload::Container { bytes: set.max(1) };
        for (i, strategy) in Strategy::ALL.iter().enumerate() {
            let r = sim::run_strategy(machine, &layout, *strategy, &run, progress);
            if r.skipped.is_none() {
                series[i].points.push((
                    set as f64 / MIB as f64,
                    r.memmap_resident_end_bytes as f64 / MIB as f64,
                ));
            }
        }
        set += step;
    }
    let workers = opts.threads.max(1) as u64;
    let nodes = layout.node_count() as u64;
    let title = [
        "memmap resident against working set".to_string(),
        format!(
            "machine {}: {} on {nodes} node{}, {} CPU{}, {workers} deferred worker{}; one run per point",
            machine.name,
            size::format(present),
            plural(nodes),
            machine.cpus,
            plural(u64::from(machine.cpus)),
            plural(workers)
        ),
        host_name(),
    ];
    draw_both(
        &dir.join("resident"),
        &title,
        "working set (MiB)",
        "memmap resident (MiB)",
        &series,
        false,
    )
}

/// Draws each series as a line with points, and the legend.
fn lines<'a, DB, CT>(c: &mut ChartContext<'a, DB, CT>, series: &[Series]) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    for (i, s) in series.iter().enumerate() {
        let color = s.color;
        // The first line is drawn wider, so a line on top of it stays visible.
        let width = if i == 0 { 6 } else { 2 };
        let path: Vec<(f64, f64)> = if s.steps {
            let mut p = Vec::new();
            for (i, &(x, y)) in s.points.iter().enumerate() {
                if i > 0 {
                    p.push((x, s.points[i - 1].1));
                }
                p.push((x, y));
            }
            p
        } else {
            s.points.clone()
        };
        c.draw_series(LineSeries::new(path, color.stroke_width(width)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
        c.draw_series(
            s.bars
                .iter()
                .zip(&s.points)
                .filter(|((_, lo, hi), _)| hi > lo)
                .map(|(&(x, lo, hi), _)| {
                    PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(2))
                }),
        )
        .map_err(err)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Writes `base.svg` and `base.png`.
fn draw_both(
    base: &Path,
    title: &[String],
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log: bool,
) -> Result<Vec<PathBuf>> {
    let svg = base.with_extension("svg");
    let png = base.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (960, 600)).into_drawing_area();
        draw(&root, title, x_label, y_label, series, log)?;
        root.present().context("writing the SVG")?;
    }
    {
        let root = BitMapBackend::new(&png, (960, 600)).into_drawing_area();
        draw(&root, title, x_label, y_label, series, log)?;
        root.present().context("writing the PNG")?;
    }
    Ok(vec![svg, png])
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &[String],
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 0.0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    for &(_, lo, hi) in series.iter().flat_map(|s| s.bars.iter()) {
        y_min = y_min.min(lo);
        y_max = y_max.max(hi);
    }
    if y_min == f64::MAX {
        y_min = 0.0;
    }
    // The title's first line large, what was swept and where below it.
    let mut area = root.clone();
    for (i, line) in title.iter().enumerate() {
        let size = if i == 0 { 22 } else { 15 };
        area = area
            .titled(line, ("sans-serif", size))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let mut chart = ChartBuilder::on(&area);
    chart.margin(16).x_label_area_size(48).y_label_area_size(72);
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    // The two axis kinds are different types; one macro draws on either.
    macro_rules! mesh_and_lines {
        ($x:expr, $y:expr) => {{
            let mut c = chart.build_cartesian_2d($x, $y).map_err(err)?;
            c.configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(err)?;
            lines(&mut c, series)?;
        }};
    }
    if log {
        mesh_and_lines!(
            (1.0f64..x_max * 1.2).log_scale(),
            (y_min / 2.0..y_max * 2.0).log_scale()
        );
    } else {
        mesh_and_lines!(0.0f64..x_max * 1.05, 0.0f64..y_max * 1.15 + 1.0);
    }
    Ok(())
}
