//! Payment-gate workflows for operators: get by id, list with filters.

use serde_json::{Value, json};

use super::TestApp;
use super::contracts::{app_with_catalog, customer_with_gated_commit, now_ms, rfc3339};
use super::support::eventually;

/// A customer with an EXTERNAL-gated commit: one workflow AWAITING_EXTERNAL. Returns the
/// customer, the contract and the workflow id.
async fn gated(app: &TestApp, alias: &str) -> (String, String, String) {
    let (customer, contract) = customer_with_gated_commit(app, alias, "EXTERNAL").await;
    let mut workflow = String::new();
    eventually("external_initiate", || {
        let hooks = app.receiver.of_type("payment_gate.external_initiate");
        match hooks
            .iter()
            .find(|h| h.body["properties"]["customer_id"] == json!(customer))
        {
            Some(hook) => {
                workflow = hook.body["properties"]["workflow_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                true
            }
            None => false,
        }
    })
    .await;
    (customer, contract, workflow)
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let (status, page) = app.get(&format!("/v1/tollgate/workflows{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn workflows_are_found_by_id_and_listed_with_every_filter() {
    let app = app_with_catalog().await;
    let (alice, alice_contract, first) = gated(&app, "wf-alice").await;
    let (bob, _, second) = gated(&app, "wf-bob").await;

    // Get by id: the invoice, commit, amounts and state.
    let (status, body) = app.get(&format!("/v1/tollgate/workflows/{first}")).await;
    assert_eq!(status, 200, "{body}");
    let w = &body["data"];
    assert_eq!(w["id"], json!(first));
    assert_eq!(w["state"], "AWAITING_EXTERNAL");
    assert_eq!(w["workflow_type"], "manual_commit");
    assert_eq!(w["payment_gate_type"], "EXTERNAL");
    assert_eq!(w["customer_id"], json!(alice));
    assert_eq!(w["contract_id"], json!(alice_contract));
    assert_eq!(w["invoice_total"], 2000);
    assert!(w["invoice_id"].is_string() && w["commit_id"].is_string());
    assert!(w.get("ended_at").is_none());
    let (status, _) = app
        .get("/v1/tollgate/workflows/00000000-0000-0000-0000-000000000009")
        .await;
    assert_eq!(status, 404);

    // Released: its state changes in both views.
    let (status, _) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": second, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200);

    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(ids(&app, "").await, both);
    assert_eq!(
        ids(&app, "?state=awaiting_external").await,
        vec![first.clone()]
    );
    assert_eq!(ids(&app, "?state=RELEASED").await, vec![second.clone()]);
    assert_eq!(
        ids(&app, &format!("?customer_id={bob}")).await,
        vec![second.clone()]
    );
    assert_eq!(
        ids(
            &app,
            &format!("?customer_id={alice}&state=AWAITING_EXTERNAL")
        )
        .await,
        vec![first.clone()]
    );
    assert_eq!(
        ids(&app, &format!("?contract_id={alice_contract}")).await,
        vec![first.clone()]
    );
    assert_eq!(ids(&app, "?kind=manual_commit").await, both);
    assert!(ids(&app, "?kind=spend").await.is_empty());
    assert!(
        ids(&app, "?created_after=2999-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    assert!(
        ids(&app, "?created_before=2000-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    assert_eq!(ids(&app, "?created_after=2000-01-01T00:00:00Z").await, both);

    // Pages of one, with and without a customer, until next_page is null.
    for base in [
        "?limit=1".to_owned(),
        format!("?limit=1&customer_id={alice}"),
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = app
                .get(&format!("/v1/tollgate/workflows{base}&next_page={cursor}"))
                .await;
            assert_eq!(status, 200, "{page}");
            seen.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["id"].clone()),
            );
            match page["next_page"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
            assert!(seen.len() <= 2, "{seen:?}");
        }
        let want: Vec<Value> = if base.contains("customer_id") {
            vec![json!(first)]
        } else {
            both.iter().map(|id| json!(id)).collect()
        };
        assert_eq!(seen, want, "{base}");
    }

    for bad in [
        "?state=PAID",
        "?kind=other",
        "?customer_id=nope",
        "?created_after=yesterday",
        "?next_page=x",
        "?limit=0",
    ] {
        let (status, body) = app.get(&format!("/v1/tollgate/workflows{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].is_string());
    }
    let (status, _) = app
        .get("/v1/tollgate/workflows?customer_id=00000000-0000-0000-0000-000000000009")
        .await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn a_none_gated_commit_s_workflow_has_no_webhook_and_is_still_found_and_listed() {
    let app = app_with_catalog().await;
    let (customer, contract) = customer_with_gated_commit(&app, "wf-none", "NONE").await;
    let (_, v2) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
    let workflow = v2["data"]["commits"][0]["payment_gate_workflow"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v2}"))
        .to_owned();
    assert_eq!(
        v2["data"]["commits"][0]["payment_gate_workflow"]["state"],
        "RELEASED"
    );
    // Released at once; no webhook names it.
    let (status, one) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["data"]["state"], "RELEASED");
    assert_eq!(one["data"]["payment_gate_type"], "NONE");
    assert_eq!(ids(&app, "").await, vec![workflow.clone()]);
    assert_eq!(
        ids(&app, "?state=RELEASED&kind=manual_commit").await,
        vec![workflow]
    );
}

async fn cancel(app: &TestApp, workflow: &str, body: Value) -> (u16, Value) {
    app.post(&format!("/v1/tollgate/workflows/{workflow}/cancel"), body)
        .await
}

#[actix_rt::test]
async fn an_external_workflow_is_cancelled_through_the_log_and_ends_failed_with_its_history() {
    let app = app_with_catalog().await;
    let (customer, contract, workflow) = gated(&app, "wf-cancel").await;

    // Bad requests change nothing.
    for bad in [
        json!({}),
        json!({"reason": ""}),
        json!({"reason": "   "}),
        json!({"reason": 5}),
        json!({"reason": "x".repeat(1_001)}),
    ] {
        let (status, body) = cancel(&app, &workflow, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].as_str().is_some(), "{body}");
    }
    let (status, body) = cancel(&app, "not-an-id", json!({"reason": "x"})).await;
    assert_eq!(status, 400, "{body}");
    let unknown = "00000000-0000-0000-0000-00000000abcd";
    let (status, body) = cancel(&app, unknown, json!({"reason": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let (_, before) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(before["data"]["state"], "AWAITING_EXTERNAL");
    let states = |w: &Value| -> Vec<String> {
        w["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(states(&before["data"]), ["INITIATED", "AWAITING_EXTERNAL"]);

    let (status, body) = cancel(&app, &workflow, json!({"reason": "  duplicate order "})).await;
    assert_eq!(status, 200, "{body}");
    let w = &body["data"];
    assert_eq!(w["state"], "FAILED");
    assert_eq!(w["error_message"], "duplicate order");
    assert_eq!(w["error_code"], "canceled_by_operator");
    assert_eq!(states(w), ["INITIATED", "AWAITING_EXTERNAL", "FAILED"]);
    assert_eq!(w["history"][2]["reason"], "duplicate order");
    assert!(w["ended_at"].is_string());
    eventually("the failed payment_status webhook", || {
        app.receiver
            .of_type("payment_gate.payment_status")
            .iter()
            .any(|h| {
                h.body["properties"]["workflow_id"] == json!(workflow)
                    && h.body["properties"]["payment_status"] == "failed"
                    && h.body["properties"]["error_message"] == "duplicate order"
            })
    })
    .await;
    // The consequences of a failed payment: the commit is cancelled (Metronome lists no
    // commit whose purchase failed).
    let (_, got) = app
        .post(
            "/v2/contracts/get",
            json!({"customer_id": customer, "contract_id": contract}),
        )
        .await;
    assert_eq!(got["data"]["commits"], json!([]), "{got}");
    // The same answer again; a paid release now says how it ended.
    let (status, again) = cancel(&app, &workflow, json!({"reason": "again"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["error_message"], "duplicate order");
    assert_eq!(
        states(&again["data"]).len(),
        3,
        "nothing new in the history"
    );
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("FAILED"));
    // Listed by state, and the cancel is in the audit log.
    let failed = ids(&app, &format!("?customer_id={customer}&state=FAILED")).await;
    assert_eq!(failed, std::slice::from_ref(&workflow));
    let path = format!("/v1/tollgate/workflows/{workflow}/cancel");
    let mut audited = Vec::new();
    for _ in 0..50 {
        let (status, audit) = app.get("/v1/tollgate/audit?limit=100").await;
        assert_eq!(status, 200, "{audit}");
        audited = audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == json!(path))
            .map(|r| r["status"].as_u64().unwrap())
            .collect();
        if audited.len() == 7 {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Five refusals, the cancel and its repeat.
    audited.sort_unstable();
    assert_eq!(audited, [200, 200, 400, 400, 400, 400, 400]);
}

#[actix_rt::test]
async fn a_released_workflow_cannot_be_cancelled() {
    let app = app_with_catalog().await;
    let (_, _, workflow) = gated(&app, "wf-cancel-released").await;
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": workflow, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let states: Vec<&str> = body["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["INITIATED", "AWAITING_EXTERNAL", "RELEASED"]);
    let (status, body) = cancel(&app, &workflow, json!({"reason": "late"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("RELEASED"));
    let (_, after) = app.get(&format!("/v1/tollgate/workflows/{workflow}")).await;
    assert_eq!(after["data"]["state"], "RELEASED");
}

#[actix_rt::test]
async fn the_summary_counts_workflows_in_flight_by_state_and_the_state_filter_reads_its_index() {
    let app = app_with_catalog().await;
    let (_, _, first) = gated(&app, "wf-sum-a").await;
    let (_, _, second) = gated(&app, "wf-sum-b").await;
    let (_, _, third) = gated(&app, "wf-sum-c").await;
    let s = summary(&app).await;
    assert_eq!(s["workflows_in_flight"]["total"], 3, "{s}");
    assert_eq!(s["workflows_in_flight"]["by_state"]["AWAITING_EXTERNAL"], 3);
    assert_eq!(s["workflows_in_flight"]["by_state"]["CHARGING"], 0);
    assert_eq!(s["webhooks"]["dead_letters"], 0);
    assert_eq!(s["quarantined_inputs"], 0);
    assert_eq!(s["ready"], true);
    assert_eq!(s["counts_capped"], json!([]));
    assert!(s["apply"]["lag_ms"].is_i64(), "{s}");

    // One paid, one cancelled: they leave the index; the third stays.
    let (status, body) = app
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            json!({"workflow_id": first, "outcome": "paid"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cancel(&app, &second, json!({"reason": "test"})).await;
    assert_eq!(status, 200, "{body}");
    let s = summary(&app).await;
    assert_eq!(s["workflows_in_flight"]["total"], 1, "{s}");
    assert_eq!(
        ids(&app, "?state=AWAITING_EXTERNAL").await,
        std::slice::from_ref(&third),
        "the in-flight state index"
    );
    assert_eq!(ids(&app, "?state=CHARGING").await, Vec::<String>::new());
    let mut ended = ids(&app, "?state=RELEASED").await;
    ended.extend(ids(&app, "?state=FAILED").await);
    assert_eq!(ended, [first.clone(), second.clone()]);

    // The ingest rate from the once-a-second samples.
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"transaction_id": format!("sum-{i}"), "customer_id": "wf-sum-a",
                   "event_type": "api_call", "timestamp": rfc3339(now_ms())})
        })
        .collect();
    let (status, _) = app.post("/v1/ingest", json!(events)).await;
    assert_eq!(status, 200);
    actix_rt::time::sleep(std::time::Duration::from_millis(2_200)).await;
    let s = summary(&app).await;
    assert!(
        s["ingest"]["events_accepted_total"].as_u64().unwrap() >= 20,
        "{s}"
    );
    assert!(s["ingest"]["events_per_second_10s"].is_u64(), "{s}");
    assert!(
        s["ingest"]["events_per_second_60s"].as_u64().unwrap() > 0,
        "{s}"
    );
}

async fn summary(app: &TestApp) -> Value {
    let (status, body) = app.get("/v1/tollgate/summary").await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// `/metrics` is Prometheus text: each family typed once, histograms in seconds with
/// cumulative buckets ending in `+Inf` equal to `_count`, and the latencies observed.
#[actix_rt::test]
async fn metrics_have_histograms_in_seconds_gauges_and_the_build() {
    let app = app_with_catalog().await;
    let (_, _, _workflow) = gated(&app, "metrics-co").await;
    let events: Vec<Value> = (0..5)
        .map(|i| {
            json!({"transaction_id": format!("m-{i}"), "customer_id": "metrics-co",
                   "event_type": "api_call", "timestamp": rfc3339(now_ms())})
        })
        .collect();
    let (status, _) = app.post("/v1/ingest", json!(events)).await;
    assert_eq!(status, 200);
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut types: std::collections::BTreeMap<String, String> = Default::default();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            types.insert(name.to_owned(), kind.to_owned()).is_none(),
            "{name} typed twice"
        );
    }
    // Every sample belongs to a typed family.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "an untyped sample: {line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
    }
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    for family in [
        "tollgate_ingest_ack_seconds",
        "tollgate_apply_lag_seconds",
        "tollgate_log_persist_seconds",
        "tollgate_webhook_delivery_seconds",
        "tollgate_payment_call_seconds",
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
    for family in [
        "tollgate_ingest_ack_seconds",
        "tollgate_apply_lag_seconds",
        "tollgate_log_persist_seconds",
    ] {
        let count = sample(&format!("{family}_count"));
        assert!(count >= 1.0, "{family} observed nothing");
        // Cumulative buckets, the last one every observation.
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}_bucket{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{family}: {buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            Some(count),
            "{family}: +Inf is the count"
        );
        assert!(sample(&format!("{family}_sum")) >= 0.0);
    }
    // Webhook attempts by destination and status (the gated commit's external_initiate).
    assert!(
        text.lines().any(|l| l.starts_with(
            "tollgate_webhook_delivery_seconds_count{destination=\"http://127.0.0.1:"
        ) && l.contains("status=\"200\"")
            && !l.contains("/hooks")),
        "{text}"
    );
    assert_eq!(
        sample("tollgate_workflows_in_flight{state=\"AWAITING_EXTERNAL\"}"),
        1.0
    );
    assert_eq!(sample("tollgate_webhook_dead_letters_on_disk"), 0.0);
    assert_eq!(sample("tollgate_inputs_quarantined_on_disk"), 0.0);
    assert!(text.contains("tollgate_build_info{version=\""), "{text}");
}
