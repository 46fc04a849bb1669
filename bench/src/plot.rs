//! PNG line plots: plotters' bitmap backend draws into a buffer (text with
//! DejaVu Sans from fonts-dejavu-core, which `cargo xtask setup` installs),
//! and the `png` crate encodes it.
use std::{path::Path, sync::OnceLock};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::report::Plot;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Registers the font once (plotters' ab_glyph backend needs static bytes).
fn font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!("{FONT}: {e} (cargo xtask setup installs fonts-dejavu-core)")
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn bounds(plot: &Plot) -> ((f64, f64), (f64, f64)) {
    let pts = plot.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (1.0, 10.0);
    }
    if x0 == x1 {
        x1 = x0 * 10.0 + 1.0;
    }
    ((x0, x1), (0.0, if y1 > 0.0 { y1 * 1.6 } else { 1.0 }))
}

/// Draws `plot` into a PNG at `path`.
pub fn draw(plot: &Plot, path: &Path) -> Result<()> {
    font()?;
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    render(plot, &mut buffer).map_err(|e| anyhow!("drawing {}: {e}", plot.file))?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&buffer)?;
    writer.finish()?;
    Ok(())
}

/// Mesh, lines with points, and the legend, for either kind of x axis.
macro_rules! lines {
    ($chart:expr, $plot:expr) => {{
        let c = &mut $chart;
        c.configure_mesh()
            .x_desc(&$plot.x_label)
            .y_desc(&$plot.y_label)
            .x_label_formatter(&|x| short(*x))
            .y_label_formatter(&|y| short(*y))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, s) in $plot.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            c.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }};
}

fn render(plot: &Plot, buffer: &mut [u8]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let ((x0, x1), (y0, y1)) = bounds(plot);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&plot.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80);
    if plot.log_x {
        let mut chart = builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?;
        lines!(chart, plot);
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        lines!(chart, plot);
    }
    root.present()?;
    Ok(())
}

/// 1500 -> "1.5k", 2000000 -> "2M", 12.5 -> "12.5".
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(10.0), "10");
    }
}
