//! The capacity chart of a sweep (SVG, plotters without fonts or C dependencies): accepted rate
//! (left axis) and p99 ack latency (right axis) against offered rate, with the "accepted =
//! offered" diagonal and the p99 target as guides.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunReport;

const SIZE: (u32, u32) = (1000, 600);

/// Writes the chart of the open-loop `steps` to `path`.
///
/// # Errors
/// When there is nothing to draw or the file cannot be written.
pub fn write(
    path: &Path,
    steps: &[RunReport],
    p99_target_ms: f64,
    title: &str,
) -> Result<(), String> {
    let mut points: Vec<(f64, f64, Option<f64>)> = steps
        .iter()
        .filter(|s| s.mode == "rate")
        .map(|s| {
            (
                s.offered_events_per_s,
                s.accepted_events_per_s,
                s.ack_latency_ms.p99,
            )
        })
        .collect();
    if points.is_empty() {
        return Err("no open-loop step to chart".into());
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    draw(path, &points, p99_target_ms, title).map_err(|e| format!("chart {}: {e}", path.display()))
}

fn draw(
    path: &Path,
    points: &[(f64, f64, Option<f64>)],
    p99_target_ms: f64,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points.iter().map(|p| p.0.max(p.1)).fold(1.0, f64::max) * 1.05;
    let latency_max = points
        .iter()
        .filter_map(|p| p.2)
        .fold(p99_target_ms, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?
        .set_secondary_coord(0f64..x_max, 0f64..latency_max);
    chart
        .configure_mesh()
        .x_desc("offered events/s")
        .y_desc("accepted events/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 ack latency (ms)")
        .label_style(("sans-serif", 14).into_font().color(&RED))
        .draw()?;
    let guide = BLACK.mix(0.3);
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (x_max, x_max)], guide))?
        .label("accepted = offered")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], guide));
    chart
        .draw_series(
            LineSeries::new(points.iter().map(|p| (p.0, p.1)), BLUE.stroke_width(2)).point_size(4),
        )?
        .label("accepted events/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(
            LineSeries::new(
                points.iter().filter_map(|p| p.2.map(|l| (p.0, l))),
                RED.stroke_width(2),
            )
            .point_size(4),
        )?
        .label("p99 ack latency (ms)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    let target = RED.mix(0.4);
    chart
        .draw_secondary_series(LineSeries::new(
            [(0.0, p99_target_ms), (x_max, p99_target_ms)],
            target,
        ))?
        .label(format!("p99 target {p99_target_ms} ms"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], target));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::bench::report::test_step;

    fn step(offered: f64, accepted: f64, p99: f64) -> RunReport {
        test_step("rate", offered, accepted, Some(p99))
    }

    #[test]
    fn a_sweep_chart_is_an_svg_with_both_series() {
        let path = std::env::temp_dir().join(format!("bench-chart-{}.svg", std::process::id()));
        let steps = [step(1000.0, 1000.0, 2.0), step(2000.0, 1500.0, 40.0)];
        write(&path, &steps, 20.0, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("accepted events/s"));
        assert!(svg.contains("p99 ack latency (ms)"));
        assert!(write(&path, &[], 20.0, "empty").is_err());
    }
}
