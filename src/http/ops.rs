//! Operational endpoints of our own: `/health` (the process lives), `/ready` (recovery done,
//! accepting work) and `/metrics` (Prometheus text format).

use super::openapi::{Bare, Plain, Routes};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::actors::metrics::EngineMetrics;

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get("/health", "health", "The process lives", health)
        .answers::<Bare<StatusView>>()
        .public();
    routes
        .get(
            "/ready",
            "ready",
            "Recovery finished and accepting work (503 before)",
            ready,
        )
        .answers::<Bare<StatusView>>()
        .public();
    routes
        .get("/metrics", "metrics", "Prometheus metrics", metrics)
        .answers::<Plain>()
        .public();
}

/// A probe's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusView {
    /// ok (health) or ready.
    pub status: &'static str,
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(StatusView { status: "ok" })
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_ready() {
        HttpResponse::Ok().json(StatusView { status: "ready" })
    } else {
        // The cause is logged, not shown: this endpoint needs no token.
        let message = match state.engine.failure() {
            Some(_) => "stopped after a storage failure; restarting",
            None => "recovering",
        };
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "message": message }))
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Workflows by gate: started, released, failed (counters rebuilt from the stored indexes at
/// start) and in flight (a gauge read from the index), so that for every gate
/// started = released + failed + in flight.
fn gate_counters(out: &mut String, state: &AppState, gauges: Option<&StorageGauges>) {
    use crate::actors::entry::{GATES, gate_name};
    let gates = &state.engine.metrics().gates;
    for (name, help, column) in [
        (
            "tollgate_workflows_started_total",
            "Payment-gate workflows started, by gate.",
            0,
        ),
        (
            "tollgate_workflows_released_total",
            "Payment-gate workflows released (paid), by gate.",
            1,
        ),
        (
            "tollgate_workflows_failed_total",
            "Payment-gate workflows failed (or cancelled), by gate.",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for gate in GATES {
            let (started, released, failed) = gates.get(gate);
            let value = [started, released, failed][column];
            let _ = writeln!(out, "{name}{{gate=\"{}\"}} {value}", gate_name(gate));
        }
    }
    if let Some(in_flight) = gauges.map(|g| g.gate_in_flight.iter().copied()) {
        let name = "tollgate_workflows_in_flight_by_gate";
        let _ = writeln!(
            out,
            "# HELP {name} Payment-gate workflows in flight, by gate (started = released + failed + in flight).\n# TYPE {name} gauge"
        );
        for (gate, count) in GATES.iter().zip(in_flight) {
            let _ = writeln!(out, "{name}{{gate=\"{}\"}} {count}", gate_name(*gate));
        }
    }
}

/// What `/metrics` reads from storage (prefix scans, each capped at the summary's
/// `COUNT_MAX`), kept for [`GAUGES_FRESH`]: a flood of scrapes (the endpoint needs no token)
/// costs one set of scans per second, and concurrent scrapes share one.
#[derive(Clone)]
pub struct StorageGauges {
    counts: Arc<super::summary::Counts>,
    /// In flight by gate, in `GATES` order.
    gate_in_flight: Arc<Vec<usize>>,
}

/// How long a read of the storage gauges serves scrapes.
const GAUGES_FRESH: Duration = Duration::from_secs(1);

/// The last read of the storage gauges, shared by every scrape of one server.
pub type GaugeCache = tokio::sync::Mutex<Option<(Instant, StorageGauges)>>;

async fn storage_gauges(state: &AppState) -> Option<StorageGauges> {
    use crate::actors::entry::{GATES, gate_prefix};
    let mut cache = state.metrics_gauges.lock().await;
    if let Some((read_at, gauges)) = cache.as_ref() {
        if read_at.elapsed() < GAUGES_FRESH {
            return Some(gauges.clone());
        }
    }
    let engine = state.engine.clone();
    let read = web::block(move || {
        let counts = super::summary::storage_counts(&engine)?;
        let gates = GATES
            .iter()
            .map(|&gate| {
                engine.with_store("metrics: workflows in flight by gate", |store| {
                    store.meta_count_prefix(&gate_prefix("wfi", gate), super::summary::COUNT_MAX)
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok::<_, super::error::ApiError>((counts, gates))
    })
    .await;
    let Ok(Ok((counts, gates))) = read else {
        return None;
    };
    let gauges = StorageGauges {
        counts: Arc::new(counts),
        gate_in_flight: Arc::new(gates),
    };
    *cache = Some((Instant::now(), gauges.clone()));
    Some(gauges)
}

/// The histogram families, in seconds.
fn histograms(out: &mut String, state: &AppState) {
    let engine = &state.engine;
    let m = engine.metrics();
    let family = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    };
    family(
        out,
        "tollgate_ingest_ack_seconds",
        "Ingest requests, from the engine taking them to their durable acknowledgement.",
    );
    m.ingest_ack.render(out, "tollgate_ingest_ack_seconds", "");
    family(
        out,
        "tollgate_apply_lag_seconds",
        "Inputs, from their acknowledgement (log append) to their apply.",
    );
    m.apply_lag.render(out, "tollgate_apply_lag_seconds", "");
    family(
        out,
        "tollgate_log_persist_seconds",
        "Group writes of the log to RocksDB, their fsync included.",
    );
    engine
        .store()
        .persist_histogram()
        .render(out, "tollgate_log_persist_seconds", "");
    family(
        out,
        "tollgate_webhook_delivery_seconds",
        "Webhook delivery attempts, by destination and HTTP status (error: none).",
    );
    engine
        .webhook_stats()
        .delivery
        .render(out, "tollgate_webhook_delivery_seconds");
    family(
        out,
        "tollgate_payment_call_seconds",
        "Payment provider steps (one or more Stripe calls), by action and result.",
    );
    m.payment_calls.render(out, "tollgate_payment_call_seconds");
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let engine = &state.engine;
    let m = engine.metrics();
    let g = EngineMetrics::get;
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "tollgate_ingest_events_accepted_total",
        "counter",
        "Usage events accepted (durable, not duplicates).",
        g(&m.events_accepted),
    );
    metric(
        &mut out,
        "tollgate_ingest_events_duplicate_total",
        "counter",
        "Usage events ignored as duplicate transaction ids.",
        g(&m.events_duplicate),
    );
    metric(
        &mut out,
        "tollgate_ingest_events_late_total",
        "counter",
        "Usage events kept for a customer not known yet.",
        g(&m.events_late),
    );
    metric(
        &mut out,
        "tollgate_ingest_events_late_released_total",
        "counter",
        "Late events applied once their customer appeared.",
        g(&m.events_late_released),
    );
    metric(
        &mut out,
        "tollgate_ingest_rejected_total",
        "counter",
        "Requests refused with 429 because too much work was waiting.",
        g(&m.overloaded),
    );
    metric(
        &mut out,
        "tollgate_inputs_applied_total",
        "counter",
        "Inputs applied by customer actors.",
        g(&m.inputs_applied),
    );
    metric(
        &mut out,
        "tollgate_inputs_rejected_total",
        "counter",
        "Inputs the domain refused.",
        g(&m.inputs_rejected),
    );
    metric(
        &mut out,
        "tollgate_inputs_quarantined_total",
        "counter",
        "Inputs kept in quarantine instead of applied (their apply panicked or overflowed).",
        g(&m.inputs_quarantined),
    );
    metric(
        &mut out,
        "tollgate_quarantine_reapplied_total",
        "counter",
        "Quarantined inputs an operator re-applied successfully.",
        g(&m.quarantine_reapplied),
    );
    metric(
        &mut out,
        "tollgate_quarantine_discarded_total",
        "counter",
        "Quarantined inputs an operator discarded.",
        g(&m.quarantine_discarded),
    );
    metric(
        &mut out,
        "tollgate_inputs_pending",
        "gauge",
        "Inputs accepted but not applied yet.",
        engine.pending_inputs(),
    );
    metric(
        &mut out,
        "tollgate_apply_lag_oldest_seconds",
        "gauge",
        "How long the oldest accepted input not applied yet has waited (worst partition).",
        rust_decimal::Decimal::new(engine.apply_lag_ms(), 3),
    );
    metric(
        &mut out,
        "tollgate_actors_resident",
        "gauge",
        "Customer actors in memory.",
        m.actors_resident.load(std::sync::atomic::Ordering::Relaxed),
    );
    metric(
        &mut out,
        "tollgate_actors_evicted_total",
        "counter",
        "Idle customer actors evicted.",
        g(&m.actors_evicted),
    );
    metric(
        &mut out,
        "tollgate_actors_preloaded_total",
        "counter",
        "Customer states read into memory by the background preload after recovery.",
        g(&m.actors_preloaded),
    );
    let gauges = storage_gauges(&state).await;
    gate_counters(&mut out, &state, gauges.as_ref());
    let _ = writeln!(
        out,
        "# HELP tollgate_workflows_action_required_total Entries of STRIPE workflows into ACTION_REQUIRED (this process).\n# TYPE tollgate_workflows_action_required_total counter\ntollgate_workflows_action_required_total {}",
        g(&m.workflows_action_required)
    );
    metric(
        &mut out,
        "tollgate_recharges_limited_total",
        "counter",
        "Times a recharge safety rail started holding a prepaid balance recharge back (this process).",
        g(&m.recharges_limited),
    );
    histograms(&mut out, &state);
    if let Some(counts) = gauges.as_ref().map(|g| &g.counts) {
        let _ = writeln!(
            out,
            "# HELP tollgate_workflows_in_flight Payment-gate workflows in flight, by state (from the index of workflows by state).\n# TYPE tollgate_workflows_in_flight gauge"
        );
        for (state_name, count) in &counts.in_flight {
            let _ = writeln!(
                out,
                "tollgate_workflows_in_flight{{state=\"{state_name}\"}} {count}"
            );
        }
        metric(
            &mut out,
            "tollgate_webhook_dead_letters_on_disk",
            "gauge",
            "Webhook deliveries in the dead letters, on disk.",
            counts.dead_letters,
        );
        metric(
            &mut out,
            "tollgate_inputs_quarantined_on_disk",
            "gauge",
            "Inputs in quarantine now, on disk.",
            counts.quarantined,
        );
    }
    let _ = writeln!(
        out,
        "# HELP tollgate_build_info The running build.\n# TYPE tollgate_build_info gauge\ntollgate_build_info{{version=\"{}\",storage_format=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::storage::STORAGE_FORMAT_VERSION
    );
    let sizes = engine.store().sizes();
    if !sizes.is_empty() {
        let _ = writeln!(
            out,
            "# HELP tollgate_storage_bytes Bytes per column family: in table files (on disk) and in memtables (also in the write-ahead log).\n# TYPE tollgate_storage_bytes gauge"
        );
        for (cf, size) in sizes {
            for (kind, value) in [
                ("table", size.table_bytes),
                ("memtable", size.memtable_bytes),
            ] {
                let _ = writeln!(
                    out,
                    "tollgate_storage_bytes{{cf=\"{cf}\",kind=\"{kind}\"}} {value}"
                );
            }
        }
    }
    metric(
        &mut out,
        "tollgate_payment_requests_total",
        "counter",
        "Charges sent to the payment provider.",
        g(&m.payment_requests),
    );
    let w = engine.webhook_stats().snapshot();
    metric(
        &mut out,
        "tollgate_webhook_delivered_total",
        "counter",
        "Webhooks delivered (2xx).",
        w.delivered,
    );
    metric(
        &mut out,
        "tollgate_webhook_attempts_total",
        "counter",
        "Webhook delivery attempts.",
        w.attempts,
    );
    metric(
        &mut out,
        "tollgate_webhook_retries_total",
        "counter",
        "Failed webhook attempts that will be retried.",
        w.retries,
    );
    metric(
        &mut out,
        "tollgate_webhook_dead_letters_total",
        "counter",
        "Webhooks given up on and dead-lettered.",
        w.dead_lettered,
    );
    metric(
        &mut out,
        "tollgate_webhook_pending",
        "gauge",
        "Webhooks waiting for delivery.",
        w.pending,
    );
    let s = engine.store_stats();
    metric(
        &mut out,
        "tollgate_log_appends_total",
        "counter",
        "Append requests to the partition logs.",
        s.appends,
    );
    metric(
        &mut out,
        "tollgate_log_records_total",
        "counter",
        "Records appended.",
        s.records,
    );
    metric(
        &mut out,
        "tollgate_log_fsyncs_total",
        "counter",
        "Group-commit writes (one fsync each in fsync mode).",
        s.fsyncs,
    );
    metric(
        &mut out,
        "tollgate_log_persist_last_microseconds",
        "gauge",
        "Duration of the last group-commit write.",
        s.last_persist_micros,
    );
    metric(
        &mut out,
        "tollgate_checkpoints_total",
        "counter",
        "Checkpoints written.",
        g(&m.checkpoints),
    );
    metric(
        &mut out,
        "tollgate_checkpoint_last_microseconds",
        "gauge",
        "Duration of the last checkpoint.",
        g(&m.checkpoint_last_micros),
    );
    metric(
        &mut out,
        "tollgate_recovery_replayed_inputs",
        "gauge",
        "Inputs replayed at the last start.",
        g(&m.recovery_replayed),
    );
    metric(
        &mut out,
        "tollgate_recovery_milliseconds",
        "gauge",
        "Duration of the last recovery.",
        g(&m.recovery_millis),
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
