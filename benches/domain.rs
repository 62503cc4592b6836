//! Domain core alone: rate + drawdown + threshold check per usage event (goal P3 of
//! PERFORMANCE.md: >= 5M events/s on one core).
//!
//! `cargo bench --bench domain`; figures are recorded in BENCHMARKS.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;
use tollgate::domain::alerts::{Alert, AlertType};
use tollgate::domain::catalog::CatalogChange;
use tollgate::domain::customer::{Ctx, Customer, Input};
use tollgate::domain::fixtures::{self, CONTRACT, CUSTOMER, T0};
use tollgate::domain::gate::GateType;
use tollgate::domain::ids::MS_PER_DAY;
use tollgate::domain::{Limits, Timestamp};

const EVENTS: usize = 10_000;

/// A customer with both thresholds and three commits/credits large enough never to run dry.
fn customer(catalog: &tollgate::domain::Catalog, limits: &Limits, at: Timestamp) -> Customer {
    let ctx = Ctx {
        at,
        catalog,
        catalog_version: catalog.version(),
        limits,
    };
    let mut customer = Customer::default();
    customer
        .apply(
            &Input::CreateCustomer(Box::new(fixtures::profile(CUSTOMER, true))),
            &ctx,
        )
        .unwrap();
    let mut spec = fixtures::contract(CONTRACT);
    spec.commits = vec![
        fixtures::prepaid_commit(1_000_000_000_000, 10),
        fixtures::prepaid_commit(1_000_000_000_000, 20),
    ];
    spec.credits = vec![fixtures::credit(1_000_000, 5)];
    spec.spend_threshold = Some(fixtures::spend_threshold(1_000_000, GateType::Stripe));
    spec.prepaid_threshold = Some(fixtures::prepaid_threshold(500, 5_000, GateType::Stripe));
    customer
        .apply(&Input::CreateContract(Box::new(spec)), &ctx)
        .unwrap();
    customer
}

fn bench_apply(c: &mut Criterion) {
    let catalog = fixtures::catalog();
    let limits = Limits::default();
    let at = T0.plus_ms(MS_PER_DAY);
    let ctx = Ctx {
        at,
        catalog: &catalog,
        catalog_version: catalog.version(),
        limits: &limits,
    };
    let mut group = c.benchmark_group("domain_apply");
    group.throughput(Throughput::Elements(EVENTS as u64));

    let calls: Vec<Input> = (0..EVENTS)
        .map(|i| Input::RecordUsage(fixtures::api_call(&format!("tx{i}"), at.plus_ms(i as i64))))
        .collect();
    let mut state = customer(&catalog, &limits, at);
    group.bench_function("count_flat_rate", |b| {
        b.iter(|| {
            for input in &calls {
                state.apply(input, &ctx).unwrap();
            }
        })
    });

    let tokens: Vec<Input> = (0..EVENTS)
        .map(|i| {
            Input::RecordUsage(fixtures::llm_tokens(
                &format!("tk{i}"),
                at.plus_ms(i as i64),
                "12.5",
            ))
        })
        .collect();
    let mut state = customer(&catalog, &limits, at);
    group.bench_function("sum_tiered_rate", |b| {
        b.iter(|| {
            for input in &tokens {
                state.apply(input, &ctx).unwrap();
            }
        })
    });

    // Crossings: a $5 spend threshold with a NONE gate fires every 5 calls, creating a
    // workflow, an invoice and a commit each time (a fresh customer per batch).
    group.bench_function("count_with_threshold_crossings", |b| {
        b.iter_batched_ref(
            || {
                let ctx = Ctx {
                    at,
                    catalog: &catalog,
                    catalog_version: catalog.version(),
                    limits: &limits,
                };
                let mut customer = Customer::default();
                customer
                    .apply(
                        &Input::CreateCustomer(Box::new(fixtures::profile(CUSTOMER, false))),
                        &ctx,
                    )
                    .unwrap();
                let mut spec = fixtures::contract(CONTRACT);
                spec.spend_threshold = Some(fixtures::spend_threshold(500, GateType::None));
                customer
                    .apply(&Input::CreateContract(Box::new(spec)), &ctx)
                    .unwrap();
                customer
            },
            |state| {
                for input in &calls {
                    state.apply(input, &ctx).unwrap();
                }
            },
            BatchSize::LargeInput,
        )
    });
    // The same calls with three alerts in force for every customer (a balance, a spend and a
    // usage alert, never crossed): what evaluating alerts on every event costs.
    let mut alerting = catalog.clone();
    for (i, alert_type) in [
        AlertType::LowRemainingContractCreditAndCommitBalance,
        AlertType::SpendThreshold,
        AlertType::UsageThreshold,
    ]
    .into_iter()
    .enumerate()
    {
        let alert = Alert {
            id: tollgate::domain::Id::from_u128(0x9000 + i as u128),
            alert_type,
            name: format!("alert {i}"),
            threshold: match alert_type {
                AlertType::LowRemainingContractCreditAndCommitBalance => Decimal::ONE,
                _ => Decimal::from(1_000_000_000_000_i64),
            },
            customer_id: None,
            credit_type_id: tollgate::domain::money::CreditType::usd_cents().id,
            billable_metric_id: (alert_type == AlertType::UsageThreshold)
                .then_some(fixtures::API_METRIC),
            invoice_types: Vec::new(),
            credit_grant_type_filters: Vec::new(),
            evaluate_on_create: true,
            uniqueness_key: None,
            key_released: false,
            created_at: T0,
            archived_at: None,
            created_in: 0,
            archived_in: None,
        };
        alerting
            .apply(CatalogChange::CreateAlert(alert))
            .expect("a valid alert");
    }
    let alert_ctx = Ctx {
        at,
        catalog: &alerting,
        catalog_version: alerting.version(),
        limits: &limits,
    };
    let mut state = customer(&alerting, &limits, at);
    group.bench_function("count_flat_rate_three_alerts", |b| {
        b.iter(|| {
            for input in &calls {
                state.apply(input, &alert_ctx).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
