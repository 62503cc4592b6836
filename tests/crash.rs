//! Crash tests with the real binary: start `tollgate serve` as a child process, load it with
//! concurrent ingest (including re-sent duplicates) crossing a spend threshold again and again,
//! `kill -9` it at random moments several times, restart on the same data dir, and check that
//! every acknowledged event was applied exactly once, that money adds up, that no workflow was
//! started twice, and that every webhook is delivered with its original id.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::Receiver;

const TOKEN: &str = "crash-test-token";

struct Server {
    child: Child,
    base: String,
}

/// A test that fails mid-way still stops its server: a leaked `tollgate serve` would keep
/// the port, the data dir and the file descriptors it inherited (cargo's build lock).
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_server(config: &std::path::Path) -> Server {
    start_server_with_env(config, &[])
}

fn start_server_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.envs(env.iter().copied());
    spawn_server(command, config)
}

fn spawn_server(mut command: Command, config: &std::path::Path) -> Server {
    let mut child = command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tollgate binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("tollgate listening on ") {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {base} never became ready");
}

/// One request, retried like the SDK retries while the engine sheds load (429: the apply lag
/// bound, easily reached by a debug build on a busy machine); any other answer is returned.
async fn post(client: &reqwest::Client, base: &str, path: &str, body: &Value) -> (u16, Value) {
    for _ in 0..1_000 {
        let response = client
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let text = response.text().await.unwrap_or_default();
        return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    panic!("{path} shed load for 20 seconds");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event(tx: &str) -> Value {
    json!({
        "transaction_id": tx,
        "customer_id": "crash-co",
        "event_type": "api_call",
        "timestamp": tollgate::domain::Timestamp(now_ms()).to_rfc3339(),
    })
}

/// What the load generator knows: every batch it sent and whether it was acknowledged.
#[derive(Default)]
struct Ledger {
    sent: BTreeMap<usize, Vec<String>>,
    acked: BTreeSet<usize>,
}

async fn load(base: String, ledger: Arc<Mutex<Ledger>>, worker: usize, stop: Arc<Mutex<bool>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0usize;
    while !*stop.lock().unwrap() {
        let batch_id = worker * 1_000_000 + n;
        n += 1;
        // Every third batch re-sends the previous batch's ids (a client retry).
        let ids: Vec<String> = if n % 3 == 0 && n > 1 {
            let previous = ledger.lock().unwrap().sent.get(&(batch_id - 1)).cloned();
            previous.unwrap_or_default()
        } else {
            (0..20).map(|i| format!("w{worker}-b{n}-e{i}")).collect()
        };
        if ids.is_empty() {
            continue;
        }
        ledger.lock().unwrap().sent.insert(batch_id, ids.clone());
        let body: Vec<Value> = ids.iter().map(|id| event(id)).collect();
        let result = client
            .post(format!("{base}/v1/ingest"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = result {
            if response.status().as_u16() == 200 {
                ledger.lock().unwrap().acked.insert(batch_id);
            }
        }
    }
}

fn write_config(dir: &std::path::Path, webhook_url: &str) -> std::path::PathBuf {
    write_config_with(dir, webhook_url, 300, 150)
}

/// A config whose checkpoints and evictions come at the given intervals.
fn write_config_with(
    dir: &std::path::Path,
    webhook_url: &str,
    checkpoint_interval_ms: u64,
    evict_idle_ms: u64,
) -> std::path::PathBuf {
    let data = dir.join("data");
    write_config_on(
        dir,
        &data,
        webhook_url,
        (checkpoint_interval_ms, evict_idle_ms),
    )
}

/// A config (written into `dir`) whose data directory is `data`.
fn write_config_on(
    dir: &std::path::Path,
    data: &std::path::Path,
    webhook_url: &str,
    (checkpoint_interval_ms, evict_idle_ms): (u64, u64),
) -> std::path::PathBuf {
    let path = dir.join("tollgate.toml");
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:0"
workers = 2
[auth]
tokens = ["{TOKEN}"]
[storage]
data_dir = "{data}"
durability = "fsync"
[engine]
partitions = 2
checkpoint_interval_ms = {checkpoint_interval_ms}
evict_idle_ms = {evict_idle_ms}
[webhooks]
first_retry_ms = 100
max_interval_ms = 500
[[webhooks.destinations]]
url = "{webhook_url}"
secret = "{secret}"
"#,
        data = data.display(),
        secret = support::SECRET,
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn setup(client: &reqwest::Client, base: &str) -> (String, String) {
    // Catalog: a COUNT metric on api_call events, its USAGE product at $1, a FIXED product.
    let (s, metric) = post(client, base, "/v1/billable-metrics/create", &json!({
        "name": "calls", "aggregation_type": "COUNT", "event_type_filter": {"in_values": ["api_call"]}
    })).await;
    assert_eq!(s, 200, "{metric}");
    let metric = metric["data"]["id"].as_str().unwrap().to_owned();
    let (s, usage) = post(
        client,
        base,
        "/v1/contract-pricing/products/create",
        &json!({
            "name": "API calls", "type": "USAGE", "billable_metric_id": metric
        }),
    )
    .await;
    assert_eq!(s, 200, "{usage}");
    let usage = usage["data"]["id"].as_str().unwrap().to_owned();
    let (_, fixed) = post(
        client,
        base,
        "/v1/contract-pricing/products/create",
        &json!({
            "name": "Threshold charge", "type": "FIXED"
        }),
    )
    .await;
    let fixed = fixed["data"]["id"].as_str().unwrap().to_owned();
    let (_, card) = post(
        client,
        base,
        "/v1/contract-pricing/rate-cards/create",
        &json!({"name": "list"}),
    )
    .await;
    let card = card["data"]["id"].as_str().unwrap().to_owned();
    let (s, rate) = post(
        client,
        base,
        "/v1/contract-pricing/rate-cards/addRate",
        &json!({
            "rate_card_id": card, "product_id": usage, "entitled": true, "rate_type": "FLAT",
            "price": 100, "starting_at": "2020-01-01T00:00:00Z"
        }),
    )
    .await;
    assert_eq!(s, 200, "{rate}");
    let (_, customer) = post(
        client,
        base,
        "/v1/customers",
        &json!({"name": "Crash Co", "ingest_aliases": ["crash-co"]}),
    )
    .await;
    let customer = customer["data"]["id"].as_str().unwrap().to_owned();
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let (s, contract) = post(
        client,
        base,
        "/v1/contracts/create",
        &json!({
            "customer_id": customer, "rate_card_id": card, "starting_at": start,
            "spend_threshold_configuration": {
                "commit": {"product_id": fixed}, "is_enabled": true,
                "payment_gate_config": {"payment_gate_type": "NONE"}, "threshold_amount": 5000
            }
        }),
    )
    .await;
    assert_eq!(s, 200, "{contract}");
    (
        customer,
        contract["data"]["id"].as_str().unwrap().to_owned(),
    )
}

/// A server started on a fresh data dir with the webhook receiver, and `setup`'s customer.
struct Started {
    dir: tempfile::TempDir,
    receiver: Receiver,
    config: std::path::PathBuf,
    client: reqwest::Client,
    server: Server,
    customer: String,
}

async fn start_with_setup() -> Started {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config(dir.path(), &receiver.url);
    let client = reqwest::Client::new();
    let server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (customer, _) = setup(&client, &server.base).await;
    Started {
        dir,
        receiver,
        config,
        client,
        server,
        customer,
    }
}

#[actix_rt::test]
async fn kill_9_during_load_loses_no_acknowledged_event_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config(dir.path(), &receiver.url);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (customer, contract) = setup(&client, &server.base).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut seed = now_ms() as u64;
    for round in 0..4 {
        let stop = Arc::new(Mutex::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                actix_rt::spawn(load(
                    server.base.clone(),
                    ledger.clone(),
                    round * 10 + w,
                    stop.clone(),
                ))
            })
            .collect();
        // A pseudo-random moment between 300 and 1100 ms into the load.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let delay = 300 + (seed >> 33) % 800;
        actix_rt::time::sleep(Duration::from_millis(delay)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        *stop.lock().unwrap() = true;
        for w in workers {
            let _ = w.await;
        }
        server = start_server(&config);
        wait_ready(&client, &server.base).await;
    }
    // Retry every batch that got no 200, as a client would: dedupe makes it safe.
    let (sent, acked_count) = {
        let ledger = ledger.lock().unwrap();
        (ledger.sent.clone(), ledger.acked.len())
    };
    assert!(
        acked_count > 20,
        "the load made progress: {acked_count} batches acknowledged"
    );
    let unacked: Vec<Vec<String>> = {
        let ledger = ledger.lock().unwrap();
        sent.iter()
            .filter(|(id, _)| !ledger.acked.contains(id))
            .map(|(_, ids)| ids.clone())
            .collect()
    };
    for ids in unacked {
        let body: Vec<Value> = ids.iter().map(|id| event(id)).collect();
        let (status, response) = post(&client, &server.base, "/v1/ingest", &json!(body)).await;
        assert_eq!(status, 200, "{response}");
    }
    let unique: BTreeSet<&String> = sent.values().flatten().collect();
    let expected_cents = 100 * unique.len() as i64;

    // Every event applied exactly once: the usage charged equals the unique events sent.
    let mut charged = -1;
    let mut contract_json = Value::Null;
    let mut usage = Value::Null;
    for _ in 0..400 {
        let (_, invoices) = post_get(
            &client,
            &server.base,
            &format!("/v1/customers/{customer}/invoices?type=USAGE"),
        )
        .await;
        usage = invoices["data"][0].clone();
        charged = usage["subtotal"].as_i64().unwrap_or(-1);
        if charged == expected_cents {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(charged, expected_cents, "usage invoice: {usage}");
    for _ in 0..100 {
        let (_, c) = post(
            &client,
            &server.base,
            "/v2/contracts/get",
            &json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
        contract_json = c["data"].clone();
        let outstanding = usage["total"].as_i64().unwrap();
        if outstanding < 5000 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let (_, invoices) = post_get(
            &client,
            &server.base,
            &format!("/v1/customers/{customer}/invoices?type=USAGE"),
        )
        .await;
        usage = invoices["data"][0].clone();
    }
    // Money adds up: threshold commits + outstanding spend = usage charged.
    let commits = contract_json["commits"].as_array().unwrap();
    let committed: i64 = commits
        .iter()
        .map(|c| {
            c["access_schedule"]["schedule_items"][0]["amount"]
                .as_i64()
                .unwrap()
        })
        .sum();
    let outstanding = usage["total"].as_i64().unwrap();
    assert_eq!(
        committed + outstanding,
        expected_cents,
        "commits {committed} + outstanding {outstanding}"
    );
    assert!(
        outstanding < 5000,
        "every crossing was charged: outstanding {outstanding}"
    );
    eprintln!(
        "crash test: {} batches sent, {acked_count} acknowledged before kills, {} unique events, {} threshold commits",
        sent.len(),
        unique.len(),
        commits.len()
    );
    // No workflow started twice: one threshold commit per crossing, distinct ids.
    let ids: BTreeSet<&str> = commits.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), commits.len());
    // Every threshold_reached webhook is delivered, with the original ids, and no stray ones.
    support::eventually("all webhooks delivered", || {
        let received: BTreeSet<String> = receiver
            .of_type("payment_gate.threshold_reached")
            .into_iter()
            .map(|r| r.id)
            .collect();
        received.len() == commits.len()
    })
    .await;
    assert!(
        receiver
            .received
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.signature_valid)
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

async fn post_get(client: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn sigterm_checkpoints_and_exits_zero_and_the_next_start_has_everything() {
    // The temp dir and the receiver live to the end of the test.
    let Started {
        dir: _dir,
        receiver: _receiver,
        config,
        client,
        mut server,
        customer,
    } = start_with_setup().await;
    let body: Vec<Value> = (0..30).map(|i| event(&format!("t{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(body)).await;
    assert_eq!(status, 200);
    let pid = server.child.id();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "SIGTERM exits 0, got {exit:?}");
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (_, invoices) = post_get(
        &client,
        &server.base,
        &format!("/v1/customers/{customer}/invoices?type=USAGE"),
    )
    .await;
    assert_eq!(invoices["data"][0]["subtotal"], 3000);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

async fn usage_subtotal(client: &reqwest::Client, base: &str, customer: &str) -> Value {
    let path = format!("/v1/customers/{customer}/invoices?type=USAGE&status=DRAFT");
    let (_, body) = post_get(client, base, &path).await;
    body["data"][0]["subtotal"].clone()
}

async fn usage_total(client: &reqwest::Client, base: &str, customer: &str) -> Value {
    let response = client
        .get(format!(
            "{base}/v1/customers/{customer}/invoices?type=USAGE&status=DRAFT"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["data"][0]["total"].clone()
}

#[actix_rt::test]
async fn kill_9_after_a_metric_archive_replays_every_event_to_the_same_balance() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // No checkpoint and no eviction during the test: the restart replays everything.
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (customer, _) = setup(&client, &server.base).await;
    let (_, metrics) = {
        let response = client
            .get(format!("{}/v1/billable-metrics", server.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    let metric = metrics["data"][0]["id"].as_str().unwrap().to_owned();
    let batch: Vec<Value> = (0..10).map(|i| event(&format!("before-{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(usage_total(&client, &server.base, &customer).await, 1000);
    let (status, body) = post(
        &client,
        &server.base,
        "/v1/billable-metrics/archive",
        &json!({"id": metric}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Usage after the archive is not rated.
    let batch: Vec<Value> = (0..5).map(|i| event(&format!("after-{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(usage_total(&client, &server.base, &customer).await, 1000);

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    assert_eq!(
        usage_total(&client, &server.base, &customer).await,
        1000,
        "replay after the archive must reach the live run's balance"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[actix_rt::test]
async fn replay_judges_inputs_by_the_limits_they_were_accepted_under() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::new();
    let low = [("TOLLGATE__LIMITS__PREPAID_THRESHOLD_MIN_USD_CENTS", "100")];
    let mut server = start_server_with_env(&config, &low);
    wait_ready(&client, &server.base).await;
    let (customer, _) = setup(&client, &server.base).await;
    let (_, products) = post(
        &client,
        &server.base,
        "/v1/contract-pricing/products/list",
        &json!({}),
    )
    .await;
    let fixed = products["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "FIXED")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let contract = |threshold: i64| {
        json!({
            "customer_id": customer, "rate_card_id": Value::Null, "starting_at": "2020-01-01T00:00:00Z",
            "prepaid_balance_threshold_configuration": {
                "commit": {"product_id": fixed}, "is_enabled": false,
                "payment_gate_config": {"payment_gate_type": "NONE"},
                "threshold_amount": threshold, "recharge_to_amount": threshold + 5000
            }
        })
    };
    let (_, cards) = post(
        &client,
        &server.base,
        "/v1/contract-pricing/rate-cards/list",
        &json!({}),
    )
    .await;
    let card = cards["data"][0]["id"].as_str().unwrap().to_owned();
    let mut body = contract(200);
    body["rate_card_id"] = json!(card);
    let (status, created) = post(&client, &server.base, "/v1/contracts/create", &body).await;
    assert_eq!(status, 200, "{created}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // The default minimum ($5) is in force now; the contract accepted under $1 stays.
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (_, list) = post(
        &client,
        &server.base,
        "/v1/contracts/list",
        &json!({"customer_id": customer}),
    )
    .await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "replay must keep the contract accepted under the earlier limits: {list}"
    );
    let (status, refused) = post(&client, &server.base, "/v1/contracts/create", &body).await;
    assert_eq!(status, 400, "{refused}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[actix_rt::test]
async fn net_zero_sum_usage_then_kill_9_restarts_and_charges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // No checkpoint or eviction: the restart replays the negative event too.
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    let base = server.base.clone();
    wait_ready(&client, &base).await;
    let (s, metric) = post(
        &client,
        &base,
        "/v1/billable-metrics/create",
        &json!({
            "name": "bytes", "aggregation_type": "SUM", "aggregation_key": "bytes",
            "event_type_filter": {"in_values": ["storage"]}
        }),
    )
    .await;
    assert_eq!(s, 200, "{metric}");
    let metric = metric["data"]["id"].as_str().unwrap().to_owned();
    let (_, usage) = post(
        &client,
        &base,
        "/v1/contract-pricing/products/create",
        &json!({
            "name": "Bytes", "type": "USAGE", "billable_metric_id": metric
        }),
    )
    .await;
    let usage = usage["data"]["id"].as_str().unwrap().to_owned();
    let (_, fixed) = post(
        &client,
        &base,
        "/v1/contract-pricing/products/create",
        &json!({
            "name": "Prepaid", "type": "FIXED"
        }),
    )
    .await;
    let fixed = fixed["data"]["id"].as_str().unwrap().to_owned();
    let (_, card) = post(
        &client,
        &base,
        "/v1/contract-pricing/rate-cards/create",
        &json!({"name": "list"}),
    )
    .await;
    let card = card["data"]["id"].as_str().unwrap().to_owned();
    let (s, _) = post(
        &client,
        &base,
        "/v1/contract-pricing/rate-cards/addRate",
        &json!({
            "rate_card_id": card, "product_id": usage, "entitled": true, "rate_type": "FLAT",
            "price": 1, "starting_at": "2020-01-01T00:00:00Z"
        }),
    )
    .await;
    assert_eq!(s, 200);
    let (_, customer) = post(
        &client,
        &base,
        "/v1/customers",
        &json!({"name": "Net", "ingest_aliases": ["net-co"]}),
    )
    .await;
    let customer = customer["data"]["id"].as_str().unwrap().to_owned();
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let (s, body) = post(&client, &base, "/v1/contracts/create", &json!({
        "customer_id": customer, "rate_card_id": card, "starting_at": start,
        "commits": [{
            "type": "PREPAID", "product_id": fixed,
            "access_schedule": {"schedule_items": [{"amount": 100000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
            "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 100000}]}
        }]
    }))
    .await;
    assert_eq!(s, 200, "{body}");
    let at = tollgate::domain::Timestamp(now_ms()).to_rfc3339();
    for (txn, bytes) in [("neg", -3000), ("pos", 3000)] {
        let (s, body) = post(
            &client,
            &base,
            "/v1/ingest",
            &json!([{
                "transaction_id": txn, "customer_id": "net-co", "event_type": "storage",
                "timestamp": at, "properties": {"bytes": bytes}
            }]),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    let balance = |base: String| {
        let client = client.clone();
        let customer = customer.clone();
        async move {
            let (s, body) = post(
                &client,
                &base,
                "/v1/contracts/customerBalances/getNetBalance",
                &json!({"customer_id": customer}),
            )
            .await;
            assert_eq!(s, 200, "{body}");
            body["data"]["balance"].clone()
        }
    };
    assert_eq!(balance(base.clone()).await, 100000);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    assert_eq!(
        balance(server.base.clone()).await,
        100000,
        "replaying net-zero usage must draw nothing"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A server whose files may not grow past `max_file_bytes` (`RLIMIT_FSIZE`): once the log's
/// write-ahead file reaches it, the kernel refuses the write (EFBIG; `SIGXFSZ` is ignored, so
/// the write fails instead of killing the process). A real storage failure, not a simulated one.
fn start_server_with_file_limit(config: &std::path::Path, max_file_bytes: u64) -> Server {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: max_file_bytes,
                rlim_max: max_file_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_server(command, config)
}

#[actix_rt::test]
async fn a_disk_write_failure_answers_503_exits_non_zero_and_the_restart_loses_nothing_acknowledged()
 {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // No checkpoint during the test: its writes would go to the same write-ahead file.
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = start_server_with_file_limit(&config, 1 << 20);
    wait_ready(&client, &server.base).await;
    let (customer, _) = setup(&client, &server.base).await;
    let mut acked = 0usize;
    let mut sent = 0usize;
    let mut refusal = None;
    for batch in 0..5_000 {
        let body: Vec<Value> = (0..100).map(|i| event(&format!("d{batch}-{i}"))).collect();
        sent += 100;
        let mut shed = 0;
        let response = loop {
            let response = client
                .post(format!("{}/v1/ingest", server.base))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await;
            // Load shedding (the apply lag bound, on a slow debug build) is not the failure
            // under test: the client waits and sends the same batch again, as the SDK does.
            match response {
                // Only a ready engine sheds (a failed one answers 503 first), and not for long.
                Ok(r) if r.status().as_u16() == 429 && shed < 1_000 => {
                    shed += 1;
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other,
            }
        };
        match response {
            Ok(r) if r.status().as_u16() == 200 => acked += 100,
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                refusal = Some((status, retry_after, r.text().await.unwrap_or_default()));
                break;
            }
            // The server may already be gone: that is the exit below.
            Err(_) => break,
        }
    }
    assert!(
        acked > 0,
        "some batches were acknowledged before the disk filled"
    );
    // The request whose write failed gets its answer: 503, never a 4xx and never a reset. (The
    // write that meets the full disk is usually an append of a request; now and then it is a
    // background write, the invoice or alarm index, and the server then stops with no request
    // of this client in flight: the next one finds it gone.)
    if let Some((status, retry_after, body)) = refusal {
        assert_eq!(
            status, 503,
            "an infrastructure failure, never a 4xx: {body}"
        );
        assert_eq!(retry_after.unwrap(), "1");
        assert!(body.contains("message"), "{body}");
    }
    // Fail-stop: the process exits by itself, non-zero, within the bounded drain.
    let mut exit = None;
    for _ in 0..300 {
        if let Some(status) = server.child.try_wait().unwrap() {
            exit = Some(status);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("the server exits by itself after a storage failure");
    assert_eq!(
        exit.code(),
        Some(1),
        "exit status 1, not a signal: {exit:?}"
    );

    // The supervisor's restart, without the limit: every acknowledged event counts once.
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    // Prepaid commits cover the usage (total 0): the subtotal counts it, at $1 per call.
    let total = usage_subtotal(&client, &server.base, &customer).await;
    let applied = (total.as_f64().unwrap() / 100.0) as usize;
    assert!(
        applied >= acked && applied <= sent,
        "acknowledged {acked}, sent {sent}, applied {applied}"
    );
    // The clients retry everything they sent: what was applied is a duplicate, the rest
    // applies now, and every event counts exactly once.
    for batch in 0..sent / 100 {
        let body: Vec<Value> = (0..100).map(|i| event(&format!("d{batch}-{i}"))).collect();
        let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(body)).await;
        assert_eq!(status, 200);
    }
    let mut total = Value::Null;
    for _ in 0..200 {
        total = usage_subtotal(&client, &server.base, &customer).await;
        if total == json!(sent * 100) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(total, json!(sent * 100), "every sent event once");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// A data directory written in another storage format (here: without the format mark, as every
/// directory before version 2) is refused at start with a message naming its version and exit
/// code 1; nothing in it is changed.
#[actix_rt::test]
async fn a_data_dir_of_another_storage_format_is_refused_at_start_naming_its_version() {
    let Started {
        dir,
        receiver: _receiver,
        config,
        mut server,
        ..
    } = start_with_setup().await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let data = dir.path().join("data");
    let store = tollgate::storage::Store::open(&data, Default::default()).unwrap();
    store
        .meta_delete(tollgate::storage::STORAGE_FORMAT_KEY)
        .unwrap();
    drop(store);

    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the tollgate binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "storage format version 1; this build reads versions 2 to {}",
            tollgate::storage::STORAGE_FORMAT_VERSION
        )),
        "stderr: {stderr}"
    );
    let store = tollgate::storage::Store::open(&data, Default::default());
    assert!(
        matches!(
            store.err(),
            Some(tollgate::storage::StorageError::FormatVersion { found: 1, .. })
        ),
        "the refused directory is still unmarked"
    );
}

/// The audit log survives `kill -9`, and its records count on after the restart; a token given
/// as a TOML table with a name and scopes is recorded by its name, a plain token by a
/// fingerprint that stays the same across the restart.
#[actix_rt::test]
async fn the_audit_log_survives_kill_9_and_counts_on_with_scoped_tokens_from_the_config() {
    let Started {
        dir: _dir,
        receiver: _receiver,
        config,
        client,
        mut server,
        ..
    } = start_with_setup().await;
    let audit = |client: reqwest::Client, base: String| async move {
        let (status, page) = post_get(&client, &base, "/v1/tollgate/audit?limit=100").await;
        assert_eq!(status, 200, "{page}");
        page["data"].as_array().unwrap().clone()
    };
    let before = audit(client.clone(), server.base.clone()).await;
    let created = before
        .iter()
        .find(|r| r["path"] == "/v1/billable-metrics/create" && r["status"] == 200)
        .unwrap_or_else(|| panic!("{before:?}"));
    let fingerprint = created["token"].as_str().unwrap().to_owned();
    assert!(fingerprint.starts_with("token-"), "{fingerprint}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("tokens = [\"{TOKEN}\"]"),
        &format!(
            "tokens = [\"{TOKEN}\", {{ token = \"billing-token-1\", name = \"billing\", scopes = [\"write\"] }}]"
        ),
    );
    std::fs::write(&config, text).unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let response = client
        .post(format!("{}/v1/customers", server.base))
        .bearer_auth("billing-token-1")
        .json(&json!({"name": "After the crash"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let refused = client
        .get(format!("{}/v1/customers", server.base))
        .bearer_auth("billing-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        403,
        "a write-only token may not read"
    );
    let (status, _) = post(
        &client,
        &server.base,
        "/v1/customers",
        &json!({"name": "By the plain token"}),
    )
    .await;
    assert_eq!(status, 200);

    let after = audit(client.clone(), server.base.clone()).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "kill -9 lost or changed records"
    );
    assert_eq!(after.len(), before.len() + 2);
    let billing = &after[before.len()];
    assert_eq!(billing["token"], "billing");
    assert_eq!(billing["path"], "/v1/customers");
    assert_eq!(billing["status"], 200);
    let seq = |r: &Value| r["seq"].as_u64().unwrap();
    assert!(seq(billing) > before.iter().map(seq).max().unwrap());
    let plain = &after[before.len() + 1];
    assert_eq!(plain["token"], json!(fingerprint));
    assert!(seq(plain) > seq(billing));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Runs `tollgate backup` against `base`, answering its exit status and output.
fn backup_command(base: &str, to: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["backup", "--url", base, "--to"])
        .arg(to)
        .env("TOLLGATE_TOKEN", TOKEN)
        .output()
        .expect("the tollgate binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn a_backup_taken_under_load_restores_to_the_same_balances_and_counts_nothing_twice() {
    let Started {
        dir,
        receiver: _receiver,
        config: _config,
        client,
        server,
        customer,
    } = start_with_setup().await;
    // Load from two clients while the backup is taken.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(Mutex::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            actix_rt::spawn(load(
                server.base.clone(),
                Arc::clone(&ledger),
                w,
                Arc::clone(&stop),
            ))
        })
        .collect();
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    let backup = dir.path().join("backup-1");
    let base = server.base.clone();
    let to = backup.clone();
    let (ok, out, err) = actix_rt::task::spawn_blocking(move || backup_command(&base, &to))
        .await
        .unwrap();
    assert!(ok, "tollgate backup failed: {err}");
    let receipt: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(receipt["to"], json!(backup.display().to_string()));
    assert_eq!(
        receipt["storage_format"],
        tollgate::storage::STORAGE_FORMAT_VERSION
    );
    assert!(receipt["bytes"].as_u64().unwrap() > 0, "{receipt}");
    let acked_at_backup = ledger.lock().unwrap().acked.len();
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    *stop.lock().unwrap() = true;
    for worker in workers {
        worker.await.unwrap();
    }
    let acked_total = ledger.lock().unwrap().acked.len();
    assert!(
        acked_at_backup > 0 && acked_total > acked_at_backup,
        "ingest went on around the backup: {acked_at_backup} then {acked_total} batches"
    );
    // The same backup again, or one into a directory that is there: refused, nothing written.
    let (ok, _, err) = backup_command(&server.base, &backup);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("exists"), "{err}");
    let (ok, _, err) = backup_command(&server.base, std::path::Path::new("relative/dir"));
    assert!(!ok);
    assert!(err.contains("400") && err.contains("absolute"), "{err}");
    let original = usage_subtotal(&client, &server.base, &customer).await;

    // Restore: a server started on the backup, with webhooks to a receiver of its own.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_receiver = Receiver::start();
    let restored_config = write_config_on(
        restored_dir.path(),
        &backup,
        &restored_receiver.url,
        (300, 150),
    );
    let restored = start_server(&restored_config);
    wait_ready(&client, &restored.base).await;
    let at_backup = usage_subtotal(&client, &restored.base, &customer).await;
    assert!(
        at_backup.as_i64().unwrap() > 0 && at_backup.as_i64() < original.as_i64(),
        "the backup holds a point in time: {at_backup} of {original}"
    );
    // What was acknowledged after the backup is sent again (as a client replaying its
    // queue would); what the backup holds already is a duplicate, never counted twice.
    let batches: Vec<Vec<String>> = {
        let ledger = ledger.lock().unwrap();
        ledger
            .acked
            .iter()
            .map(|b| ledger.sent[b].clone())
            .collect()
    };
    for ids in batches {
        let body: Vec<Value> = ids.iter().map(|id| event(id)).collect();
        let (status, answer) = post(&client, &restored.base, "/v1/ingest", &json!(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut same = Value::Null;
    for _ in 0..200 {
        same = usage_subtotal(&client, &restored.base, &customer).await;
        if same == original {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        same, original,
        "the restored server charges each event once"
    );
    drop(restored);
    drop(server);
}

/// `tollgate check-config` shows the configuration but none of its secrets, and an
/// environment override that is wrong is named by its variable.
#[test]
fn check_config_prints_no_secret_and_names_a_wrong_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let secrets = [
        "plain-token-secret-1",
        "scoped-token-secret-2",
        "whsec-destination-secret-3",
        "sk_test_stripe-secret-4",
        "whsec_stripe-secret-5",
        "url-password-6",
        "url-query-token-7",
    ];
    std::fs::write(
        &path,
        format!(
            r#"
[auth]
tokens = ["{}", {{ token = "{}", name = "reader", scopes = ["read"] }}]
[[webhooks.destinations]]
url = "http://127.0.0.1:9/hooks"
secret = "{}"
[[webhooks.destinations]]
url = "http://user:{}@127.0.0.1:9/other?token={}"
secret = "{}"
[payments.stripe]
secret_key = "{}"
webhook_secret = "{}"
"#,
            secrets[0],
            secrets[1],
            secrets[2],
            secrets[5],
            secrets[6],
            secrets[2],
            secrets[3],
            secrets[4]
        ),
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["check-config", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (code, text) = run(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
    assert!(
        text.contains("reader") && text.contains("127.0.0.1:9/hooks"),
        "{text}"
    );
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    // Two tokens, two destination secrets, two Stripe secrets; the URL's credentials are cut.
    assert_eq!(text.matches("[redacted]").count(), 6, "{text}");
    assert!(text.contains("http://127.0.0.1:9/other"), "{text}");
    let (code, text) = run(&[("TOLLGATE__HTTP__WORKERS", "many")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("TOLLGATE__HTTP__WORKERS"), "{text}");
    let (code, text) = run(&[("TOLLGATE__LOGGING__LEVEL", "verbose!!")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("logging.level"), "{text}");
}

/// With `logging.format = "json"` every stdout line is JSON; business events (a threshold
/// reached, each workflow state change, the payment outcome) are logged at INFO with their
/// ids; the probes are not logged.
#[actix_rt::test]
async fn json_logs_carry_business_events_and_leave_the_probes_out() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config(dir.path(), &receiver.url);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[logging]\nformat = \"json\"\nlevel = \"info\"\n");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let collected = Arc::clone(&lines);
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    let listening = |lines: &[String]| {
        lines.iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["event"] == "listening")
                .then(|| v["fields"]["address"].as_str().unwrap().to_owned())
        })
    };
    let mut base = None;
    for _ in 0..400 {
        base = listening(&lines.lock().unwrap());
        if base.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let server = Server {
        child,
        base: base.expect("the server logs where it listens"),
    };
    let client = reqwest::Client::new();
    wait_ready(&client, &server.base).await;
    for _ in 0..3 {
        client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        client
            .get(format!("{}/health", server.base))
            .send()
            .await
            .unwrap();
    }
    // The setup's NONE-gated $50 spend threshold, crossed by 50 calls.
    let (customer, _) = setup(&client, &server.base).await;
    let body: Vec<Value> = (0..50).map(|i| event(&format!("j{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(body)).await;
    assert_eq!(status, 200);
    let events = |name: &str| -> Vec<Value> {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["event"] == name)
            .collect()
    };
    // The access line is written when the response completes, the workflow's lines when the
    // engine gets to them: wait for both (a line can reach the reader thread late).
    let ingest_logged = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("POST /v1/ingest"))
    };
    for _ in 0..400 {
        if events("workflow_state").len() >= 2 && ingest_logged() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    let reached = events("threshold_reached");
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(reached[0]["level"], "INFO");
    assert_eq!(reached[0]["fields"]["customer"], json!(customer));
    let workflow = reached[0]["fields"]["workflow"]
        .as_str()
        .unwrap()
        .to_owned();
    let states: Vec<String> = events("workflow_state")
        .iter()
        .filter(|v| v["fields"]["workflow"] == json!(workflow))
        .map(|v| v["fields"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        ["INITIATED", "RELEASED"],
        "a NONE gate releases at once"
    );
    let all = lines.lock().unwrap().clone();
    for line in &all {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok(),
            "a plain-text line in the JSON stream: {line}"
        );
        assert!(
            !line.contains("GET /metrics")
                && !line.contains("GET /health")
                && !line.contains("GET /ready"),
            "a probe was logged: {line}"
        );
    }
    assert!(ingest_logged(), "other requests are logged");
}

/// The per-gate workflow counters add up (started = released + failed + in flight) for every
/// gate, NONE included, and still do after a `kill -9` and a restart.
#[actix_rt::test]
async fn workflow_counters_add_up_for_every_gate_across_a_restart() {
    let Started {
        dir: _dir,
        receiver: _receiver,
        config,
        client,
        mut server,
        customer,
    } = start_with_setup().await;
    // A NONE-gated spend threshold crossed: released at once.
    let body: Vec<Value> = (0..50).map(|i| event(&format!("g{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(body)).await;
    assert_eq!(status, 200);
    // Two EXTERNAL-gated commits: one paid, one left in flight, one more failed.
    let (_, products) = post(
        &client,
        &server.base,
        "/v1/contract-pricing/products/list",
        &json!({}),
    )
    .await;
    let fixed = products["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["current"]["name"] == "Threshold charge" || p["name"] == "Threshold charge")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, contracts) = post(
        &client,
        &server.base,
        "/v2/contracts/list",
        &json!({"customer_id": customer}),
    )
    .await;
    let contract = contracts["data"][0]["id"].as_str().unwrap().to_owned();
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let mut workflows = Vec::new();
    for i in 0..3 {
        let (status, edit) = post(
            &client,
            &server.base,
            "/v2/contracts/edit",
            &json!({"customer_id": customer, "contract_id": contract, "add_commits": [{
                "type": "PREPAID", "product_id": fixed, "priority": 100 + i,
                "access_schedule": {"schedule_items": [{"amount": 1000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
                "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 1000}]},
                "payment_gate_config": {"payment_gate_type": "EXTERNAL", "tax_type": "NONE"}}]}),
        )
        .await;
        assert_eq!(status, 200, "{edit}");
        let commit = edit["data"]["edit"]["add_commits"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, got) = post(
            &client,
            &server.base,
            "/v2/contracts/get",
            &json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
        let workflow = got["data"]["commits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == json!(commit))
            .unwrap()["payment_gate_workflow"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        workflows.push(workflow);
    }
    for (workflow, outcome) in [(&workflows[0], "paid"), (&workflows[1], "failed")] {
        let (status, body) = post(
            &client,
            &server.base,
            "/v1/contracts/commits/threshold-billing/release",
            &json!({"workflow_id": workflow, "outcome": outcome}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let counters = |text: &str, name: &str, gate: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{gate=\"{gate}\"}} ")))
            .unwrap_or_else(|| panic!("no {name} for {gate} in\n{text}"))
            .parse()
            .unwrap()
    };
    let check = |text: &str| {
        for gate in ["NONE", "EXTERNAL", "STRIPE"] {
            let started = counters(text, "tollgate_workflows_started_total", gate);
            let released = counters(text, "tollgate_workflows_released_total", gate);
            let failed = counters(text, "tollgate_workflows_failed_total", gate);
            let in_flight = counters(text, "tollgate_workflows_in_flight_by_gate", gate);
            assert_eq!(started, released + failed + in_flight, "{gate}:\n{text}");
        }
        (
            counters(text, "tollgate_workflows_started_total", "NONE"),
            counters(text, "tollgate_workflows_started_total", "EXTERNAL"),
            counters(text, "tollgate_workflows_in_flight_by_gate", "EXTERNAL"),
        )
    };
    let scrape = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let before = check(&scrape(server.base.clone()).await);
    assert!(
        before.0 >= 1,
        "the NONE-gated workflow is counted: {before:?}"
    );
    assert_eq!((before.1, before.2), (3, 1), "{before:?}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let after = check(&scrape(server.base.clone()).await);
    assert_eq!(after, before, "rebuilt from the stored state");
}

/// An alarm survives `kill -9`: a contract whose end is set a few seconds ahead, checkpointed
/// (so replay does not re-create the alarm), killed and restarted, sends `contract.end` within a
/// second of its end, from the alarm kept in `meta`, not at the next hourly tick; and once.
#[actix_rt::test]
async fn a_contract_end_set_before_kill_9_is_announced_at_its_time_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // Checkpoints every 100 ms, no eviction during the test.
    let config = write_config_with(dir.path(), &receiver.url, 100, 600_000);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (customer, contract) = setup(&client, &server.base).await;
    let end_ms = now_ms() + 4_000;
    let end = tollgate::domain::Timestamp(end_ms).to_rfc3339();
    let (status, answer) = post(
        &client,
        &server.base,
        "/v1/contracts/updateEndDate",
        &json!({"customer_id": customer, "contract_id": contract, "ending_before": end}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["id"], json!(contract));
    // Past a few checkpoints: the edit is covered, replay will not see it again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(receiver.of_type("contract.end").is_empty());
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.of_type("contract.end").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no contract.end after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived_ms = now_ms();
    assert!(
        arrived_ms < end_ms + 3_000,
        "announced {} ms after the end",
        arrived_ms - end_ms
    );
    let ended = receiver.of_type("contract.end");
    assert!(ended[0].signature_valid);
    assert_eq!(ended[0].body["contract_id"], json!(contract));
    assert_eq!(ended[0].body["customer_id"], json!(customer));
    assert_eq!(ended[0].body["timestamp"], json!(end));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: BTreeSet<String> = receiver
        .of_type("contract.end")
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "announced once");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// The customer-level credit balance of `setup`'s customer, from `customerCredits/list`.
async fn shared_credit_balance(client: &reqwest::Client, base: &str, customer: &str) -> Value {
    let (status, body) = post(
        client,
        base,
        "/v1/contracts/customerCredits/list",
        &json!({"customer_id": customer, "include_balance": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"][0]["balance"].clone()
}

/// A customer-level credit drawn by usage, then `kill -9`: the restart replays its creation
/// and every draw to the same balance, a resent batch draws nothing again, and its end date
/// change survives a second kill; a manual ledger entry survives a third, and its retry with
/// the same Idempotency-Key after the restart counts it once.
#[actix_rt::test]
async fn kill_9_after_customer_level_draws_replays_to_the_same_shared_balance() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (customer, _) = setup(&client, &server.base).await;
    let (_, products) = post(
        &client,
        &server.base,
        "/v1/contract-pricing/products/list",
        &json!({}),
    )
    .await;
    let fixed = products["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "FIXED")
        .expect("setup's FIXED product")["id"]
        .clone();
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let (status, body) = post(
        &client,
        &server.base,
        "/v1/contracts/customerCredits/create",
        &json!({
            "customer_id": customer, "product_id": fixed, "priority": 1,
            "access_schedule": {"schedule_items": [{"amount": 3000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let credit_id = body["data"]["id"].as_str().unwrap().to_owned();
    let batch: Vec<Value> = (0..10).map(|i| event(&format!("shared-{i}"))).collect();
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2000
    );

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2000,
        "replay reaches the live run's shared balance"
    );
    let (status, _) = post(&client, &server.base, "/v1/ingest", &json!(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2000,
        "a resent batch draws nothing again"
    );
    let end = tollgate::domain::Timestamp(now_ms() + 86_400_000).to_rfc3339();
    let (status, body) = post(
        &client,
        &server.base,
        "/v1/contracts/customerCredits/updateEndDate",
        &json!({"customer_id": customer, "credit_id": credit_id, "access_ending_before": end}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let (status, body) = post(
        &client,
        &server.base,
        "/v1/contracts/customerCredits/list",
        &json!({"customer_id": customer}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"][0]["access_schedule"]["schedule_items"][0]["ending_before"],
        json!(end)
    );

    // A manual entry of +$5, killed right after its 200, and retried after the restart.
    let segment = body["data"][0]["access_schedule"]["schedule_items"][0]["id"].clone();
    let entry = json!({"customer_id": customer, "id": credit_id, "segment_id": segment,
                       "amount": 500, "reason": "crash test"});
    let keyed = |base: &str| {
        client
            .post(format!("{base}/v1/contracts/addManualBalanceLedgerEntry"))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "manual-1")
            .json(&entry)
            .send()
    };
    assert_eq!(keyed(&server.base).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2500
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = start_server(&config);
    wait_ready(&client, &server.base).await;
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2500,
        "the entry replays"
    );
    assert_eq!(keyed(&server.base).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        shared_credit_balance(&client, &server.base, &customer).await,
        2500,
        "the retry counts nothing"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Usage priced in credits (a credit first, then dollars at 2 cents a credit), then `kill -9`
/// with no checkpoint: the restart replays the catalog's unit and conversions and every input to
/// the same balances and invoice; a contract refused because its card had no conversion for
/// its unit stays refused although the conversion was added before the crash.
#[actix_rt::test]
async fn kill_9_replays_usage_in_credits_and_a_refusal_from_before_its_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = write_config_with(dir.path(), &receiver.url, 3_600_000, 3_600_000);
    let client = reqwest::Client::new();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    setup(&client, &server.base).await;
    let base = server.base.clone();
    let id = |v: &Value| v["data"]["id"].as_str().unwrap().to_owned();
    let (_, products) = post(
        &client,
        &base,
        "/v1/contract-pricing/products/list",
        &json!({}),
    )
    .await;
    let product = |kind: &str| {
        products["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == kind)
            .unwrap()["id"]
            .clone()
    };
    let (usage, fixed) = (product("USAGE"), product("FIXED"));
    let create = "/v1/tollgate/credit-types/create";
    let credits = id(&post(&client, &base, create, &json!({"name": "credits"}))
        .await
        .1);
    let tokens = id(&post(&client, &base, create, &json!({"name": "tokens"}))
        .await
        .1);
    let (status, card) = post(&client, &base, "/v1/contract-pricing/rate-cards/create", &json!({
        "name": "In credits",
        "credit_type_conversions": [{"custom_credit_type_id": credits, "fiat_per_custom_credit": 2}]
    })).await;
    assert_eq!(status, 200, "{card}");
    let card = id(&card);
    let (status, body) = post(
        &client,
        &base,
        "/v1/contract-pricing/rate-cards/addRate",
        &json!({
            "rate_card_id": card, "product_id": usage, "entitled": true, "rate_type": "FLAT",
            "price": 10, "credit_type_id": credits, "starting_at": "2020-01-01T00:00:00Z"
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, customer) = post(
        &client,
        &base,
        "/v1/customers",
        &json!({
            "name": "Credits Co", "ingest_aliases": ["credits-co"]
        }),
    )
    .await;
    assert_eq!(status, 200, "{customer}");
    let customer = id(&customer);
    let start = tollgate::domain::Timestamp(now_ms())
        .month_start()
        .to_rfc3339();
    let contract = |unit: &str| {
        json!({
            "customer_id": customer, "rate_card_id": card, "starting_at": start,
            "commits": [{"type": "PREPAID", "product_id": fixed, "priority": 10,
                "access_schedule": {"schedule_items": [{"amount": 1000, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]},
                "invoice_schedule": {"schedule_items": [{"timestamp": start, "amount": 1000}]}}],
            "credits": [{"product_id": fixed, "priority": 1,
                "access_schedule": {"credit_type_id": unit, "schedule_items": [{"amount": 100, "starting_at": start, "ending_before": "2099-01-01T00:00:00Z"}]}}]
        })
    };
    // Refused: the card has no conversion for tokens yet. Then the conversion comes.
    let (status, body) = post(&client, &base, "/v1/contracts/create", &contract(&tokens)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&client, &base, "/v1/contract-pricing/rate-cards/update", &json!({
        "rate_card_id": card,
        "add_credit_type_conversions": [{"custom_credit_type_id": tokens, "fiat_per_custom_credit": "0.5"}]
    })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&client, &base, "/v1/contracts/create", &contract(&credits)).await;
    assert_eq!(status, 200, "{body}");
    // 15 calls = 150 credits: 100 from the credit, 50 credits = 100 cents from the dollars.
    let batch: Vec<Value> = (0..15)
        .map(|i| {
            let mut e = event(&format!("credits-{i}"));
            e["customer_id"] = json!("credits-co");
            e
        })
        .collect();
    let (status, _) = post(&client, &base, "/v1/ingest", &json!(batch)).await;
    assert_eq!(status, 200);
    let read = |base: String| {
        let (client, customer, credits) = (client.clone(), customer.clone(), credits.clone());
        async move {
            let net = |credit_type: String| {
                let (client, base, customer) = (client.clone(), base.clone(), customer.clone());
                async move {
                    post(
                        &client,
                        &base,
                        "/v1/contracts/customerBalances/getNetBalance",
                        &json!({"customer_id": customer, "credit_type_id": credit_type}),
                    )
                    .await
                    .1["data"]["balance"]
                        .clone()
                }
            };
            let usd = "2714e483-4ff1-48e4-9e25-ac732e8f24f2".to_owned();
            let (_, contracts) = post(
                &client,
                &base,
                "/v1/contracts/list",
                &json!({"customer_id": customer}),
            )
            .await;
            let (_, invoices) = post_get(
                &client,
                &base,
                &format!("/v1/customers/{customer}/invoices?type=USAGE"),
            )
            .await;
            (
                net(credits).await,
                net(usd).await,
                contracts["data"].as_array().map(Vec::len),
                invoices["data"][0]["line_items"].clone(),
                invoices["data"][0]["total"].clone(),
            )
        }
    };
    let before = read(base.clone()).await;
    assert_eq!(
        (&before.0, &before.1, before.2),
        (&json!(0), &json!(900), Some(1))
    );
    assert_eq!(before.4, json!(0), "{before:?}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = start_server(&config);
    wait_ready(&client, &server.base).await;
    let after = read(server.base.clone()).await;
    assert_eq!(after, before, "the replay reaches the live run's state");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
