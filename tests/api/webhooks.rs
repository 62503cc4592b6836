//! Webhook deliveries for operators: pending, delivered, dead letters and re-drive.

use serde_json::{Value, json};
use tollgate::domain::fixtures;

use super::contracts::customer_with_gated_commit;
use super::{TestApp, spawn_app_with_config};

/// An app whose webhooks are retried every ~50 ms and given up on after `give_up_ms`. Its
/// receiver takes the payment-gate types only (lifecycle notices would add to the counts).
async fn app(give_up_ms: i64) -> TestApp {
    let app = spawn_app_with_config(None, |config| {
        config.webhooks.first_retry_ms = 50;
        config.webhooks.max_interval_ms = 100;
        config.webhooks.give_up_after_ms = give_up_ms;
        config.settings.webhook_routes[0].event_types = Some(vec!["payment_gate.*".into()]);
    })
    .await;
    for change in fixtures::catalog_changes() {
        app.engine.change_catalog(change).await.unwrap();
    }
    app
}

/// A payment-gated commit: one `payment_gate.external_initiate` webhook.
async fn gated_commit(app: &TestApp, alias: &str) {
    customer_with_gated_commit(app, alias, "EXTERNAL").await;
}

/// The list `list` once it holds `n` items (or what it holds after ~3 s).
async fn page_of(app: &TestApp, list: &str, n: usize) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..300 {
        items = page(app, list).await;
        if items.len() == n {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    items
}

async fn page(app: &TestApp, list: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/v1/tollgate/webhooks/{list}")).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

#[actix_rt::test]
async fn a_failing_receiver_shows_pending_attempts_then_a_dead_letter_that_redrive_delivers() {
    let app = app(400).await;
    *app.receiver.status.lock().unwrap() = 503;
    gated_commit(&app, "dl-1").await;
    // Pending, with the failed attempts and their status.
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending = page(&app, "pending").await;
        if pending
            .first()
            .is_some_and(|p| p["attempts"].as_u64() >= Some(2))
        {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pending.len(), 1, "{pending:?}");
    let item = &pending[0];
    assert_eq!(item["type"], "payment_gate.external_initiate");
    assert_eq!(item["status"], "PENDING");
    assert_eq!(item["last_status"], 503);
    assert!(
        item["last_error"].as_str().unwrap().contains("503"),
        "{item}"
    );
    assert_eq!(item["destination"], json!(app.receiver.url));
    assert!(item["next_attempt_at"].is_string());
    let id = item["id"].as_str().unwrap().to_owned();
    let webhook_id = item["webhook_id"].as_str().unwrap().to_owned();
    // Given up after 400 ms: a dead letter, no longer pending.
    let dead = page_of(&app, "dead-letters", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], json!(id));
    assert_eq!(dead[0]["status"], "DEAD_LETTER");
    assert!(page(&app, "pending").await.is_empty());
    assert!(page(&app, "delivered").await.is_empty());

    // Re-drive: unknown ids and bad bodies are refused; the dead letter goes out again with
    // the same webhook id, and is listed as delivered.
    for (body, want) in [
        (json!({"id": "00000000-0000-0000-0000-000000000009"}), 404),
        (json!({}), 400),
        (json!({"id": id, "all": true}), 400),
        (json!({"id": "not-a-uuid"}), 400),
    ] {
        let (status, answer) = app.post("/v1/tollgate/webhooks/redrive", body).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer["message"].is_string());
    }
    *app.receiver.status.lock().unwrap() = 200;
    let (status, answer) = app
        .post("/v1/tollgate/webhooks/redrive", json!({"id": id}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["redriven"], json!([id]));
    let (status, _) = app
        .post("/v1/tollgate/webhooks/redrive", json!({"id": id}))
        .await;
    assert_eq!(
        status, 404,
        "a re-driven webhook is no longer a dead letter"
    );
    let delivered = page_of(&app, "delivered", 1).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["id"], json!(id));
    assert_eq!(delivered[0]["webhook_id"], json!(webhook_id));
    assert_eq!(delivered[0]["status"], "DELIVERED");
    assert_eq!(delivered[0]["last_status"], 200);
    assert_eq!(
        delivered[0]["attempts"], 1,
        "a re-drive starts its attempts afresh"
    );
    assert!(delivered[0]["delivered_at"].is_string());
    assert!(page(&app, "dead-letters").await.is_empty());
    let ok = app.receiver.of_type("payment_gate.external_initiate");
    assert!(ok.iter().all(|w| w.id == webhook_id && w.signature_valid));
}

#[actix_rt::test]
async fn redrive_all_sends_every_dead_letter_and_lists_page_until_null() {
    let app = app(300).await;
    *app.receiver.status.lock().unwrap() = 500;
    for i in 0..3 {
        gated_commit(&app, &format!("all-{i}")).await;
    }
    let dead = page_of(&app, "dead-letters", 3).await;
    assert_eq!(dead.len(), 3);
    // Pages of one, until next_page is null.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/tollgate/webhooks/dead-letters?limit=1&next_page={cursor}"
            ))
            .await;
        assert_eq!(status, 200);
        seen.extend(page["data"].as_array().unwrap().clone());
        match page["next_page"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(seen.len() <= 3);
    }
    assert_eq!(seen, dead);
    *app.receiver.status.lock().unwrap() = 200;
    let (status, answer) = app
        .post("/v1/tollgate/webhooks/redrive", json!({"all": true}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["redriven"].as_array().unwrap().len(), 3);
    assert_eq!(answer["data"]["more"], false);
    let delivered = page_of(&app, "delivered", 3).await;
    assert_eq!(delivered.len(), 3);
    assert!(page(&app, "dead-letters").await.is_empty());
    for bad in [
        "pending?next_page=x",
        "delivered?next_page=zz",
        "dead-letters?limit=0",
    ] {
        let (status, _) = app.get(&format!("/v1/tollgate/webhooks/{bad}")).await;
        assert_eq!(status, 400, "{bad}");
    }
}
