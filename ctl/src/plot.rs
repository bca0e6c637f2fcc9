//! The demo's plot: the bytes site-b holds over time after the move, as a PNG (plotters'
//! bitmap backend; its text drawn by ab_glyph with DejaVu Sans from the system's fonts,
//! which `scripts/prereqs.sh` installs, so no font library is linked).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        // plotters keeps a registered font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Draw `samples` (seconds since the move, bytes at site-b) to `path`, marking when the
/// first query at site-b answered.
pub fn follow_png(
    path: &Path,
    samples: &[(f64, u64)],
    answered_at: f64,
    rtt_ms: Option<u64>,
) -> anyhow::Result<()> {
    register_font()?;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let end = samples
        .last()
        .map_or(1.0, |s| s.0)
        .max(answered_at)
        .max(0.5)
        * 1.05;
    let top = samples.iter().map(|s| mib(s.1)).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let link = rtt_ms.map(|r| format!(" ({r} ms WAN)")).unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("/demo at site-b after the move{link}"),
            ("sans-serif", 26),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc("seconds since the move")
        .y_desc("MiB held at site-b")
        .label_style(("sans-serif", 16))
        .draw()
        .context("drawing the plot")?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|(t, b)| (*t, mib(*b))),
            BLUE.stroke_width(3),
        ))
        .context("drawing the plot")?
        .label("bytes held at site-b")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(answered_at, 0.0), (answered_at, top)],
            RED.stroke_width(2),
        )))
        .context("drawing the plot")?
        .label(format!("first query answered ({answered_at:.2} s)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .context("drawing the plot")?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
