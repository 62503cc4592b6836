//! `tollgate bench` at a tiny size with the real binary: the report has every key the issue
//! names and shows real traffic (accepted events, matched threshold webhooks, no 5xx), records
//! the build it measured, listens on pinned ports when asked, and a sweep writes its SVG chart
//! and refuses to state a capacity from too few samples. Nothing here asserts speed: CI machines
//! are slow at random.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    bench_with_stderr(args).0
}

/// The report and what the tool printed on stderr.
fn bench_with_stderr(args: &[&str]) -> (Value, String) {
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
    (printed, stderr.into_owned())
}

/// A port nothing listens on now (the OS's pick; released before the bench binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        // 100 requests/s for 2 s: enough samples (100) for a p99.
        "--batch",
        "5",
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
    assert!(svg.contains("p50 ack latency") && svg.contains("webhook latency"));
    let sweep = &report["sweep"];
    assert_eq!(sweep["steps"].as_array().unwrap().len(), 2);
    // 10 and 20 requests per step: fewer than the 100 samples a p99 needs, so no step is
    // sustained and no capacity is stated, whatever the machine's speed.
    let statement = sweep["capacity_statement"].as_str().unwrap();
    assert!(
        statement.starts_with("no offered rate was sustained with 10 customers at p99 <= 20 ms"),
        "{statement}"
    );
    assert!(sweep["capacity_events_per_s"].is_null(), "{sweep}");
    assert_eq!(sweep["capacity_is_lower_bound"], false);
    assert_eq!(report["parameters"]["min_samples"], 100);
    for step in sweep["steps"].as_array().unwrap() {
        assert!(step["accepted_events_per_s"].as_f64().unwrap() > 0.0);
        assert_no_5xx(&step["errors_by_status"]);
        let ack = &step["ack_latency_ms"];
        assert!(ack["count"].as_u64().unwrap() < 100, "{ack}");
        assert!(ack["p50"].is_null() && ack["p99"].is_null(), "{ack}");
        assert!(ack["max"].as_f64().is_some(), "{ack}");
        let verdict = step["verdict"]["result"].as_str().unwrap();
        assert!(
            ["too_few_samples", "accepted_too_little"].contains(&verdict),
            "{step}"
        );
    }
}

#[test]
fn pinned_ports_are_where_the_server_and_the_null_server_listen_and_the_build_is_recorded() {
    let (server_port, null_port) = (free_port(), free_port());
    let (report, stderr) = bench_with_stderr(&[
        "--customers",
        "5",
        "--duration",
        "1",
        "--rate",
        "100",
        "--batch",
        "10",
        "--connections",
        "2",
        "--baseline",
        "--server-port",
        &server_port.to_string(),
        "--null-port",
        &null_port.to_string(),
    ]);
    let parameters = &report["parameters"];
    assert_eq!(
        parameters["target"],
        format!("a started server (http://127.0.0.1:{server_port})")
    );
    assert_eq!(
        parameters["null_server"],
        format!("http://127.0.0.1:{null_port}")
    );
    assert!(report["accepted_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["baseline_events_per_s"].as_f64().unwrap() > 0.0);
    // 10 requests: the percentiles are withheld, the maximum is not.
    assert!(report["ack_latency_ms"]["p50"].is_null());
    assert!(report["ack_latency_ms"]["max"].as_f64().is_some());
    let build = &report["build"];
    let debug = cfg!(debug_assertions);
    assert_eq!(build["profile"], if debug { "debug" } else { "release" });
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
    let revision = build["git_revision"].as_str().unwrap();
    assert!(
        revision == "unknown"
            || revision
                .trim_end_matches("-dirty")
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );
    assert_eq!(
        stderr.starts_with("warning: this is a debug build"),
        debug,
        "{stderr}"
    );
}
