//! `tollgate bench` at a tiny size with the real binary: the report has every key the issue
//! names and shows real traffic (accepted events, matched threshold webhooks, no 5xx), and a
//! sweep writes its SVG chart. Nothing here asserts speed: CI machines are slow at random.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("bench")
        .args(args)
        .args(["--json", "--report"])
        .arg(&report)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("the tollgate binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let printed: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}); stderr: {stderr}"));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(printed, written, "--json and --report give the same report");
    // The started server's data directory is removed afterwards.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != "report.json")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    printed
}

fn assert_percentiles(report: &Value, key: &str) {
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report[key].get(p).is_some(),
            "{key}.{p} is missing: {report}"
        );
    }
}

fn assert_no_5xx(errors: &Value) {
    let errors = errors.as_object().expect("errors_by_status is an object");
    assert!(
        !errors.keys().any(|status| status.starts_with('5')),
        "{errors:?}"
    );
}

#[test]
fn a_tiny_open_loop_run_with_baseline_reports_every_figure() {
    let report = bench(&[
        "--customers",
        "20",
        "--duration",
        "2",
        "--rate",
        "500",
        "--batch",
        "10",
        "--connections",
        "8",
        "--crossing",
        "0.5",
        "--duplicates",
        "0.1",
        "--zipf",
        "0.8",
        "--baseline",
    ]);
    for key in [
        "offered_events_per_s",
        "accepted_events_per_s",
        "ack_latency_ms",
        "webhook_latency_ms",
        "server_cpu_us_per_event",
        "server_rss_bytes",
        "errors_by_status",
        "baseline_events_per_s",
        "machine",
    ] {
        assert!(report.get(key).is_some(), "{key} is missing: {report}");
    }
    assert_percentiles(&report, "ack_latency_ms");
    assert_percentiles(&report, "webhook_latency_ms");
    assert!(report["accepted_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["baseline_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["ack_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["server_rss_bytes"].as_u64().unwrap() > 0);
    assert!(report["server_cpu_us_per_event"].as_f64().is_some());
    assert_no_5xx(&report["errors_by_status"]);
    // Every acknowledged first-time event was counted by the server; duplicates were sent and
    // are not among them.
    let acknowledged = &report["acknowledged"];
    let unique = acknowledged["unique_events"].as_u64().unwrap();
    assert!(unique > 0, "{acknowledged}");
    assert_eq!(acknowledged["lost_events"], 0, "{acknowledged}");
    assert!(acknowledged["server_accepted_events"].as_u64().unwrap() >= unique);
    // Crossings happen and their signed webhooks arrive (no timing asserted).
    assert_eq!(report["webhooks"]["invalid_signatures"], 0);
    assert!(
        report["webhooks"]["matched"].as_u64().unwrap() > 0,
        "{}",
        report["webhooks"]
    );
    let machine = &report["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1);
    assert!(machine.get("cpu_model").is_some() && machine.get("disks").is_some());
}

#[test]
fn a_sweep_of_two_rates_writes_an_svg_chart_and_a_capacity_statement() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");
    let report = bench(&[
        "--customers",
        "10",
        "--duration",
        "1",
        "--batch",
        "10",
        "--connections",
        "4",
        "--sweep",
        "--sweep-rates",
        "100,200",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(Path::new(&chart)).expect("the chart is written");
    assert!(svg.contains("<svg"));
    let sweep = &report["sweep"];
    assert_eq!(sweep["steps"].as_array().unwrap().len(), 2);
    assert!(
        sweep["capacity_statement"]
            .as_str()
            .unwrap()
            .contains("10 customers at p99 <= 20 ms")
    );
    for step in sweep["steps"].as_array().unwrap() {
        assert!(step["accepted_events_per_s"].as_f64().unwrap() > 0.0);
        assert_no_5xx(&step["errors_by_status"]);
    }
}
