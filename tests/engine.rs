//! Engine-level tests (no HTTP): temp data dirs, a local webhook receiver, the real actors.

mod support;

use std::sync::Arc;

use support::{Receiver, engine_config, eventually};
use tollgate::actors::clock::SystemClock;
use tollgate::actors::{Engine, IngestEvent, IngestReceipt};
use tollgate::domain::customer::{ContractEdit, Input, ThresholdUpdate};
use tollgate::domain::fixtures::{self, CONTRACT, CUSTOMER};
use tollgate::domain::gate::{GateType, OutcomeSource, PaymentOutcome, PaymentResult};
use tollgate::domain::{Id, Money, Timestamp};

async fn engine_with_catalog(dir: &std::path::Path, receiver: Option<&Receiver>) -> Engine {
    started_with_catalog(engine_config(dir, receiver.map(|r| r.url.as_str()))).await
}

/// An engine on `config` with the fixture catalog.
async fn started_with_catalog(config: tollgate::actors::engine::EngineConfig) -> Engine {
    let engine = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    for change in fixtures::catalog_changes() {
        engine.change_catalog(change).await.unwrap();
    }
    engine
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// A customer with a contract covering now and the given thresholds.
async fn customer_with_contract(
    engine: &Engine,
    customer: Id,
    alias: &str,
    spend: Option<tollgate::domain::contract::ThresholdConfig>,
    prepaid: Option<tollgate::domain::contract::ThresholdConfig>,
    commits: Vec<tollgate::domain::customer::CommitSpec>,
) {
    let thresholds = (spend, prepaid);
    customer_with_contract_id(engine, customer, CONTRACT, alias, thresholds, commits).await;
}

async fn customer_with_contract_id(
    engine: &Engine,
    customer: Id,
    contract: Id,
    alias: &str,
    (spend, prepaid): (
        Option<tollgate::domain::contract::ThresholdConfig>,
        Option<tollgate::domain::contract::ThresholdConfig>,
    ),
    commits: Vec<tollgate::domain::customer::CommitSpec>,
) {
    let mut profile = fixtures::profile(customer, false);
    profile.ingest_aliases = vec![alias.to_owned()];
    engine.create_customer(profile).await.unwrap();
    let mut spec = fixtures::contract(contract);
    spec.starting_at = now().month_start();
    spec.ending_before = None;
    spec.spend_threshold = spend;
    spec.prepaid_threshold = prepaid;
    spec.commits = commits
        .into_iter()
        .map(|mut c| {
            c.access_schedule = vec![(
                c.access_schedule[0].0,
                spec.starting_at,
                Timestamp::END_OF_TIME,
            )];
            c.invoice_schedule = c
                .invoice_schedule
                .into_iter()
                .map(|(_, p, q)| (spec.starting_at, p, q))
                .collect();
            c
        })
        .collect();
    engine
        .apply(customer, Input::create_contract(spec))
        .await
        .unwrap();
}

fn calls(key: &str, prefix: &str, n: usize) -> Vec<IngestEvent> {
    (0..n)
        .map(|i| IngestEvent {
            customer_key: key.to_owned(),
            event: fixtures::api_call(&format!("{prefix}-{i}"), now()),
        })
        .collect()
}

async fn outstanding(engine: &Engine, customer: Id) -> Money {
    engine
        .query(customer, |s| {
            s.customer.contracts[0].outstanding_spend().unwrap()
        })
        .await
        .unwrap()
}

async fn workflows(engine: &Engine, customer: Id) -> Vec<tollgate::domain::gate::Workflow> {
    engine
        .query(customer, |s| s.customer.contracts[0].workflows.clone())
        .await
        .unwrap()
}

/// CUSTOMER (alias "acme") with a $10 EXTERNAL spend threshold, crossed by 10 calls: one
/// workflow AWAITING_EXTERNAL, announced.
async fn cross_external_threshold(engine: &Engine, receiver: &Receiver) -> IngestReceipt {
    customer_with_contract(
        engine,
        CUSTOMER,
        "acme",
        Some(fixtures::spend_threshold(1_000, GateType::External)),
        None,
        vec![],
    )
    .await;
    let receipt = engine.ingest(calls("acme", "a", 10)).await.unwrap();
    eventually("the external_initiate webhook", || {
        receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    receipt
}

#[actix_rt::test]
async fn usage_crossing_a_spend_threshold_sends_signed_webhooks_and_release_clears_spend() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let engine = engine_with_catalog(dir.path(), Some(&receiver)).await;
    let receipt = cross_external_threshold(&engine, &receiver).await;
    assert_eq!(receipt.accepted, 10);
    let initiate = &receiver.of_type("payment_gate.external_initiate")[0];
    assert!(initiate.signature_valid);
    assert_eq!(initiate.body["properties"]["invoice_total"], 1000);
    assert_eq!(receiver.of_type("payment_gate.threshold_reached").len(), 1);
    let workflow_id =
        Id::parse(initiate.body["properties"]["workflow_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        engine.workflow_customer(workflow_id).unwrap(),
        Some(CUSTOMER)
    );
    engine
        .apply(
            CUSTOMER,
            Input::PaymentOutcome(PaymentOutcome {
                workflow_id,
                source: OutcomeSource::External,
                result: PaymentResult::Paid,
                payment_intent_id: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(outstanding(&engine, CUSTOMER).await, Money::ZERO);
    eventually("payment_status webhook", || {
        receiver.of_type("payment_gate.payment_status").len() == 1
    })
    .await;
    // The same outcome again is refused and changes nothing.
    let again = engine
        .apply(
            CUSTOMER,
            Input::PaymentOutcome(PaymentOutcome {
                workflow_id,
                source: OutcomeSource::External,
                result: PaymentResult::Paid,
                payment_intent_id: None,
            }),
        )
        .await;
    assert!(again.is_err());
}

#[actix_rt::test]
async fn duplicate_transaction_ids_are_accepted_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    customer_with_contract(&engine, CUSTOMER, "acme", None, None, vec![]).await;
    let first = engine.ingest(calls("acme", "d", 5)).await.unwrap();
    assert_eq!((first.accepted, first.duplicates), (5, 0));
    // The same batch again, and a batch repeating one id inside itself.
    let again = engine.ingest(calls("acme", "d", 5)).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 5));
    let mut inner = calls("acme", "e", 2);
    inner.push(inner[0].clone());
    let inner = engine.ingest(inner).await.unwrap();
    assert_eq!((inner.accepted, inner.duplicates), (2, 1));
    eventually_money(&engine, CUSTOMER, Money::from_i64(700)).await;
}

async fn eventually_money(engine: &Engine, customer: Id, expected: Money) {
    for _ in 0..200 {
        if outstanding(engine, customer).await == expected {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(outstanding(engine, customer).await, expected);
}

#[actix_rt::test]
async fn usage_for_an_unknown_alias_is_kept_and_applied_when_the_alias_appears() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    customer_with_contract(&engine, CUSTOMER, "acme", None, None, vec![]).await;
    let receipt = engine.ingest(calls("later-co", "l", 3)).await.unwrap();
    assert_eq!(receipt.accepted, 3);
    eventually("late events kept", || {
        engine
            .metrics()
            .events_late
            .load(std::sync::atomic::Ordering::Relaxed)
            == 3
    })
    .await;
    assert_eq!(outstanding(&engine, CUSTOMER).await, Money::ZERO);
    engine
        .set_ingest_aliases(CUSTOMER, vec!["acme".into(), "later-co".into()])
        .await
        .unwrap();
    eventually_money(&engine, CUSTOMER, Money::from_i64(300)).await;
    // Re-sending the late events after they were applied does nothing.
    let again = engine.ingest(calls("later-co", "l", 3)).await.unwrap();
    assert_eq!(again.duplicates, 3);
    eventually_money(&engine, CUSTOMER, Money::from_i64(300)).await;
}

/// Sends `amount` tokens for the unknown key `later-co` and waits until `kept` events wait.
async fn late_tokens(engine: &Engine, txn: &str, amount: &str, kept: u64) {
    let event = IngestEvent {
        customer_key: "later-co".into(),
        event: fixtures::llm_tokens(txn, now(), amount),
    };
    engine.ingest(vec![event]).await.unwrap();
    eventually("late events kept", || {
        engine
            .metrics()
            .events_late
            .load(std::sync::atomic::Ordering::Relaxed)
            == kept
    })
    .await;
}

/// Found by the simulation (seed 39, alias moves): usage that waited for its alias was rated
/// by the catalog in force when the alias appeared, so a metric archived meanwhile dropped
/// tokens accepted before the archive. It is rated as accepted, like every event, across a
/// restart too.
#[actix_rt::test]
async fn usage_that_waited_for_its_alias_is_rated_by_the_catalog_it_was_accepted_at() {
    use tollgate::domain::catalog::CatalogChange;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    customer_with_contract(&engine, CUSTOMER, "acme", None, None, vec![]).await;
    late_tokens(&engine, "before-archive", "10", 1).await;
    engine
        .change_catalog(CatalogChange::ArchiveBillableMetric {
            id: fixtures::TOKEN_METRIC,
            at: now(),
        })
        .await
        .unwrap();
    late_tokens(&engine, "after-archive", "1000", 2).await;
    // Killed (a copy of its data, no checkpoint: recovery replays the kept events' log
    // entries) before the alias appears: the kept events keep their catalog versions.
    let (engine, _copy) = recover_from_copy(&engine, None).await;
    engine
        .set_ingest_aliases(CUSTOMER, vec!["acme".into(), "later-co".into()])
        .await
        .unwrap();
    eventually("late events released", || {
        engine
            .metrics()
            .events_late_released
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    // 10 tokens at 2 cents (accepted while the metric rated); the 1000 accepted after its
    // archive count nothing.
    eventually_money(&engine, CUSTOMER, Money::from_i64(20)).await;
    let lines = engine
        .query(CUSTOMER, |s| s.customer.contracts[0].periods[0].lines.len())
        .await
        .unwrap();
    assert_eq!(lines, 1, "one tokens line");
}

/// Found in review: recovery replays each partition's log in turn (or in parallel), so an alias
/// moved from a customer of one partition to a customer of another was set in the wrong order
/// and ended up naming nobody: its usage then waited 34 days and expired. Two aliases moved in
/// opposite directions between partitions: whatever the replay order, one of them broke.
#[actix_rt::test]
async fn aliases_moved_across_partitions_name_their_new_customer_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    let (x, y) = (Id::from_u128(0x4001), Id::from_u128(0x4002));
    let contracts = (Id::from_u128(0x5001), Id::from_u128(0x5002));
    customer_with_contract_id(&engine, x, contracts.0, "p", (None, None), vec![]).await;
    customer_with_contract_id(&engine, y, contracts.1, "q", (None, None), vec![]).await;
    // p moves from x to y, then q from y to x.
    engine
        .set_ingest_aliases(x, vec!["x-new".into()])
        .await
        .unwrap();
    engine
        .set_ingest_aliases(y, vec!["q".into(), "p".into()])
        .await
        .unwrap();
    engine
        .set_ingest_aliases(y, vec!["p".into()])
        .await
        .unwrap();
    engine
        .set_ingest_aliases(x, vec!["x-new".into(), "q".into()])
        .await
        .unwrap();
    let (engine, _copy) = recover_from_copy(&engine, None).await;
    engine.ingest(calls("p", "to-y", 2)).await.unwrap();
    engine.ingest(calls("q", "to-x", 3)).await.unwrap();
    eventually_money(&engine, y, Money::from_i64(200)).await;
    eventually_money(&engine, x, Money::from_i64(300)).await;
}

#[test]
fn version_3_unmatched_log_entries_still_read() {
    use tollgate::actors::entry::{LOG_VERSION_V3, LogEntry, decode_log_entry};
    let entry = LogEntry::Unmatched {
        key: "later-co".into(),
        event: fixtures::llm_tokens("t", now(), "5"),
    };
    let bytes = tollgate::storage::encode(LOG_VERSION_V3, &entry).unwrap();
    assert_eq!(decode_log_entry(&bytes).unwrap(), entry);
}

#[test]
fn late_values_of_the_first_version_read_without_a_catalog_version() {
    use tollgate::actors::entry::{LateEvent, decode_late, encode_late};
    #[derive(serde::Serialize)]
    struct V1 {
        at_ms: i64,
        event: tollgate::domain::usage::UsageEvent,
    }
    let event = fixtures::llm_tokens("t", now(), "5");
    let v1 = tollgate::storage::encode(
        1,
        &V1 {
            at_ms: 7,
            event: event.clone(),
        },
    )
    .unwrap();
    let read = decode_late(&v1).unwrap();
    assert_eq!((read.at_ms, read.catalog_version), (7, None));
    assert_eq!(read.event, event);
    let v2 = LateEvent {
        at_ms: 8,
        event,
        catalog_version: Some(3),
    };
    let read = decode_late(&encode_late(&v2).unwrap()).unwrap();
    assert_eq!(read.catalog_version, Some(3));
    let mut unknown = encode_late(&v2).unwrap();
    unknown[0] = 9;
    assert!(decode_late(&unknown).is_err());
}

#[actix_rt::test]
async fn many_concurrent_batches_crossing_one_threshold_start_exactly_one_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let engine = engine_with_catalog(dir.path(), Some(&receiver)).await;
    customer_with_contract(
        &engine,
        CUSTOMER,
        "acme",
        Some(fixtures::spend_threshold(500, GateType::External)),
        None,
        vec![],
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..20 {
        let engine = engine.clone();
        tasks.push(actix_rt::spawn(async move {
            engine
                .ingest(calls("acme", &format!("c{t}"), 10))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    eventually_money(&engine, CUSTOMER, Money::from_i64(20_000)).await;
    let flows = workflows(&engine, CUSTOMER).await;
    assert_eq!(flows.len(), 1, "one crossing, one workflow: {flows:?}");
    eventually("threshold webhook", || {
        receiver.of_type("payment_gate.threshold_reached").len() == 1
    })
    .await;
}

#[actix_rt::test]
async fn a_receiver_answering_500_gets_retries_with_the_same_id_and_fresh_valid_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    *receiver.status.lock().unwrap() = 500;
    let engine = engine_with_catalog(dir.path(), Some(&receiver)).await;
    customer_with_contract(
        &engine,
        CUSTOMER,
        "acme",
        Some(fixtures::spend_threshold(100, GateType::None)),
        None,
        vec![],
    )
    .await;
    engine.ingest(calls("acme", "r", 1)).await.unwrap();
    eventually("three failed attempts", || {
        receiver.of_type("payment_gate.threshold_reached").len() >= 3
    })
    .await;
    // Ingest is unaffected by the failing receiver.
    let receipt = engine.ingest(calls("acme", "s", 50)).await.unwrap();
    assert_eq!(receipt.accepted, 50);
    *receiver.status.lock().unwrap() = 200;
    eventually("a delivery after recovery", || {
        engine.webhook_stats().snapshot().delivered >= 1
    })
    .await;
    let all = receiver.of_type("payment_gate.threshold_reached");
    let first_id = all[0].id.clone();
    let same: Vec<_> = all.iter().filter(|r| r.id == first_id).collect();
    assert!(same.len() >= 3);
    assert!(
        same.iter()
            .all(|r| r.signature_valid && r.body == same[0].body)
    );
}

#[actix_rt::test]
async fn checkpoints_and_eviction_keep_state_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), None);
    config.settings.evict_idle_ms = 0;
    let engine = started_with_catalog(config).await;
    customer_with_contract(
        &engine,
        CUSTOMER,
        "acme",
        None,
        Some(fixtures::prepaid_threshold(500, 5_000, GateType::External)),
        vec![fixtures::prepaid_commit(10_000, 10)],
    )
    .await;
    engine.ingest(calls("acme", "k", 30)).await.unwrap();
    engine.checkpoint().await.unwrap();
    // Idle actors are evicted (after writing state) and re-created from it on demand.
    eventually("eviction", || {
        engine
            .metrics()
            .actors_evicted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    let balance = engine
        .query(CUSTOMER, |s| {
            s.customer.contracts[0]
                .balance(Timestamp(i64::MAX / 4).min(now()))
                .unwrap()
        })
        .await
        .unwrap();
    assert_eq!(balance, Money::from_i64(7_000));
    engine.ingest(calls("acme", "k2", 66)).await.unwrap();
    eventually_workflow(&engine).await;
    let flows = workflows(&engine, CUSTOMER).await;
    // B fell to $5 (the threshold) on the 65th call: recharge to $50.
    assert_eq!(flows[0].access_amount, Money::from_i64(5_000 - 500));
    // Re-enabling after nothing failed is an edit like any other.
    engine
        .apply(
            CUSTOMER,
            Input::edit(ContractEdit {
                edit_id: Id::from_u128(1),
                contract_id: CONTRACT,
                update_prepaid_threshold: Some(ThresholdUpdate {
                    is_enabled: Some(true),
                    ..ThresholdUpdate::default()
                }),
                ..ContractEdit::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(workflows(&engine, CUSTOMER).await.len(), 1);
}

/// More customers per partition than one checkpoint step writes (1,000): the checkpoint goes on
/// between commits while ingest continues, completes, and every balance stays exact.
#[actix_rt::test]
async fn a_checkpoint_written_in_steps_between_commits_keeps_every_balance_exact() {
    const CUSTOMERS: u128 = 2_500;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    numbered_customers_with_a_commit(&engine, CUSTOMERS).await;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let checkpoints_before = engine.metrics().checkpoints.load(relaxed);
    let ingest = async {
        for round in 0..ROUNDS {
            let events: Vec<IngestEvent> = (0..CUSTOMERS)
                .flat_map(|i| calls(&format!("c{i}"), &format!("r{round}-c{i}"), 1))
                .collect();
            for batch in events.chunks(100) {
                engine.ingest(batch.to_vec()).await.unwrap();
            }
        }
    };
    let checkpoints = async {
        engine.checkpoint().await.unwrap();
        engine.checkpoint().await.unwrap();
    };
    // A checkpoint that never finishes its steps must fail the test, not hang it.
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        tokio::join!(ingest, checkpoints)
    })
    .await
    .expect("ingest and both checkpoints finish");
    // Two checkpoints per partition, the first of more than one step.
    assert!(engine.metrics().checkpoints.load(relaxed) >= checkpoints_before + 4);
    // Every call costs $1 of the $100 commit.
    let expected = Money::from_i64(10_000 - 100 * ROUNDS as i64);
    every_balance_becomes(&engine, CUSTOMERS, expected, "").await;
}

/// Customers `c0`.. (ids 100,000 + i, contracts 200,000 + i), each with a $100 prepaid commit.
async fn numbered_customers_with_a_commit(engine: &Engine, count: u128) {
    for i in 0..count {
        customer_with_contract_id(
            engine,
            Id::from_u128(100_000 + i),
            Id::from_u128(200_000 + i),
            &format!("c{i}"),
            (None, None),
            vec![fixtures::prepaid_commit(10_000, 10)],
        )
        .await;
    }
}

/// Waits until every numbered customer's balance is `expected` (applying follows the
/// acknowledgement), and fails naming the first that never gets there.
async fn every_balance_becomes(engine: &Engine, count: u128, expected: Money, what: &str) {
    for i in 0..count {
        let customer = Id::from_u128(100_000 + i);
        let mut balance = Money::ZERO;
        for _ in 0..200 {
            balance = engine
                .query(customer, |s| {
                    s.customer.contracts[0].balance(now()).unwrap()
                })
                .await
                .unwrap();
            if balance == expected {
                break;
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(balance, expected, "{what} customer {i}");
    }
}

/// After a restart the partitions read their customers' states into memory in the background,
/// up to `engine.preload_customers_max` in all, and balances stay exact whether a customer's
/// first event comes before or after the preload reached it.
#[actix_rt::test]
async fn after_a_restart_customers_are_preloaded_in_the_background_up_to_the_bound() {
    const CUSTOMERS: u128 = 700;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    numbered_customers_with_a_commit(&engine, CUSTOMERS).await;
    let events: Vec<IngestEvent> = (0..CUSTOMERS)
        .flat_map(|i| calls(&format!("c{i}"), &format!("a-c{i}"), 1))
        .collect();
    for batch in events.chunks(100) {
        engine.ingest(batch.to_vec()).await.unwrap();
    }
    // Everything is covered by the checkpoint: recovery replays nothing and starts with no
    // customer resident.
    engine.checkpoint().await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copy_dir = copy.path().join("data");
    engine.store().copy_to(&copy_dir).unwrap();

    for (bound, preloaded) in [(1_000_000, CUSTOMERS as u64), (100, 100), (0, 0)] {
        let run = tempfile::tempdir().unwrap();
        let run_dir = run.path().join("data");
        tollgate::storage::Store::open(&copy_dir, tollgate::storage::StoreOptions::default())
            .unwrap()
            .copy_to(&run_dir)
            .unwrap();
        let mut config = engine_config(&run_dir, None);
        config.settings.preload_customers_max = bound;
        let restarted = Engine::start(config, Arc::new(SystemClock), None)
            .await
            .unwrap();
        let metrics = restarted.metrics();
        eventually("preload", || {
            metrics.actors_preloaded.load(relaxed) == preloaded
        })
        .await;
        // A customer's next event applies on the state read before, or read now.
        let events: Vec<IngestEvent> = (0..CUSTOMERS)
            .flat_map(|i| calls(&format!("c{i}"), &format!("b-c{i}"), 1))
            .collect();
        for batch in events.chunks(100) {
            restarted.ingest(batch.to_vec()).await.unwrap();
        }
        let expected = Money::from_i64(10_000 - 200);
        every_balance_becomes(&restarted, CUSTOMERS, expected, &format!("bound {bound},")).await;
        // Customers read on their first event are not counted as preloaded: the bound held.
        assert_eq!(
            metrics.actors_preloaded.load(relaxed),
            preloaded,
            "bound {bound}"
        );
        assert_eq!(metrics.actors_resident.load(relaxed), CUSTOMERS as i64);
    }
}

async fn eventually_workflow(engine: &Engine) {
    for _ in 0..200 {
        if !workflows(engine, CUSTOMER).await.is_empty() {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no workflow started");
}

/// An engine on a store that asks `ScriptedFaults`, with the fixture catalog and customer
/// `CUSTOMER` (alias "fs") whose contract has a $5 EXTERNAL spend threshold.
async fn engine_with_faults(
    dir: &std::path::Path,
    receiver: &Receiver,
) -> (Engine, Arc<tollgate::storage::faults::ScriptedFaults>) {
    let faults = tollgate::storage::faults::ScriptedFaults::new();
    let seams = tollgate::actors::Seams {
        storage_faults: Some(faults.clone() as tollgate::storage::faults::Faults),
        ..tollgate::actors::Seams::new(Arc::new(SystemClock))
    };
    let engine = Engine::start_with(engine_config(dir, Some(&receiver.url)), seams)
        .await
        .unwrap();
    for change in fixtures::catalog_changes() {
        engine.change_catalog(change).await.unwrap();
    }
    let spend = fixtures::spend_threshold(500, GateType::External);
    customer_with_contract(&engine, CUSTOMER, "fs", Some(spend), None, vec![]).await;
    // The contract's lifecycle webhooks are delivered before a test arms its faults: their
    // outbox reads and delivery marks would meet the faults meant for the workflow's effects.
    eventually("lifecycle webhooks delivered", || {
        engine.webhook_stats().snapshot().pending == 0
            && !receiver.of_type("contract.create").is_empty()
    })
    .await;
    (engine, faults)
}

/// The checkpointed seq of each partition.
fn checkpoint_seqs(engine: &Engine) -> Vec<Option<u64>> {
    (0..2)
        .map(|p| engine.store().checkpoint(p).unwrap().map(|(seq, _)| seq))
        .collect()
}

/// What a restart would find: an engine started on a consistent copy of `engine`'s data dir.
async fn recover_from_copy(
    engine: &Engine,
    receiver: Option<&Receiver>,
) -> (Engine, tempfile::TempDir) {
    let copy = tempfile::tempdir().unwrap();
    let copy_dir = copy.path().join("data");
    engine.store().copy_to(&copy_dir).unwrap();
    let config = engine_config(&copy_dir, receiver.map(|r| r.url.as_str()));
    let recovered = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    (recovered, copy)
}

#[actix_rt::test]
async fn a_failed_outbox_write_stops_the_engine_and_recovery_recreates_the_effects() {
    use tollgate::actors::EngineError;
    use tollgate::storage::faults::StorageOp;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (engine, faults) = engine_with_faults(dir.path(), &receiver).await;
    let checkpoints = checkpoint_seqs(&engine);

    // The events are durable; writing the workflow's effects to the outbox fails.
    faults.fail_from(StorageOp::OutboxWrite, 0);
    engine.ingest(calls("fs", "a", 5)).await.unwrap();
    eventually("fail-stop", || !engine.is_ready()).await;
    assert!(engine.failure().unwrap().contains("outbox"));
    // Refused as an infrastructure failure (503), never as the caller's fault, and not skipped.
    let refused = engine.ingest(calls("fs", "b", 1)).await;
    assert!(
        matches!(refused, Err(EngineError::Unavailable)),
        "{refused:?}"
    );
    let refused = engine.apply(CUSTOMER, Input::ArchiveCustomer).await;
    assert!(
        matches!(refused, Err(EngineError::Unavailable)),
        "{refused:?}"
    );
    assert!(
        engine.checkpoint().await.is_err(),
        "no checkpoint past a failure"
    );
    for (p, before) in checkpoints.iter().enumerate() {
        let now = engine
            .store()
            .checkpoint(p as u16)
            .unwrap()
            .map(|(seq, _)| seq);
        assert_eq!(&now, before, "partition {p} checkpointed past the failure");
    }
    assert!(
        receiver
            .of_type("payment_gate.threshold_reached")
            .is_empty()
    );

    // What a restart finds on disk: recovery replays the log and re-creates the effects.
    faults.heal();
    let (recovered, _copy) = recover_from_copy(&engine, Some(&receiver)).await;
    eventually("external_initiate after recovery", || {
        receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
    assert_eq!(workflows(&recovered, CUSTOMER).await.len(), 1);
    assert_eq!(
        outstanding(&recovered, CUSTOMER).await,
        Money::from_i64(500)
    );
}

/// Found by the simulation (fail-stop invariant, seed 4): when the webhook actor took up a
/// freshly written effect and its check of the outbox failed, it logged the error and the
/// engine went on accepting work.
#[actix_rt::test]
async fn a_failed_outbox_check_when_a_webhook_is_taken_up_stops_the_engine() {
    use tollgate::storage::faults::StorageOp;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (engine, faults) = engine_with_faults(dir.path(), &receiver).await;
    // The webhook actor's check that the effect is still pending (a read, no write).
    faults.fail_from(StorageOp::OutboxRead, 0);
    engine.ingest(calls("fs", "a", 5)).await.unwrap();
    eventually("fail-stop", || !engine.is_ready()).await;
    let failure = engine.failure().unwrap();
    assert!(failure.contains("enqueued webhook"), "{failure}");
    faults.heal();
    let (recovered, _copy) = recover_from_copy(&engine, Some(&receiver)).await;
    assert_eq!(workflows(&recovered, CUSTOMER).await.len(), 1);
    eventually("external_initiate after recovery", || {
        !receiver
            .of_type("payment_gate.external_initiate")
            .is_empty()
    })
    .await;
}

/// A catalog change's append fails like a partition's (SPEC 2.1): the change may or may not
/// be in the log, so the engine stops and the restart's replay decides; the catalog in memory
/// is not changed meanwhile.
#[actix_rt::test]
async fn a_failed_catalog_append_stops_the_engine() {
    use tollgate::domain::catalog::CatalogChange;
    use tollgate::storage::faults::StorageOp;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (engine, faults) = engine_with_faults(dir.path(), &receiver).await;
    let version = engine.catalog().version();
    faults.fail_from(StorageOp::Append, 0);
    let archived = engine
        .change_catalog(CatalogChange::ArchiveBillableMetric {
            id: fixtures::TOKEN_METRIC,
            at: now(),
        })
        .await;
    assert!(
        matches!(archived, Err(tollgate::actors::EngineError::Storage(_))),
        "{archived:?}"
    );
    assert_eq!(
        engine.catalog().version(),
        version,
        "published a change not in the log"
    );
    assert!(
        !engine.is_ready(),
        "still accepting after a failed catalog append"
    );
    let failure = engine.failure().unwrap();
    assert!(failure.contains("catalog append"), "{failure}");
}

#[actix_rt::test]
async fn a_checkpoint_racing_a_failed_outbox_write_never_covers_the_lost_effects() {
    use tollgate::storage::faults::StorageOp;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (engine, faults) = engine_with_faults(dir.path(), &receiver).await;
    let before = checkpoint_seqs(&engine);
    faults.fail_from(StorageOp::OutboxWrite, 0);
    let (ingested, checkpointed) =
        tokio::join!(engine.ingest(calls("fs", "a", 5)), engine.checkpoint());
    // The store is fenced at the failure: the racing checkpoint cannot be written.
    assert!(ingested.is_ok(), "{ingested:?}");
    let _ = checkpointed;
    eventually("fail-stop", || !engine.is_ready()).await;
    let after = checkpoint_seqs(&engine);
    faults.heal();
    let (recovered, _copy) = recover_from_copy(&engine, Some(&receiver)).await;
    let wfs = workflows(&recovered, CUSTOMER).await;
    assert_eq!(wfs.len(), 1);
    // A checkpoint at seq 0 (an idle partition) covers nothing; none may cover the failed input.
    let seqs = |c: &[Option<u64>]| c.iter().map(|s| s.unwrap_or(0)).collect::<Vec<_>>();
    assert_eq!(seqs(&before), seqs(&after), "checkpointed past the failure");
    eventually("external_initiate after recovery", || {
        receiver.of_type("payment_gate.external_initiate").len() == 1
    })
    .await;
}

#[actix_rt::test]
async fn a_tax_amount_beyond_the_bound_is_refused_so_usage_is_never_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_catalog(dir.path(), None).await;
    let mut profile = fixtures::profile(CUSTOMER, false);
    profile.ingest_aliases = vec!["tx".into()];
    engine.create_customer(profile).await.unwrap();
    let mut spend = fixtures::spend_threshold(500, GateType::External);
    spend.gate.tax_type = tollgate::domain::gate::TaxType::Precalculated;
    let tax = Money::parse("7.922816251426433759354395033e28").unwrap();
    spend.gate.precalculated_tax = Some((tax, None));
    let mut spec = fixtures::contract(CONTRACT);
    spec.starting_at = now().month_start();
    spec.ending_before = None;
    spec.spend_threshold = Some(spend);
    let refused = engine.apply(CUSTOMER, Input::create_contract(spec)).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("tax_amount"), "{message}");
    engine.ingest(calls("tx", "r", 10)).await.unwrap();
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(engine.quarantined(None, 100).unwrap().is_empty());
}

/// A copy of `engine`'s data dir with `customer`'s written state changed by `edit` (a bug's
/// corruption, or the repair an upgrade brings), started as a restart would start it.
async fn restart_with_state_edit(
    engine: &Engine,
    receiver: &Receiver,
    customer: Id,
    edit: impl FnOnce(&mut tollgate::actors::entry::PersistedCustomer),
) -> (Engine, tempfile::TempDir) {
    use tollgate::actors::entry::{STATE_VERSION, state_key};
    let copy = tempfile::tempdir().unwrap();
    let copy_dir = copy.path().join("data");
    engine.store().copy_to(&copy_dir).unwrap();
    {
        let store =
            tollgate::storage::Store::open(&copy_dir, tollgate::storage::StoreOptions::default())
                .unwrap();
        let bytes = store.meta_get(&state_key(customer)).unwrap().unwrap();
        let mut state = tollgate::storage::decode(STATE_VERSION, &bytes).unwrap();
        edit(&mut state);
        let bytes = tollgate::storage::encode(STATE_VERSION, &state).unwrap();
        store
            .meta_write_batch(&[(state_key(customer), bytes)], &[])
            .unwrap();
    }
    let config = engine_config(&copy_dir, Some(&receiver.url));
    let restarted = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    (restarted, copy)
}

async fn token_charge(engine: &Engine) -> Money {
    engine
        .query(CUSTOMER, |s| {
            s.customer.contracts[0].periods[0].lines[0].charged
        })
        .await
        .unwrap()
}

fn tokens(txn: &str, amount: &str) -> Vec<IngestEvent> {
    vec![IngestEvent {
        customer_key: "tk".into(),
        event: fixtures::llm_tokens(txn, now(), amount),
    }]
}

#[actix_rt::test]
async fn a_quarantined_input_is_reapplied_after_the_repair_once_across_restarts() {
    use tollgate::actors::EngineError;
    use tollgate::domain::Rejection;
    use tollgate::domain::customer::QuarantineDecision as Decision;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let engine = engine_with_catalog(dir.path(), Some(&receiver)).await;
    let commit = fixtures::prepaid_commit(10_000, 1);
    customer_with_contract(&engine, CUSTOMER, "tk", None, None, vec![commit]).await;
    engine.ingest(tokens("t1", "10")).await.unwrap();
    engine.checkpoint().await.unwrap();
    let charged = token_charge(&engine).await;
    assert!(charged.is_positive());

    // A bug (here: a corrupt written state) makes the customer's next decrease panic.
    let (broken, _broken_dir) = restart_with_state_edit(&engine, &receiver, CUSTOMER, |s| {
        s.customer.contracts[0].periods[0].lines[0].draws[0].commit = 99;
    })
    .await;
    broken.ingest(tokens("t2", "-4")).await.unwrap();
    eventually("quarantined", || {
        broken.quarantined(None, 10).unwrap().len() == 1
    })
    .await;
    let key = broken.quarantined(None, 10).unwrap()[0].key();
    assert_eq!(token_charge(&broken).await, charged, "nothing half-applied");
    let again = broken.decide_quarantined(&key, Decision::Reapply).await;
    assert!(
        matches!(
            again,
            Err(EngineError::Rejected(Rejection::StillFailing(_)))
        ),
        "{again:?}"
    );
    assert_eq!(broken.quarantined(None, 10).unwrap().len(), 1, "still kept");
    broken.checkpoint().await.unwrap();

    // The upgrade repairs it; the operator re-applies the decrease: it applies once.
    let (fixed, _fixed_dir) = restart_with_state_edit(&broken, &receiver, CUSTOMER, |s| {
        s.customer.contracts[0].periods[0].lines[0].draws[0].commit = 0;
    })
    .await;
    assert_eq!(token_charge(&fixed).await, charged);
    fixed
        .decide_quarantined(&key, Decision::Reapply)
        .await
        .unwrap()
        .expect("the entry exists");
    let reapplied = token_charge(&fixed).await;
    assert!(reapplied < charged, "{reapplied:?} < {charged:?}");
    assert!(fixed.quarantined(None, 10).unwrap().is_empty());
    let twice = fixed.decide_quarantined(&key, Decision::Reapply).await;
    assert!(
        matches!(twice, Err(EngineError::Rejected(Rejection::NotQuarantined))),
        "decided already: {twice:?}"
    );
    let decisions = fixed.quarantine_decisions(None, 10).unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].entry.key(), key);

    // A crash now (no checkpoint since): replay decides the same way, once.
    let (replayed, _replayed_dir) = recover_from_copy(&fixed, Some(&receiver)).await;
    assert_eq!(token_charge(&replayed).await, reapplied);
    assert!(replayed.quarantined(None, 10).unwrap().is_empty());
    let discard = Decision::Discard {
        reason: "late".into(),
    };
    assert!(matches!(
        replayed.decide_quarantined(&key, discard).await,
        Err(EngineError::Rejected(Rejection::NotQuarantined))
    ));
}

/// A read that reaches a customer's actor while housekeeping evicts it is still answered: an
/// actor with a query in flight is not evicted (found by the simulation: the query met a
/// stopped actor and the API answered 500).
#[actix_rt::test]
async fn queries_racing_eviction_are_always_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), None);
    config.settings.evict_idle_ms = 0;
    config.settings.housekeeping_ms = 1;
    config.settings.partitions = 1;
    let engine = started_with_catalog(config).await;
    customer_with_contract(
        &engine,
        CUSTOMER,
        "acme",
        None,
        None,
        vec![fixtures::prepaid_commit(10_000, 10)],
    )
    .await;
    engine.checkpoint().await.unwrap();
    let mut failures = Vec::new();
    for i in 0..3_000 {
        if i % 10 == 0 {
            // Idle long enough for housekeeping to evict.
            actix_rt::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        match engine.query(CUSTOMER, |s| s.customer.contracts.len()).await {
            Ok(contracts) => assert_eq!(contracts, 1),
            Err(error) => failures.push(error.to_string()),
        }
    }
    assert!(
        engine
            .metrics()
            .actors_evicted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 10,
        "the test must race evictions"
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );
}

/// The invoice -> customer index is staged by the customer actor and written in batches: an
/// invoice is found the moment the input that opened it is applied, and every checkpoint
/// writes what it covers before its record (replay starts after the record and would not
/// re-create it).
#[actix_rt::test]
async fn a_checkpoint_writes_the_invoice_index_of_what_it_covers() {
    use tollgate::actors::entry::invoice_key;
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), None);
    // No batch write by housekeeping during the test: only the checkpoint writes.
    config.settings.housekeeping_ms = 3_600_000;
    let engine = started_with_catalog(config).await;
    customer_with_contract(&engine, CUSTOMER, "acme", None, None, vec![]).await;
    engine.ingest(calls("acme", "k", 3)).await.unwrap();
    let invoice = engine
        .query(CUSTOMER, |s| s.customer.contracts[0].periods[0].invoice_id)
        .await
        .unwrap();
    assert_eq!(engine.invoice_customer(invoice).unwrap(), Some(CUSTOMER));
    assert_eq!(
        engine.store().meta_get(&invoice_key(invoice)).unwrap(),
        None,
        "staged, not written yet"
    );
    engine.checkpoint().await.unwrap();
    assert_eq!(
        engine.store().meta_get(&invoice_key(invoice)).unwrap(),
        Some(CUSTOMER.as_bytes().to_vec())
    );
    let (recovered, _copy) = recover_from_copy(&engine, None).await;
    assert_eq!(recovered.invoice_customer(invoice).unwrap(), Some(CUSTOMER));
}

/// The workflows the `wfs/` index holds in `state`.
fn indexed_in(engine: &Engine, state: tollgate::domain::gate::WorkflowState) -> Vec<Vec<u8>> {
    let prefix = tollgate::actors::entry::workflow_state_prefix(state);
    engine
        .store()
        .meta_scan_prefix(&prefix)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key[prefix.len()..].to_vec())
        .collect()
}

#[actix_rt::test]
async fn the_index_of_workflows_in_flight_is_built_once_for_a_data_dir_without_it() {
    use tollgate::actors::entry::WORKFLOW_STATE_INDEX_MARK;
    use tollgate::domain::gate::WorkflowState;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let engine = engine_with_catalog(dir.path(), Some(&receiver)).await;
    cross_external_threshold(&engine, &receiver).await;
    let workflow = workflows(&engine, CUSTOMER).await[0].id;
    let awaiting = || vec![workflow.as_bytes().to_vec()];
    assert_eq!(
        indexed_in(&engine, WorkflowState::AwaitingExternal),
        awaiting()
    );
    // A copy as an older version left it: its state written, no index and no mark.
    engine.checkpoint().await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copy_dir = copy.path().join("data");
    engine.store().copy_to(&copy_dir).unwrap();
    {
        let store =
            tollgate::storage::Store::open(&copy_dir, tollgate::storage::StoreOptions::default())
                .unwrap();
        let mut deletes: Vec<Vec<u8>> = store
            .meta_scan_prefix(b"wfs/")
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(deletes.len(), 1);
        deletes.push(WORKFLOW_STATE_INDEX_MARK.to_vec());
        store.meta_write_batch(&[], &deletes).unwrap();
    }
    let config = engine_config(&copy_dir, Some(&receiver.url));
    let restarted = Engine::start(config, Arc::new(SystemClock), None)
        .await
        .unwrap();
    assert_eq!(
        indexed_in(&restarted, WorkflowState::AwaitingExternal),
        awaiting(),
        "built from the written state"
    );
    assert!(
        restarted
            .store()
            .meta_get(WORKFLOW_STATE_INDEX_MARK)
            .unwrap()
            .is_some()
    );
    // The index then follows the workflow: paid, it leaves.
    restarted
        .apply(
            CUSTOMER,
            Input::PaymentOutcome(PaymentOutcome {
                workflow_id: workflow,
                source: OutcomeSource::External,
                result: PaymentResult::Paid,
                payment_intent_id: None,
            }),
        )
        .await
        .unwrap();
    assert!(indexed_in(&restarted, WorkflowState::AwaitingExternal).is_empty());
    // The original data dir is untouched: its index still holds the workflow.
    assert_eq!(
        indexed_in(&engine, WorkflowState::AwaitingExternal),
        awaiting()
    );
}

/// A usage event that fails mid-apply has its customer's state rebuilt from disk and the log;
/// the rebuild replays the customer's earlier alias changes into its state only, never into
/// the registry, where an alias it gave away belongs to another customer by now (found by the
/// simulation: the moved alias named nobody afterwards).
#[actix_rt::test]
async fn rebuilding_a_state_after_a_failed_event_leaves_the_aliases_as_they_are() {
    use tollgate::actors::{Seams, shared::ApplyBug};
    let dir = tempfile::tempdir().unwrap();
    let bug: ApplyBug = Arc::new(
        |input: &Input| matches!(input, Input::RecordUsage(e) if e.transaction_id.starts_with("poison-")),
    );
    let seams = Seams {
        apply_bug: Some(bug),
        ..Seams::new(Arc::new(SystemClock))
    };
    let engine = Engine::start_with(engine_config(dir.path(), None), seams)
        .await
        .unwrap();
    for change in fixtures::catalog_changes() {
        engine.change_catalog(change).await.unwrap();
    }
    let other = Id::from_u128(0x0b0b);
    customer_with_contract(&engine, CUSTOMER, "a", None, None, vec![]).await;
    customer_with_contract_id(
        &engine,
        other,
        Id::from_u128(0x0c0c),
        "b",
        (None, None),
        vec![],
    )
    .await;
    engine.checkpoint().await.unwrap();
    // After the checkpoint CUSTOMER takes alias "x", then gives it to the other customer.
    for (customer, aliases) in [
        (CUSTOMER, vec!["a", "x"]),
        (CUSTOMER, vec!["a"]),
        (other, vec!["b", "x"]),
    ] {
        let aliases = aliases.into_iter().map(str::to_owned).collect();
        engine.set_ingest_aliases(customer, aliases).await.unwrap();
    }
    assert_eq!(engine.alias_owner("x"), Some(other));
    // CUSTOMER's next event fails mid-apply: quarantined, its state rebuilt by replaying its
    // inputs since the checkpoint (taking "x", giving it up).
    engine
        .ingest(vec![IngestEvent {
            customer_key: "a".into(),
            event: fixtures::api_call("poison-1", now()),
        }])
        .await
        .unwrap();
    eventually("quarantined", || {
        engine.quarantined(None, 10).unwrap().len() == 1
    })
    .await;
    engine.ingest(calls("a", "after", 1)).await.unwrap();
    assert_eq!(engine.alias_owner("x"), Some(other), "the moved alias");
    assert_eq!(engine.alias_owner("a"), Some(CUSTOMER));
    assert_eq!(engine.alias_owner("b"), Some(other));
    let stored = engine
        .store()
        .meta_get(&tollgate::actors::entry::alias_key("x"))
        .unwrap();
    assert_eq!(stored, Some(other.as_bytes().to_vec()), "and in meta");
    let aliases = engine
        .query(CUSTOMER, |s| {
            s.customer.profile.clone().unwrap().ingest_aliases
        })
        .await
        .unwrap();
    assert_eq!(aliases, ["a"]);
}
