//! Setting up the bench's customers through the public API, as a client would: the catalog
//! (a COUNT metric on `api_call`, its USAGE product, a FIXED product for threshold commits, a
//! rate card at 1 cent per call), then per customer `POST /v1/customers` (with its ingest alias)
//! and `POST /v1/contracts/create` with a prepaid commit and both threshold configurations
//! (gate NONE, so every crossing completes without an operator). Requests run concurrently;
//! each carries an `Idempotency-Key`, so a retry after a 429, a 5xx or a lost connection is safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::population::{
    PREPAID_THRESHOLD_CENTS, RECHARGE_TO_CENTS, SPEND_THRESHOLD_CENTS, prepaid_commit_cents,
};
use super::report::SetupReport;
use crate::domain::Timestamp;

/// Attempts per request before setup gives up (429 and 5xx answers, transport errors).
const ATTEMPTS_MAX: u32 = 8;
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(50);
const READY_WAIT: Duration = Duration::from_secs(60);

/// A small client for the JSON API.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    retries: Arc<AtomicU64>,
}

impl Api {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, token: &str, connections: usize) -> Result<Api, String> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            retries: Arc::default(),
        })
    }

    /// Waits until `GET /ready` answers 2xx.
    ///
    /// # Errors
    /// When it does not within a minute.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let response = self.client.get(format!("{}/ready", self.base)).send().await;
            if response.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not become ready", self.base));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` and returns the response's `data`, retrying 429s, 5xx and transport errors.
    ///
    /// # Errors
    /// Any other status (with the response body), or the last failure after all attempts.
    pub async fn post(&self, path: &str, body: &Value, key: &str) -> Result<Value, String> {
        let mut delay = RETRY_FIRST_DELAY;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS_MAX {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            let result = self
                .client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    last = format!("POST {path}: {e}");
                    continue;
                }
            };
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            match status {
                200..=299 => {
                    let json: Value = serde_json::from_str(&text)
                        .map_err(|e| format!("POST {path}: unreadable answer {e}: {text}"))?;
                    return Ok(json["data"].clone());
                }
                429 | 500..=599 => last = format!("POST {path}: {status} {text}"),
                _ => return Err(format!("POST {path}: {status} {text}")),
            }
        }
        Err(last)
    }

    /// One counter or gauge of `GET /metrics` (Prometheus text), `None` when unreadable.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        metric_value(&text, name)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
        })
}

fn id_of(data: &Value, what: &str) -> Result<String, String> {
    data["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{what}: no id in {data}"))
}

/// The catalog every bench contract uses.
pub struct Catalog {
    pub rate_card_id: String,
    pub fixed_product_id: String,
}

/// Creates the catalog, named after the run so runs against one server do not collide.
///
/// # Errors
/// The first request that fails.
pub async fn create_catalog(api: &Api, run_id: &str) -> Result<Catalog, String> {
    let metric = api
        .post(
            "/v1/billable-metrics/create",
            &json!({
                "name": format!("bench {run_id} api calls"),
                "aggregation_type": "COUNT",
                "event_type_filter": {"in_values": ["api_call"]}
            }),
            &format!("{run_id}-metric"),
        )
        .await?;
    let usage = api
        .post(
            "/v1/contract-pricing/products/create",
            &json!({
                "name": format!("bench {run_id} API calls"), "type": "USAGE",
                "billable_metric_id": id_of(&metric, "billable metric")?
            }),
            &format!("{run_id}-usage-product"),
        )
        .await?;
    let fixed = api
        .post(
            "/v1/contract-pricing/products/create",
            &json!({"name": format!("bench {run_id} commits"), "type": "FIXED"}),
            &format!("{run_id}-fixed-product"),
        )
        .await?;
    let card = api
        .post(
            "/v1/contract-pricing/rate-cards/create",
            &json!({"name": format!("bench {run_id} list")}),
            &format!("{run_id}-rate-card"),
        )
        .await?;
    let rate_card_id = id_of(&card, "rate card")?;
    api.post(
        "/v1/contract-pricing/rate-cards/addRate",
        &json!({
            "rate_card_id": rate_card_id, "product_id": id_of(&usage, "usage product")?,
            "entitled": true, "rate_type": "FLAT", "price": 1,
            "starting_at": "2020-01-01T00:00:00Z"
        }),
        &format!("{run_id}-rate"),
    )
    .await?;
    Ok(Catalog {
        rate_card_id,
        fixed_product_id: id_of(&fixed, "fixed product")?,
    })
}

/// The contract of one bench customer: a prepaid commit sized so that the customer crosses its
/// prepaid balance threshold after `crossing_after` events (or never), and both threshold
/// configurations with gate NONE.
pub fn contract_body(
    customer_id: &str,
    catalog: &Catalog,
    crossing_after: Option<u32>,
    start: &str,
) -> Value {
    let commit = prepaid_commit_cents(crossing_after);
    let threshold_commit =
        json!({"product_id": catalog.fixed_product_id, "name": "bench threshold commit"});
    json!({
        "customer_id": customer_id,
        "rate_card_id": catalog.rate_card_id,
        "starting_at": start,
        "commits": [{
            "type": "PREPAID",
            "product_id": catalog.fixed_product_id,
            "priority": 10,
            "access_schedule": {"schedule_items": [
                {"amount": commit, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}
            ]},
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": commit}]}
        }],
        "spend_threshold_configuration": {
            "commit": threshold_commit, "is_enabled": true,
            "payment_gate_config": {"payment_gate_type": "NONE"},
            "threshold_amount": SPEND_THRESHOLD_CENTS
        },
        "prepaid_balance_threshold_configuration": {
            "commit": threshold_commit, "is_enabled": true,
            "payment_gate_config": {"payment_gate_type": "NONE"},
            "threshold_amount": PREPAID_THRESHOLD_CENTS,
            "recharge_to_amount": RECHARGE_TO_CENTS
        }
    })
}

/// Time spent waiting for answers, by request kind.
#[derive(Default)]
struct Timings {
    customers_us: AtomicU64,
    contracts_us: AtomicU64,
}

/// Creates every customer with its alias and contract, `concurrency` requests in flight, with a
/// progress bar; returns the server's customer ids by bench index.
///
/// # Errors
/// The first customer that could not be created.
pub async fn create_customers(
    api: &Api,
    catalog: Catalog,
    run_id: &str,
    aliases: Arc<Vec<String>>,
    crossing: Arc<Vec<Option<u32>>>,
    concurrency: usize,
) -> Result<(Vec<String>, SetupReport), String> {
    let customers = aliases.len();
    let started = Instant::now();
    let bar = ProgressBar::new(customers as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} customers, {per_sec}, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("setup");
    let start = Timestamp(now_ms()).month_start().to_rfc3339();
    let catalog = Arc::new(catalog);
    let next = Arc::new(AtomicUsize::new(0));
    let timings = Arc::new(Timings::default());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (api, catalog, next, aliases, crossing, bar, start, run_id, timings) = (
            api.clone(),
            catalog.clone(),
            next.clone(),
            aliases.clone(),
            crossing.clone(),
            bar.clone(),
            start.clone(),
            run_id.to_owned(),
            timings.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= aliases.len() {
                    return Ok::<_, String>(created);
                }
                let result = async {
                    let sent = Instant::now();
                    let customer = api
                        .post(
                            "/v1/customers",
                            &json!({"name": format!("bench {run_id} {i}"), "ingest_aliases": [aliases[i]]}),
                            &format!("{run_id}-customer-{i}"),
                        )
                        .await?;
                    let id = id_of(&customer, "customer")?;
                    let customer_done = Instant::now();
                    api.post(
                        "/v1/contracts/create",
                        &contract_body(&id, &catalog, crossing[i], &start),
                        &format!("{run_id}-contract-{i}"),
                    )
                    .await?;
                    timings.customers_us.fetch_add(
                        customer_done.duration_since(sent).as_micros() as u64,
                        Ordering::Relaxed,
                    );
                    timings
                        .contracts_us
                        .fetch_add(customer_done.elapsed().as_micros() as u64, Ordering::Relaxed);
                    Ok::<_, String>(id)
                }
                .await;
                match result {
                    Ok(id) => created.push((i, id)),
                    Err(e) => {
                        // The other tasks stop at their next customer.
                        next.store(aliases.len(), Ordering::Relaxed);
                        return Err(e);
                    }
                }
                bar.inc(1);
            }
        }));
    }
    let mut ids = vec![String::new(); customers];
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(created)) => {
                for (i, id) in created {
                    ids[i] = id;
                }
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(format!("a setup task failed: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(format!("setup failed: {e}"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = 2 * customers as u64;
    Ok((
        ids,
        SetupReport {
            customers,
            requests,
            seconds,
            requests_per_s: requests as f64 / seconds.max(1e-9),
            concurrency,
            retries: api.retries(),
            customer_request_ms_avg: timings.customers_us.load(Ordering::Relaxed) as f64
                / 1000.0
                / customers as f64,
            contract_request_ms_avg: timings.contracts_us.load(Ordering::Relaxed) as f64
                / 1000.0
                / customers as f64,
        },
    ))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn a_metric_is_read_by_its_exact_name() {
        let text = "# HELP tollgate_x_total X.\n# TYPE tollgate_x_total counter\n\
                    tollgate_x_total_extra 5\ntollgate_x_total 42\ntollgate_y 7\n";
        assert_eq!(metric_value(text, "tollgate_x_total"), Some(42));
        assert_eq!(metric_value(text, "tollgate_y"), Some(7));
        assert_eq!(metric_value(text, "tollgate_z"), None);
    }
}
