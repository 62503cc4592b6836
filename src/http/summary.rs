//! `GET /v1/tollgate/summary`: one JSON object for dashboards (SPEC 3.1): ingest rate, apply
//! lag, workflows in flight by state, webhook deliveries waiting and dead letters, quarantined
//! inputs. Counts read from storage stop at [`COUNT_MAX`]; `counts_capped` then says which.

use super::openapi::{Data, Routes};
use actix_web::{HttpResponse, web};
use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::wire;
use crate::actors::entry::{IN_FLIGHT_STATES, workflow_state_prefix};
use crate::actors::quarantine::QUARANTINE_PREFIX;
use crate::domain::Timestamp;
use crate::storage::EffectPlace;

/// The most keys one count reads.
pub const COUNT_MAX: usize = 1_000_000;

pub fn routes(routes: &mut Routes<'_>) {
    routes.get(
        "/v1/tollgate/summary",
        "getSummary",
        "Dashboard summary: ingest rate, apply lag, workflows in flight by state, webhooks pending and dead letters, quarantined inputs (Tollgate)",
        summary,
    )
    .answers::<Data<SummaryView>>();
}

/// The counts read from storage: workflows in flight by state, dead letters, quarantined
/// inputs, and which stopped at [`COUNT_MAX`].
pub struct Counts {
    pub in_flight: Vec<(&'static str, usize)>,
    pub dead_letters: usize,
    pub quarantined: usize,
    pub capped: Vec<String>,
}

/// Reads the counts (blocking: run it off the HTTP worker).
///
/// # Errors
/// Storage errors.
pub fn storage_counts(engine: &crate::actors::Engine) -> ApiResult<Counts> {
    let mut capped = Vec::new();
    let mut in_flight = Vec::new();
    for s in IN_FLIGHT_STATES {
        let prefix = workflow_state_prefix(s);
        let count = engine.with_store("summary: workflows in flight", |store| {
            store.meta_count_prefix(&prefix, COUNT_MAX)
        })?;
        if count == COUNT_MAX {
            capped.push(format!("workflows_in_flight.{}", s.as_str()));
        }
        in_flight.push((s.as_str(), count));
    }
    let dead_letters = engine.with_store("summary: dead letters", |store| {
        store.effects_count(EffectPlace::DeadLetter, COUNT_MAX)
    })?;
    if dead_letters == COUNT_MAX {
        capped.push("webhooks.dead_letters".into());
    }
    let quarantined = engine.with_store("summary: quarantine", |store| {
        store.meta_count_prefix(QUARANTINE_PREFIX, COUNT_MAX)
    })?;
    if quarantined == COUNT_MAX {
        capped.push("quarantined_inputs".into());
    }
    Ok(Counts {
        in_flight,
        dead_letters,
        quarantined,
        capped,
    })
}

/// `GET /v1/tollgate/summary`: what a dashboard shows.
#[derive(Serialize, ToSchema)]
pub struct SummaryView {
    #[schema(value_type = crate::http::request::Time)]
    at: String,
    /// Recovery finished and accepting work.
    ready: bool,
    /// Customers known.
    customers: usize,
    ingest: IngestSummary,
    apply: ApplySummary,
    workflows_in_flight: InFlightSummary,
    webhooks: WebhookSummary,
    /// Inputs quarantined and not decided.
    quarantined_inputs: usize,
    /// The counts that reached their scan cap (1,000,000) and are at least that.
    counts_capped: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct IngestSummary {
    /// Accepted events per second over the last 10 s (null until 10 s of history).
    events_per_second_10s: Option<u64>,
    /// The same over 60 s.
    events_per_second_60s: Option<u64>,
    events_accepted_total: u64,
    events_duplicate_total: u64,
}

#[derive(Serialize, ToSchema)]
struct ApplySummary {
    /// Age of the oldest acknowledged input not yet applied, in ms.
    lag_ms: i64,
    pending_inputs: usize,
}

#[derive(Serialize, ToSchema)]
struct InFlightSummary {
    total: usize,
    by_state: BTreeMap<String, usize>,
}

#[derive(Serialize, ToSchema)]
struct WebhookSummary {
    pending: u64,
    in_flight: u64,
    dead_letters: usize,
}

async fn summary(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let engine = state.engine.clone();
    // Scans of up to a million keys each: off the HTTP worker.
    let Counts {
        in_flight,
        dead_letters,
        quarantined,
        capped,
    } = web::block(move || storage_counts(&engine))
        .await
        .map_err(|_| ApiError::Failed("the summary task failed".into()))??;
    let engine = &state.engine;
    let in_flight_total: usize = in_flight.iter().map(|(_, n)| n).sum();
    let by_state: BTreeMap<String, usize> = in_flight
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    let webhooks = engine.webhook_stats().snapshot();
    let metrics = engine.metrics();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(wire::data(SummaryView {
        at: wire::time(Timestamp(engine.now_ms())),
        ready: engine.is_ready(),
        customers: engine.customer_count(),
        ingest: IngestSummary {
            events_per_second_10s: engine.ingest_per_second(10),
            events_per_second_60s: engine.ingest_per_second(60),
            events_accepted_total: get(&metrics.events_accepted),
            events_duplicate_total: get(&metrics.events_duplicate),
        },
        apply: ApplySummary {
            lag_ms: engine.apply_lag_ms(),
            pending_inputs: engine.pending_inputs(),
        },
        workflows_in_flight: InFlightSummary {
            total: in_flight_total,
            by_state,
        },
        webhooks: WebhookSummary {
            pending: webhooks.pending,
            in_flight: webhooks.in_flight,
            dead_letters,
        },
        quarantined_inputs: quarantined,
        counts_capped: capped,
    }))
}
