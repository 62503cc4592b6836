//! A small, realistic catalog and contract for tests and benchmarks: one COUNT metric
//! (`api_call` events), one SUM metric (`tokens` of `llm` events), their USAGE products at flat
//! and tiered rates in USD cents, and a FIXED product that names commits.
//!
//! Pure data builders; used by unit tests, property tests, benches and engine tests so that
//! they all exercise the same shapes.

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use super::catalog::{
    Aggregation, BillableMetric, Catalog, CatalogChange, EventTypeFilter, Price, Product,
    ProductKind, Rate, RateCard, Tier,
};
use super::contract::{CommitKind, Discount, ThresholdCommit, ThresholdConfig, ThresholdKind};
use super::customer::{CommitSpec, ContractSpec, CustomerProfile, StripeBilling};
use super::gate::{GateType, PaymentGateConfig, StripeConfig, StripePaymentType};
use super::ids::{Id, Timestamp};
use super::money::{CreditType, Money};
use super::usage::UsageEvent;

pub const API_METRIC: Id = Id::from_u128(0x1001);
pub const TOKEN_METRIC: Id = Id::from_u128(0x1002);
pub const API_PRODUCT: Id = Id::from_u128(0x2001);
pub const TOKEN_PRODUCT: Id = Id::from_u128(0x2002);
pub const COMMIT_PRODUCT: Id = Id::from_u128(0x2003);
pub const RATE_CARD: Id = Id::from_u128(0x3001);
pub const CUSTOMER: Id = Id::from_u128(0x4001);
pub const CONTRACT: Id = Id::from_u128(0x5001);
/// A custom pricing unit, "credits", worth [`CREDIT_WORTH_CENTS`] cents each on
/// [`CREDITS_CARD`].
pub const CREDITS: Id = Id::from_u128(0x6001);
/// A rate card pricing `api_call` in credits (100 credits a call) and tokens as the fixture
/// card does (USD cents).
pub const CREDITS_CARD: Id = Id::from_u128(0x3002);
pub const CREDIT_WORTH_CENTS: i64 = 2;

/// 2025-01-01T00:00:00Z, the start of fixture contracts.
pub const T0: Timestamp = Timestamp(1_735_689_600_000);

/// The fixture catalog: `api_call` costs 100 cents (flat); `tokens` are tiered (2 cents each for
/// the first 1000, then 1 cent).
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for change in catalog_changes() {
        catalog.apply(change).expect("fixture catalog is valid");
    }
    catalog
}

/// The changes that build [`catalog`], in order (engine tests apply them through the log).
pub fn catalog_changes() -> Vec<CatalogChange> {
    vec![
        CatalogChange::CreateBillableMetric(BillableMetric {
            id: API_METRIC,
            name: "API calls".into(),
            aggregation: Aggregation::Count,
            aggregation_key: None,
            event_type_filter: EventTypeFilter {
                in_values: Some(vec!["api_call".into()]),
                not_in_values: None,
            },
            property_filters: vec![],
            group_keys: vec![],
            archived_at: None,
        }),
        CatalogChange::CreateBillableMetric(BillableMetric {
            id: TOKEN_METRIC,
            name: "Tokens".into(),
            aggregation: Aggregation::Sum,
            aggregation_key: Some("tokens".into()),
            event_type_filter: EventTypeFilter {
                in_values: Some(vec!["llm".into()]),
                not_in_values: None,
            },
            property_filters: vec![],
            group_keys: vec![],
            archived_at: None,
        }),
        CatalogChange::CreateProduct(usage_product(API_PRODUCT, "API calls", API_METRIC)),
        CatalogChange::CreateProduct(usage_product(TOKEN_PRODUCT, "Tokens", TOKEN_METRIC)),
        CatalogChange::CreateProduct(Product {
            id: COMMIT_PRODUCT,
            name: "Prepaid balance".into(),
            kind: ProductKind::Fixed,
            tags: vec![],
            created_at: Timestamp(0),
            archived_at: None,
        }),
        CatalogChange::CreateRateCard(RateCard {
            id: RATE_CARD,
            name: "List prices".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: FxHashMap::default(),
            conversions_added_in: Vec::new(),
            conversions: Vec::new(),
        }),
        CatalogChange::AddRates {
            rate_card_id: RATE_CARD,
            rates: vec![
                rate(API_PRODUCT, Price::Flat(Money::from_i64(100))),
                rate(
                    TOKEN_PRODUCT,
                    Price::Tiered(vec![
                        Tier {
                            price: Money::from_i64(2),
                            size: Some(Decimal::from(1000)),
                        },
                        Tier {
                            price: Money::from_i64(1),
                            size: None,
                        },
                    ]),
                ),
            ],
        },
    ]
}

/// The changes that add [`CREDITS`] and [`CREDITS_CARD`] to [`catalog_changes`]'s catalog.
pub fn credits_catalog_changes() -> Vec<CatalogChange> {
    let mut api = rate(API_PRODUCT, Price::Flat(Money::from_i64(100)));
    api.credit_type_id = CREDITS;
    let tokens = catalog_changes()
        .into_iter()
        .find_map(|change| match change {
            CatalogChange::AddRates { rates, .. } => {
                rates.into_iter().find(|r| r.product_id == TOKEN_PRODUCT)
            }
            _ => None,
        })
        .expect("the fixture card prices tokens");
    vec![
        CatalogChange::CreateCreditType(CreditType {
            id: CREDITS,
            name: "credits".into(),
            currency: None,
            unit: super::money::CreditUnit::Custom,
        }),
        CatalogChange::CreateRateCard(RateCard {
            id: CREDITS_CARD,
            name: "Prices in credits".into(),
            description: None,
            fiat_credit_type: CreditType::usd_cents(),
            aliases: vec![],
            created_at: Timestamp(0),
            rates: FxHashMap::default(),
            conversions_added_in: Vec::new(),
            conversions: vec![super::money::Conversion {
                credit_type_id: CREDITS,
                fiat_per_unit: Decimal::from(CREDIT_WORTH_CENTS),
            }],
        }),
        CatalogChange::AddRates {
            rate_card_id: CREDITS_CARD,
            rates: vec![api, tokens],
        },
    ]
}

fn usage_product(id: Id, name: &str, metric: Id) -> Product {
    Product {
        id,
        name: name.into(),
        kind: ProductKind::Usage {
            billable_metric_id: metric,
        },
        tags: vec![],
        created_at: Timestamp(0),
        archived_at: None,
    }
}

fn rate(product_id: Id, price: Price) -> Rate {
    Rate {
        product_id,
        price,
        entitled: true,
        starting_at: Timestamp(0),
        ending_before: None,
        credit_type_id: CreditType::usd_cents().id,
        added_in_version: 0,
    }
}

pub fn profile(id: Id, with_stripe: bool) -> CustomerProfile {
    CustomerProfile {
        id,
        name: format!("customer {id}"),
        external_id: None,
        ingest_aliases: vec![],
        custom_fields: vec![],
        stripe: with_stripe.then(|| StripeBilling {
            configuration_id: Id::derive(id, "stripe", 0),
            stripe_customer_id: "cus_test".into(),
            collection_method: "charge_automatically".into(),
        }),
        created_at: T0,
        archived_at: None,
    }
}

pub fn gate(gate_type: GateType) -> PaymentGateConfig {
    PaymentGateConfig {
        gate_type,
        stripe: (gate_type == GateType::Stripe).then(|| StripeConfig {
            payment_type: StripePaymentType::PaymentIntent,
            invoice_metadata: vec![],
            on_session_payment: false,
        }),
        ..PaymentGateConfig::none()
    }
}

pub fn threshold_commit() -> ThresholdCommit {
    ThresholdCommit {
        product_id: COMMIT_PRODUCT,
        name: Some("Threshold charge".into()),
        description: None,
        priority: None,
        applicable_product_ids: vec![],
        applicable_product_tags: vec![],
    }
}

/// A spend threshold of `threshold` cents.
pub fn spend_threshold(threshold: i64, gate_type: GateType) -> ThresholdConfig {
    ThresholdConfig {
        kind: ThresholdKind::Spend,
        commit: threshold_commit(),
        is_enabled: true,
        gate: gate(gate_type),
        threshold_amount: Money::from_i64(threshold),
        recharge_to_amount: None,
        discount: None,
        triggers: 0,
        limits: None,
        hold: None,
        holds: 0,
        balance_specifiers: Vec::new(),
        credit_type: None,
    }
}

/// A prepaid balance threshold: recharge to `recharge_to` cents when B <= `threshold` cents.
pub fn prepaid_threshold(threshold: i64, recharge_to: i64, gate_type: GateType) -> ThresholdConfig {
    ThresholdConfig {
        kind: ThresholdKind::PrepaidBalance,
        commit: threshold_commit(),
        is_enabled: true,
        gate: gate(gate_type),
        threshold_amount: Money::from_i64(threshold),
        recharge_to_amount: Some(Money::from_i64(recharge_to)),
        discount: None,
        triggers: 0,
        limits: None,
        hold: None,
        holds: 0,
        balance_specifiers: Vec::new(),
        credit_type: None,
    }
}

pub fn discount(fraction: &str) -> Discount {
    Discount {
        payment_fraction: super::money::parse_exact_decimal(fraction).expect("fixture fraction"),
    }
}

/// A prepaid commit (paid, one invoice) of `amount` cents for the year from [`T0`].
pub fn prepaid_commit(amount: i64, priority: i64) -> CommitSpec {
    CommitSpec {
        kind: CommitKind::Prepaid,
        product_id: COMMIT_PRODUCT,
        name: None,
        description: None,
        priority: Some(Decimal::from(priority)),
        applicable_product_ids: vec![],
        applicable_product_tags: vec![],
        access_schedule: vec![(Money::from_i64(amount), T0, year_end())],
        invoice_schedule: vec![(T0, Money::from_i64(amount), Decimal::ONE)],
        payment_gate: None,
        custom_fields: Vec::new(),
        credit_type: None,
    }
}

/// A free credit of `amount` cents for the year from [`T0`].
pub fn credit(amount: i64, priority: i64) -> CommitSpec {
    CommitSpec {
        kind: CommitKind::Credit,
        invoice_schedule: vec![],
        ..prepaid_commit(amount, priority)
    }
}

pub fn year_end() -> Timestamp {
    T0.plus_ms(365 * super::ids::MS_PER_DAY)
}

/// A one-year contract on the fixture rate card.
pub fn contract(id: Id) -> ContractSpec {
    ContractSpec {
        id,
        rate_card_id: RATE_CARD,
        name: Some("Fixture contract".into()),
        starting_at: T0,
        ending_before: Some(year_end()),
        uniqueness_key: None,
        commits: vec![],
        credits: vec![],
        spend_threshold: None,
        prepaid_threshold: None,
    }
}

pub fn api_call(transaction_id: &str, at: Timestamp) -> UsageEvent {
    UsageEvent {
        transaction_id: transaction_id.into(),
        event_type: "api_call".into(),
        timestamp: at,
        properties: vec![],
    }
}

pub fn llm_tokens(transaction_id: &str, at: Timestamp, tokens: &str) -> UsageEvent {
    UsageEvent {
        transaction_id: transaction_id.into(),
        event_type: "llm".into(),
        timestamp: at,
        properties: vec![("tokens".into(), tokens.into())],
    }
}

/// A STRIPE charge of $15.00 for a spend workflow (PaymentIntent), as the payment actor gets it.
pub fn payment_request(workflow_id: Id) -> super::effects::PaymentRequest {
    super::effects::PaymentRequest {
        workflow_id,
        workflow_type: super::gate::WorkflowKind::Spend,
        customer_id: Id::from_key("test-customer", "1"),
        contract_id: Id::from_key("test-contract", "1"),
        invoice_id: Id::from_key("test-invoice", "1"),
        commit_id: Id::from_key("test-commit", "1"),
        amount: Money::from_i64(1_500),
        credit_type: CreditType::usd_cents(),
        stripe: StripeConfig {
            payment_type: StripePaymentType::PaymentIntent,
            invoice_metadata: Vec::new(),
            on_session_payment: false,
        },
        stripe_customer_id: "cus_test".to_owned(),
        description: "test".to_owned(),
        action: super::effects::PaymentAction::Charge,
        object_id: None,
    }
}
