//! The capacity chart of a sweep (SVG, plotters without fonts or C dependencies): accepted rate
//! (left axis) and latency (right axis: p50 and p99 ack latency, p99 crossing -> webhook
//! latency) against offered rate, with the "accepted = offered" diagonal and the p99 target as
//! guides, and the stated capacity marked (a vertical line, labelled "at least" when the sweep
//! did not reach the limit).

use std::path::Path;

use plotters::chart::DualCoordChartContext;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::RunReport;

const SIZE: (u32, u32) = (1000, 600);

/// One open-loop step as the chart draws it.
#[derive(Debug, Clone, Copy)]
struct Point {
    offered: f64,
    accepted: f64,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    webhook_p99_ms: Option<f64>,
}

/// The capacity point the chart marks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityMark {
    pub offered_events_per_s: f64,
    /// Every step met the target: the capacity is at least this.
    pub lower_bound: bool,
}

impl CapacityMark {
    fn label(&self) -> String {
        format!(
            "capacity {}{:.0} events/s",
            if self.lower_bound { "at least " } else { "" },
            self.offered_events_per_s
        )
    }
}

/// Writes the chart of the open-loop `steps` to `path`, marking `capacity` when there is one.
///
/// # Errors
/// When there is nothing to draw or the file cannot be written.
pub fn write(
    path: &Path,
    steps: &[RunReport],
    p99_target_ms: f64,
    capacity: Option<CapacityMark>,
    title: &str,
) -> Result<(), String> {
    let mut points: Vec<Point> = steps
        .iter()
        .filter(|s| s.mode == "rate")
        .map(|s| Point {
            offered: s.offered_events_per_s,
            accepted: s.accepted_events_per_s,
            ack_p50_ms: s.ack_latency_ms.p50,
            ack_p99_ms: s.ack_latency_ms.p99,
            webhook_p99_ms: s.webhook_latency_ms.p99,
        })
        .collect();
    if points.is_empty() {
        return Err("no open-loop step to chart".into());
    }
    points.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    draw(path, &points, p99_target_ms, capacity, title)
        .map_err(|e| format!("chart {}: {e}", path.display()))
}

/// The chart: offered rate against accepted rate, with latency on the secondary axis.
type Chart<'a, DB> = DualCoordChartContext<'a, DB, Linear, Linear>;
type Linear = Cartesian2d<RangedCoordf64, RangedCoordf64>;

/// Which latency of a step a series draws.
type Latency = fn(&Point) -> Option<f64>;

/// A latency series on the right axis: the steps that have the value (too few samples: none).
fn latency_series(points: &[Point], value: Latency) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .filter_map(move |p| value(p).map(|ms| (p.offered, ms)))
}

fn draw(
    path: &Path,
    points: &[Point],
    p99_target_ms: f64,
    capacity: Option<CapacityMark>,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = points.iter().map(|p| p.offered).fold(1.0, f64::max) * 1.05;
    let y_max = points
        .iter()
        .map(|p| p.offered.max(p.accepted))
        .fold(1.0, f64::max)
        * 1.05;
    let latency_max = points
        .iter()
        .flat_map(|p| [p.ack_p50_ms, p.ack_p99_ms, p.webhook_p99_ms])
        .flatten()
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
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 14).into_font().color(&RED))
        .draw()?;
    let guide = BLACK.mix(0.3);
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (x_max, x_max)], guide))?
        .label("accepted = offered")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], guide));
    chart
        .draw_series(
            LineSeries::new(
                points.iter().map(|p| (p.offered, p.accepted)),
                BLUE.stroke_width(2),
            )
            .point_size(4),
        )?
        .label("accepted events/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    draw_latencies(&mut chart, points, p99_target_ms, x_max)?;
    if let Some(mark) = capacity {
        draw_capacity(&mut chart, points, mark, (x_max, y_max))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The right axis: p50 and p99 ack latency, p99 crossing -> webhook latency, the p99 target.
fn draw_latencies<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    points: &[Point],
    p99_target_ms: f64,
    x_max: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let latencies: [(&str, Latency, RGBColor); 3] = [
        ("p99 ack latency (ms)", |p| p.ack_p99_ms, RED),
        (
            "p50 ack latency (ms)",
            |p| p.ack_p50_ms,
            RGBColor(230, 140, 0),
        ),
        (
            "p99 crossing -> webhook latency (ms)",
            |p| p.webhook_p99_ms,
            MAGENTA,
        ),
    ];
    for (label, value, color) in latencies {
        chart
            .draw_secondary_series(
                LineSeries::new(latency_series(points, value), color.stroke_width(2)).point_size(4),
            )?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let target = RED.mix(0.4);
    chart
        .draw_secondary_series(LineSeries::new(
            [(0.0, p99_target_ms), (x_max, p99_target_ms)],
            target,
        ))?
        .label(format!("p99 target {p99_target_ms} ms"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], target));
    Ok(())
}

/// The capacity mark: a vertical line at the capacity's offered rate, a ring on its accepted
/// point, and the statement's figure as a label.
fn draw_capacity<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    points: &[Point],
    mark: CapacityMark,
    (x_max, y_max): (f64, f64),
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let color = RGBColor(0, 140, 60);
    let x = mark.offered_events_per_s;
    let label = mark.label();
    // The label reads away from the plot's right edge, where the top steps usually are.
    let side = if x > x_max / 2.0 {
        HPos::Right
    } else {
        HPos::Left
    };
    chart
        .draw_series(LineSeries::new(
            [(x, 0.0), (x, y_max)],
            color.stroke_width(2),
        ))?
        .label(label.clone())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    let accepted = points
        .iter()
        .find(|p| p.offered == x)
        .map_or(x, |p| p.accepted);
    chart.draw_series([Circle::new((x, accepted), 8, color.stroke_width(3))])?;
    chart.draw_series([Text::new(
        label,
        (x, y_max * 0.97),
        ("sans-serif", 14)
            .into_font()
            .color(&color)
            .pos(Pos::new(side, VPos::Top)),
    )])?;
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
    fn a_sweep_chart_is_an_svg_with_every_series() {
        let path = std::env::temp_dir().join(format!("bench-chart-{}.svg", std::process::id()));
        let mut steps = [step(1000.0, 1000.0, 2.0), step(2000.0, 1500.0, 40.0)];
        steps[0].webhook_latency_ms.p99 = Some(7.0);
        write(&path, &steps, 20.0, None, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("accepted events/s"));
        assert!(svg.contains("p99 ack latency (ms)"));
        assert!(svg.contains("p50 ack latency (ms)"));
        assert!(
            svg.contains("p99 crossing -&gt; webhook latency (ms)"),
            "{svg}"
        );
        assert!(!svg.contains("capacity") && !svg.contains("r=\"8\""));
        assert!(write(&path, &[], 20.0, None, "empty").is_err());
    }

    #[test]
    fn the_chart_marks_the_capacity_and_says_when_it_is_a_lower_bound() {
        let path = std::env::temp_dir().join(format!("bench-chart-cap-{}.svg", std::process::id()));
        let steps = [step(1000.0, 1000.0, 2.0), step(2000.0, 1500.0, 40.0)];
        let mark = CapacityMark {
            offered_events_per_s: 1000.0,
            lower_bound: false,
        };
        write(&path, &steps, 20.0, Some(mark), "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("capacity 1000 events/s"), "{svg}");
        // The ring around the capacity's accepted point (the series' points have radius 4).
        assert!(svg.contains("r=\"8\""), "{svg}");
        let mark = CapacityMark {
            offered_events_per_s: 2000.0,
            lower_bound: true,
        };
        write(&path, &steps, 20.0, Some(mark), "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("capacity at least 2000 events/s"), "{svg}");
    }
}
