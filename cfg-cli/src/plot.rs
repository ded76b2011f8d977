//! PNG scatter plots of 2-D samples over the true class densities.

use cfg_gmm::Mixture;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

/// The embedded font (DejaVu Sans Mono, Bitstream Vera license, see `assets/`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const SIDE: u32 = 560;
const EXTENT: f64 = 5.2;
const CELLS: usize = 140;

/// One panel: samples, their requested classes, and the truth.
pub struct Panel<'a> {
    /// The caption.
    pub title: String,
    /// `[batch, 2]` f32 samples.
    pub points: &'a [f32],
    /// Requested class of each sample.
    pub labels: &'a [usize],
    /// The true distribution.
    pub mixture: &'a Mixture,
}

fn colour(class: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    PALETTE[class % PALETTE.len()]
}

fn blend(c: RGBColor, amount: f64) -> RGBColor {
    let mix = |v: u8| (255.0 - (255.0 - v as f64) * amount).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// Draws the panels side by side, `cols` per row, into the PNG at `path`.
pub fn write_png(path: &Path, panels: &[Panel<'_>], cols: usize) -> Result<(), String> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // Cannot fail for the embedded font; text is skipped if it ever did.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (SIDE * cols as u32, SIDE * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(32)
        .build_cartesian_2d(-EXTENT..EXTENT, -EXTENT..EXTENT)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style(("sans-serif", 12))
        .x_desc("dots: samples by requested class; shading: true class densities")
        .axis_desc_style(("sans-serif", 11))
        .draw()?;

    // The true class densities: each cell takes the colour of its most likely
    // class, stronger where the mixture is denser.
    let step = 2.0 * EXTENT / CELLS as f64;
    let mut cells = Vec::with_capacity(CELLS * CELLS);
    let mut peak = 0.0f64;
    for i in 0..CELLS {
        for j in 0..CELLS {
            let (x, y) = (-EXTENT + (i as f64 + 0.5) * step, -EXTENT + (j as f64 + 0.5) * step);
            let logs: Vec<f64> = (0..panel.mixture.classes).map(|c| panel.mixture.log_density(&[x, y], c)).collect();
            let (best, _) =
                logs.iter().enumerate().fold((0, f64::NEG_INFINITY), |a, (c, &l)| if l > a.1 { (c, l) } else { a });
            let density: f64 = logs.iter().map(|l| l.exp()).sum();
            peak = peak.max(density);
            cells.push((i, j, best, density));
        }
    }
    chart.draw_series(cells.into_iter().map(|(i, j, class, density)| {
        let (x, y) = (-EXTENT + i as f64 * step, -EXTENT + j as f64 * step);
        let strength = 0.45 * (density / peak).sqrt();
        Rectangle::new([(x, y), (x + step, y + step)], blend(colour(class), strength).filled())
    }))?;

    // The samples, one series per requested class, so the legend names each colour.
    for class in 0..panel.mixture.classes {
        chart
            .draw_series(panel.labels.iter().enumerate().filter(|(_, &c)| c == class).filter_map(|(b, _)| {
                let (x, y) = (panel.points[2 * b] as f64, panel.points[2 * b + 1] as f64);
                (x.abs() < EXTENT && y.abs() < EXTENT).then(|| Circle::new((x, y), 2, colour(class).mix(0.7).filled()))
            }))?
            .label(format!("class {class}"))
            .legend(move |(x, y)| Circle::new((x + 6, y), 4, colour(class).filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}
