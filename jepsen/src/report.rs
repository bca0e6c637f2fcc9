//! The pictures of a run, from its folder's `history.jsonl` and `results.json`: a
//! timeline of every operation per process (coloured by outcome) with the fault windows
//! shaded, latency over time, and throughput, as SVG (plotters), and `index.html` linking
//! them with the verdict. Text is measured with DejaVu Sans from the system's fonts
//! (`fonts-dejavu-core`, which `scripts/prereqs.sh` installs), through plotters' ab_glyph.

use std::path::Path;

use plotters::prelude::*;

use crate::history::{EventType, History, Operation};
use crate::run::FaultWindow;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("drawing {0}: {1}")]
    Draw(&'static str, String),
    #[error("results.json: {0}")]
    Results(String),
    #[error("{0}")]
    Font(String),
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Give plotters its "sans-serif" (once per process): with ab_glyph it lays out text only
/// with fonts registered by name. (`mobilusctl`'s demo plot does the same for its PNG.)
fn register_font() -> Result<(), ReportError> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        // plotters keeps a registered font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
    })
    .clone()
    .map_err(ReportError::Font)
}

const OK: RGBColor = RGBColor(46, 160, 67);
const FAIL: RGBColor = RGBColor(215, 58, 73);
const INFO: RGBColor = RGBColor(227, 160, 8);
const FAULT: RGBColor = RGBColor(120, 120, 160);

fn colour(kind: EventType) -> RGBColor {
    match kind {
        EventType::Ok => OK,
        EventType::Fail => FAIL,
        _ => INFO,
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The fault windows as grey bands from `y0` to `y1`.
fn shaded(
    faults: &[FaultWindow],
    y0: f64,
    y1: f64,
) -> impl Iterator<Item = Rectangle<(f64, f64)>> + '_ {
    faults.iter().map(move |w| {
        Rectangle::new(
            [(secs(w.start_ns), y0), (secs(w.stop_ns), y1)],
            FAULT.mix(0.2).filled(),
        )
    })
}

/// The fault windows, from the nemesis events of the history.
fn windows(history: &History) -> Vec<FaultWindow> {
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut out = Vec::new();
    for e in history.events.iter().filter(|e| e.process.is_nemesis()) {
        let what = e.value.as_str().unwrap_or_default().to_string();
        match e.f.as_str() {
            "start" => open.push((what, e.time_ns)),
            "stop" => {
                if let Some(i) = open.iter().position(|(w, _)| *w == what) {
                    let (description, start_ns) = open.remove(i);
                    out.push(FaultWindow {
                        description,
                        start_ns,
                        stop_ns: e.time_ns,
                    });
                }
            }
            _ => {}
        }
    }
    let end = history.events.last().map_or(0, |e| e.time_ns);
    out.extend(open.into_iter().map(|(description, start_ns)| FaultWindow {
        description,
        start_ns,
        stop_ns: end,
    }));
    out
}

fn timeline(
    ops: &[Operation],
    faults: &[FaultWindow],
    end: f64,
    concurrency: u64,
    path: &Path,
) -> Result<(), ReportError> {
    let slots = ops.iter().map(|o| slot(o, concurrency)).max().unwrap_or(0) + 1;
    let root = SVGBackend::new(path, (1200, 40 + 14 * slots as u32 + 60)).into_drawing_area();
    let e = |x: String| ReportError::Draw("timeline", x);
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "operations per client process (green ok, red fail, amber indeterminate; grey: faults)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..end.max(1.0), 0f64..slots as f64)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("process")
        .disable_y_mesh()
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(shaded(faults, 0.0, slots as f64))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(ops.iter().map(|o| {
            let y = slot(o, concurrency) as f64;
            let end_s = o.complete_ns.map_or(end, secs);
            Rectangle::new(
                [
                    (secs(o.invoke_ns), y + 0.15),
                    (end_s.max(secs(o.invoke_ns) + 0.002), y + 0.85),
                ],
                colour(o.outcome).filled(),
            )
        }))
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// The client slot of an operation: its process modulo the run's concurrency (a process
/// that retires hands its slot to the next number); the final reads get one row.
fn slot(o: &Operation, concurrency: u64) -> u64 {
    match &o.process {
        crate::history::Process::Client(p) if *p >= crate::run::FINAL_PROCESS => concurrency,
        crate::history::Process::Client(p) => *p % concurrency.max(1),
        crate::history::Process::Named(_) => 0,
    }
}

fn latency(
    ops: &[Operation],
    faults: &[FaultWindow],
    end: f64,
    path: &Path,
) -> Result<(), ReportError> {
    let points: Vec<(f64, f64, EventType)> = ops
        .iter()
        .filter_map(|o| {
            let done = o.complete_ns?;
            Some((
                secs(o.invoke_ns),
                (done.saturating_sub(o.invoke_ns)) as f64 / 1e6,
                o.outcome,
            ))
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    let e = |x: String| ReportError::Draw("latency", x);
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency of completed operations (ms; grey: faults)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end.max(1.0), (0.1f64..top).log_scale())
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(shaded(faults, 0.1, top))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|(x, y, k)| Circle::new((*x, y.max(0.1)), 2, colour(*k).filled())),
        )
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

fn throughput(
    ops: &[Operation],
    faults: &[FaultWindow],
    end: f64,
    path: &Path,
) -> Result<(), ReportError> {
    let buckets = end.ceil().max(1.0) as usize;
    let mut per: [Vec<f64>; 3] = [vec![0.0; buckets], vec![0.0; buckets], vec![0.0; buckets]];
    for o in ops {
        let at = o.complete_ns.unwrap_or(o.invoke_ns);
        let b = (secs(at) as usize).min(buckets - 1);
        let i = match o.outcome {
            EventType::Ok => 0,
            EventType::Fail => 1,
            _ => 2,
        };
        per[i][b] += 1.0;
    }
    let top = per.iter().flatten().fold(1.0, |a: f64, b| a.max(*b)) * 1.1;
    let root = SVGBackend::new(path, (1200, 380)).into_drawing_area();
    let e = |x: String| ReportError::Draw("throughput", x);
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "completions per second (green ok, red fail, amber indeterminate)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..buckets as f64, 0f64..top)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ops/s")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(shaded(faults, 0.0, top))
        .map_err(|x| e(x.to_string()))?;
    for (series, c) in per.iter().zip([OK, FAIL, INFO]) {
        chart
            .draw_series(LineSeries::new(
                series.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)),
                c.stroke_width(2),
            ))
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draw the report of the run in `dir` (it must hold `history.jsonl`).
pub fn write(dir: &Path) -> Result<(), ReportError> {
    register_font()?;
    let history = History::read_jsonl(&dir.join("history.jsonl"))?;
    let ops = history.operations()?;
    let faults = windows(&history);
    let end = history.events.last().map_or(1.0, |e| secs(e.time_ns));
    let results = match std::fs::read_to_string(dir.join("results.json")) {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ReportError::Results(e.to_string()))?;
            Some(v)
        }
        Err(_) => None,
    };
    // Without results.json the concurrency is unknown: fold into 64 rows.
    let concurrency = results
        .as_ref()
        .and_then(|r| r["concurrency"].as_u64())
        .filter(|c| (1..=1024).contains(c))
        .unwrap_or(64);
    timeline(&ops, &faults, end, concurrency, &dir.join("timeline.svg"))?;
    latency(&ops, &faults, end, &dir.join("latency.svg"))?;
    throughput(&ops, &faults, end, &dir.join("throughput.svg"))?;
    let verdict = match &results {
        Some(r) if r["valid"] == true => "<p class=ok>VALID: every check passed.</p>".to_string(),
        Some(_) => "<p class=bad>INVALID: see the checker's findings below.</p>".to_string(),
        None => "<p>No results.json: only the history was drawn.</p>".to_string(),
    };
    let fault_rows: String = faults
        .iter()
        .map(|w| {
            format!(
                "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
                secs(w.start_ns),
                secs(w.stop_ns),
                escape(&w.description)
            )
        })
        .collect();
    let details = results
        .as_ref()
        .map(|r| escape(&serde_json::to_string_pretty(r).unwrap_or_default()))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Mobilus Jepsen run</title>\
         <style>body{{font-family:sans-serif;margin:2em}} .ok{{color:#2ea043}} .bad{{color:#d73a49}}\
         td{{padding:0 1em}} pre{{background:#f6f8fa;padding:1em}}</style></head><body>\
         <h1>Mobilus Jepsen run</h1>{verdict}\
         <p>{} operations; {} faults. Files: <a href=history.jsonl>history.jsonl</a>, \
         <a href=history.edn>history.edn</a> (registers), <a href=results.json>results.json</a>, \
         cluster logs in <a href=cluster/>cluster/</a>.</p>\
         <h2>Timeline</h2><img src=timeline.svg>\
         <h2>Latency</h2><img src=latency.svg>\
         <h2>Throughput</h2><img src=throughput.svg>\
         <h2>Faults</h2><table><tr><th>start s</th><th>stop s</th><th>fault</th></tr>{fault_rows}</table>\
         <h2>Results</h2><pre>{details}</pre></body></html>",
        ops.len(),
        faults.len()
    );
    std::fs::write(dir.join("index.html"), html)
        .map_err(|e| ReportError::Io(dir.join("index.html").display().to_string(), e))?;
    Ok(())
}
