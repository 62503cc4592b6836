//! Contracts: `POST /v1/contracts/create`, `/v1/contracts/get|list`, `/v2/contracts/get|list`,
//! `/v2/contracts/edit` (threshold configurations, commits and credits, payment-gated commits),
//! and the external payment-gate release.

use super::openapi::Routes;
use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::fields::Obj;
use super::render;
use super::wire::{self, parse_enum};
use crate::actors::EngineError;
use crate::domain::contract::{
    CommitKind, Contract, Discount, ThresholdCommit, ThresholdConfig, ThresholdKind,
};
use crate::domain::customer::{CommitSpec, ContractEdit, ContractSpec, Input, ThresholdUpdate};
use crate::domain::gate::{
    GateType, OutcomeSource, PaymentGateConfig, PaymentOutcome, PaymentResult, StripeConfig,
    StripePaymentType, TaxType, WorkflowState,
};
use crate::domain::{Id, Money, Rejection, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/contracts/create",
        "createContract",
        "Create a contract (commits, credits, threshold configurations)",
        create,
    );
    routes.post(
        "/v1/contracts/get",
        "getContractV1",
        "Get a contract (v1 shape)",
        get_v1,
    );
    routes.post(
        "/v1/contracts/list",
        "listContractsV1",
        "List a customer's contracts (v1 shape, not paginated)",
        list_v1,
    );
    routes.post(
        "/v2/contracts/get",
        "getContractV2",
        "Get a contract (v2 shape)",
        get_v2,
    );
    routes.post(
        "/v2/contracts/list",
        "listContractsV2",
        "List a customer's contracts (v2 shape, not paginated)",
        list_v2,
    );
    routes.post(
        "/v2/contracts/edit",
        "editContract",
        "Edit a contract: threshold configurations, commits (payment-gated), credits",
        edit,
    );
    routes.post(
        "/v1/contracts/commits/threshold-billing/release",
        "releaseThresholdBillingWorkflow",
        "Report an EXTERNAL gate's payment outcome (paid or failed)",
        release,
    );
}

/// A new random id for an object created at the edge (recorded in the log with its input).
pub fn new_id() -> Id {
    Id::parse(&uuid::Uuid::new_v4().to_string()).expect("a v4 uuid parses")
}

/// The id of an object a request creates: derived from its `Idempotency-Key` and body when it
/// has a key, random otherwise. A retry that runs again because its first answer could not be
/// stored (a storage failure after the input reached the log) then names the same object and is
/// refused as a duplicate (409) instead of creating a second one; a key reused after its 24 h
/// window with another body creates another object.
pub fn edge_id(request: &HttpRequest, body: &[u8], kind: &str) -> Id {
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok());
    match key {
        Some(key) => {
            let body_hash = xxhash_rust::xxh3::xxh3_128(body);
            let name = format!("{}\0{key}\0{body_hash:032x}", request.path());
            Id::from_key(&format!("idempotency/{kind}"), &name)
        }
        None => new_id(),
    }
}

const GATES: [(&str, GateType); 3] = [
    ("NONE", GateType::None),
    ("EXTERNAL", GateType::External),
    ("STRIPE", GateType::Stripe),
];

const TAX_TYPES: [(&str, TaxType); 4] = [
    ("NONE", TaxType::None),
    ("STRIPE", TaxType::Stripe),
    ("ANROK", TaxType::Anrok),
    ("PRECALCULATED", TaxType::Precalculated),
];

fn payment_gate(obj: &Obj<'_>) -> ApiResult<PaymentGateConfig> {
    let gate_type = parse_enum(
        &obj.path("payment_gate_type"),
        obj.req_str("payment_gate_type")?,
        &GATES,
    )?;
    let tax_type = match obj.str("tax_type")? {
        Some(text) => parse_enum(&obj.path("tax_type"), text, &TAX_TYPES)?,
        None => TaxType::None,
    };
    let stripe = match obj.obj("stripe_config")? {
        Some(config) => {
            let payment_type = match config.str("payment_type")? {
                Some(text) if !text.is_empty() => parse_enum(
                    &config.path("payment_type"),
                    text,
                    &[
                        ("INVOICE", StripePaymentType::Invoice),
                        ("PAYMENT_INTENT", StripePaymentType::PaymentIntent),
                    ],
                )?,
                _ => StripePaymentType::Invoice,
            };
            Some(StripeConfig {
                payment_type,
                invoice_metadata: config.string_map("invoice_metadata")?,
                on_session_payment: config.bool("on_session_payment")?.unwrap_or(false),
            })
        }
        None if gate_type == GateType::Stripe => Some(StripeConfig {
            payment_type: StripePaymentType::Invoice,
            invoice_metadata: Vec::new(),
            on_session_payment: false,
        }),
        None => None,
    };
    let precalculated_tax = match obj.obj("precalculated_tax_config")? {
        Some(tax) => Some((
            tax.req_money("tax_amount")?,
            tax.str("tax_name")?.map(str::to_owned),
        )),
        None => None,
    };
    Ok(PaymentGateConfig {
        gate_type,
        tax_type,
        stripe,
        precalculated_tax,
    })
}

fn discount(obj: &Obj<'_>) -> ApiResult<Option<Discount>> {
    // The guides also spell it `discount_config: {fraction}`; accept both.
    let config = match (
        obj.obj("discount_configuration")?,
        obj.obj("discount_config")?,
    ) {
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return Ok(None),
    };
    config.unsupported("cap")?;
    let fraction = match config.decimal("payment_fraction")? {
        Some(f) => f,
        None => config.decimal("fraction")?.ok_or_else(|| {
            ApiError::BadRequest(format!("{} is required", config.path("payment_fraction")))
        })?,
    };
    Ok(Some(Discount {
        payment_fraction: fraction,
    }))
}

fn threshold_config(obj: &Obj<'_>, kind: ThresholdKind) -> ApiResult<ThresholdConfig> {
    let commit = obj.req_obj("commit")?;
    commit.unsupported("specifiers")?;
    obj.unsupported("threshold_balance_specifiers")?;
    obj.unsupported("custom_credit_type_id")?;
    Ok(ThresholdConfig {
        kind,
        commit: ThresholdCommit {
            product_id: commit.req_id("product_id")?,
            name: commit.str("name")?.map(str::to_owned),
            description: commit.str("description")?.map(str::to_owned),
            priority: commit.decimal("priority")?,
            applicable_product_ids: commit.ids("applicable_product_ids")?,
            applicable_product_tags: commit.strs("applicable_product_tags")?,
        },
        is_enabled: obj.req_bool("is_enabled")?,
        gate: payment_gate(&obj.req_obj("payment_gate_config")?)?,
        threshold_amount: obj.req_money("threshold_amount")?,
        recharge_to_amount: match kind {
            ThresholdKind::Spend => obj.money("recharge_to_amount")?,
            ThresholdKind::PrepaidBalance => Some(obj.req_money("recharge_to_amount")?),
        },
        discount: discount(obj)?,
        triggers: 0,
    })
}

fn threshold_update(obj: &Obj<'_>) -> ApiResult<ThresholdUpdate> {
    obj.unsupported("threshold_balance_specifiers")?;
    obj.unsupported("custom_credit_type_id")?;
    let mut update = ThresholdUpdate {
        is_enabled: obj.bool("is_enabled")?,
        gate: obj
            .obj("payment_gate_config")?
            .map(|g| payment_gate(&g))
            .transpose()?,
        threshold_amount: obj.money("threshold_amount")?,
        recharge_to_amount: obj.money("recharge_to_amount")?,
        ..ThresholdUpdate::default()
    };
    if obj.present("discount_configuration") {
        update.discount = Some(discount(obj)?);
    }
    if let Some(commit) = obj.obj("commit")? {
        commit.unsupported("specifiers")?;
        update.commit_product_id = commit.id("product_id")?;
        if commit.present("name") {
            update.commit_name = Some(commit.str("name")?.map(str::to_owned));
        }
        if commit.present("description") {
            update.commit_description = Some(commit.str("description")?.map(str::to_owned));
        }
        if commit.present("priority") {
            update.commit_priority = Some(commit.decimal("priority")?);
        }
        if commit.present("applicable_product_ids") {
            update.commit_applicable_product_ids = Some(commit.ids("applicable_product_ids")?);
        }
        if commit.present("applicable_product_tags") {
            update.commit_applicable_product_tags = Some(commit.strs("applicable_product_tags")?);
        }
    }
    Ok(update)
}

/// A commit or credit of a create or edit request.
fn commit_spec(obj: &Obj<'_>, credit: bool, gates_allowed: bool) -> ApiResult<CommitSpec> {
    let kind = if credit {
        CommitKind::Credit
    } else {
        parse_enum(
            &obj.path("type"),
            obj.req_str("type")?,
            &[
                ("PREPAID", CommitKind::Prepaid),
                ("POSTPAID", CommitKind::Postpaid),
            ],
        )?
    };
    for field in [
        "specifiers",
        "rollover_fraction",
        "recurring_schedule",
        "hierarchy_configuration",
        "custom_fields",
    ] {
        obj.unsupported(field)?;
    }
    if let Some(rate_type) = obj.str("rate_type")? {
        if !rate_type.eq_ignore_ascii_case("LIST_RATE") {
            return Err(ApiError::BadRequest(format!(
                "{}: only LIST_RATE is supported",
                obj.path("rate_type")
            )));
        }
    }
    let access = obj.req_obj("access_schedule")?;
    access.unsupported("credit_type_id")?;
    let mut access_schedule = Vec::new();
    for item in access.objs("schedule_items")? {
        access_schedule.push((
            item.req_money("amount")?,
            item.req_time("starting_at")?,
            item.req_time("ending_before")?,
        ));
    }
    let mut invoice_schedule = Vec::new();
    if let Some(invoices) = obj.obj("invoice_schedule")? {
        invoices.unsupported("recurring_schedule")?;
        invoices.unsupported("credit_type_id")?;
        if !invoices.bool("do_not_invoice")?.unwrap_or(false) {
            for item in invoices.objs("schedule_items")? {
                let timestamp = item.req_time("timestamp")?;
                let (unit_price, quantity) = match item.money("amount")? {
                    Some(amount) => (amount, Decimal::ONE),
                    None => (
                        item.req_money("unit_price")?,
                        item.decimal("quantity")?.unwrap_or(Decimal::ONE),
                    ),
                };
                invoice_schedule.push((timestamp, unit_price, quantity));
            }
        }
    }
    let payment_gate = match obj.obj("payment_gate_config")? {
        Some(_) if !gates_allowed => {
            return Err(ApiError::BadRequest(format!(
                "{}: payment-gated commits are added with POST /v2/contracts/edit",
                obj.path("payment_gate_config")
            )));
        }
        Some(gate) => Some(payment_gate(&gate)?),
        None => None,
    };
    Ok(CommitSpec {
        kind,
        product_id: obj.req_id("product_id")?,
        name: obj.str("name")?.map(str::to_owned),
        description: obj.str("description")?.map(str::to_owned),
        priority: obj.decimal("priority")?,
        applicable_product_ids: obj.ids("applicable_product_ids")?,
        applicable_product_tags: obj.strs("applicable_product_tags")?,
        access_schedule,
        invoice_schedule,
        payment_gate,
    })
}

/// STRIPE gates need the server's Stripe account, and a charge at least Stripe's minimum.
fn check_stripe_gates(
    state: &AppState,
    thresholds: &[Option<&ThresholdConfig>],
    commits: &[CommitSpec],
) -> ApiResult<()> {
    use crate::payments::stripe::MINIMUM_CHARGE_MINOR_UNITS;
    let minimum = Money::from_i64(MINIMUM_CHARGE_MINOR_UNITS);
    let mut any = false;
    for config in thresholds.iter().flatten() {
        if config.gate.gate_type == GateType::Stripe {
            any = true;
            if config.kind == ThresholdKind::Spend && config.threshold_amount < minimum {
                return Err(ApiError::BadRequest(format!(
                    "spend_threshold_configuration.threshold_amount: a STRIPE gate charges at least Stripe's minimum of {minimum} cents"
                )));
            }
        }
    }
    for (i, commit) in commits.iter().enumerate() {
        if commit
            .payment_gate
            .as_ref()
            .is_some_and(|g| g.gate_type == GateType::Stripe)
        {
            any = true;
            let mut total = Money::ZERO;
            for (_, price, quantity) in &commit.invoice_schedule {
                total = total.checked_add(price.checked_mul(*quantity)?)?;
            }
            if total < minimum {
                return Err(ApiError::BadRequest(format!(
                    "add_commits[{i}].invoice_schedule: a STRIPE gate charges at least Stripe's minimum of {minimum} cents"
                )));
            }
        }
    }
    if any && state.stripe.is_none() {
        return Err(ApiError::BadRequest(
            "payment_gate_type STRIPE needs [payments.stripe] in the server configuration".into(),
        ));
    }
    Ok(())
}

fn customer_of(state: &AppState, obj: &Obj<'_>) -> ApiResult<Id> {
    let id = obj.req_id("customer_id")?;
    if !state.engine.customer_exists(id) {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    Ok(id)
}

async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let customer = customer_of(&state, &obj)?;
    for field in [
        "overrides",
        "scheduled_charges",
        "recurring_commits",
        "recurring_credits",
        "subscriptions",
        "spend_trackers",
        "discounts",
        "professional_services",
        "reseller_royalties",
        "transition",
        "hierarchy_configuration",
        "usage_filter",
    ] {
        obj.unsupported(field)?;
    }
    if let Some(schedule) = obj.obj("usage_statement_schedule")? {
        if let Some(frequency) = schedule.str("frequency")? {
            if !frequency.eq_ignore_ascii_case("MONTHLY") {
                return Err(ApiError::BadRequest(
                    "usage_statement_schedule.frequency: only MONTHLY is supported".into(),
                ));
            }
        }
    }
    let rate_card_id = match (obj.id("rate_card_id")?, obj.str("rate_card_alias")?) {
        (Some(id), _) => id,
        (None, Some(alias)) => state
            .engine
            .catalog()
            .rate_cards()
            .find(|c| c.aliases.iter().any(|a| a == alias))
            .map(|c| c.id)
            .ok_or_else(|| ApiError::BadRequest(format!("rate_card_alias: {alias:?} not found")))?,
        (None, None) => return Err(ApiError::BadRequest("rate_card_id is required".into())),
    };
    let mut commits = Vec::new();
    for commit in obj.objs("commits")? {
        commits.push(commit_spec(&commit, false, false)?);
    }
    let mut credits = Vec::new();
    for credit in obj.objs("credits")? {
        credits.push(commit_spec(&credit, true, false)?);
    }
    let spec = ContractSpec {
        id: edge_id(&request, &body, "contract"),
        rate_card_id,
        name: obj.str("name")?.map(str::to_owned),
        starting_at: obj.req_time("starting_at")?,
        ending_before: obj.time("ending_before")?,
        uniqueness_key: obj.str("uniqueness_key")?.map(str::to_owned),
        commits,
        credits,
        spend_threshold: obj
            .obj("spend_threshold_configuration")?
            .map(|c| threshold_config(&c, ThresholdKind::Spend))
            .transpose()?,
        prepaid_threshold: obj
            .obj("prepaid_balance_threshold_configuration")?
            .map(|c| threshold_config(&c, ThresholdKind::PrepaidBalance))
            .transpose()?,
    };
    check_stripe_gates(
        &state,
        &[
            spec.spend_threshold.as_ref(),
            spec.prepaid_threshold.as_ref(),
        ],
        &[],
    )?;
    let id = spec.id;
    state
        .engine
        .apply(customer, Input::create_contract(spec))
        .await?;
    Ok(wire::id_response(id))
}

struct ReadOptions {
    customer: Id,
    as_of: Timestamp,
    include_ledger: bool,
    include_balance: bool,
}

fn read_options(state: &AppState, obj: &Obj<'_>) -> ApiResult<ReadOptions> {
    let customer = customer_of(state, obj)?;
    let as_of = obj
        .time("as_of_date")?
        .unwrap_or(Timestamp(state.engine.now_ms()));
    Ok(ReadOptions {
        customer,
        as_of,
        include_ledger: obj.bool("include_ledgers")?.unwrap_or(false),
        include_balance: obj.bool("include_balance")?.unwrap_or(false),
    })
}

async fn contracts_of(state: &AppState, customer: Id) -> ApiResult<Vec<Contract>> {
    Ok(state
        .engine
        .query(customer, |s| s.customer.contracts.clone())
        .await?)
}

async fn get(state: web::Data<AppState>, body: web::Bytes, v2: bool) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let options = read_options(&state, &obj)?;
    let contract_id = obj.req_id("contract_id")?;
    let contracts = contracts_of(&state, options.customer).await?;
    let contract = contracts
        .iter()
        .find(|c| c.id == contract_id)
        .ok_or_else(|| ApiError::NotFound(format!("contract {contract_id} not found")))?;
    let catalog = state.engine.catalog();
    let render = if v2 {
        render::contract_v2
    } else {
        render::contract_v1
    };
    Ok(wire::data(render(
        contract,
        &catalog,
        options.as_of,
        options.include_ledger,
        options.include_balance,
    )))
}

async fn list(state: web::Data<AppState>, body: web::Bytes, v2: bool) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let options = read_options(&state, &obj)?;
    let covering = obj.time("covering_date")?;
    let starting_at = obj.time("starting_at")?;
    let contracts = contracts_of(&state, options.customer).await?;
    let catalog = state.engine.catalog();
    let render = if v2 {
        render::contract_v2
    } else {
        render::contract_v1
    };
    let items: Vec<Value> = contracts
        .iter()
        .filter(|c| covering.is_none_or(|t| c.covers(t)))
        .filter(|c| starting_at.is_none_or(|t| c.starting_at >= t))
        .map(|c| {
            render(
                c,
                &catalog,
                options.as_of,
                options.include_ledger,
                options.include_balance,
            )
        })
        .collect();
    // Not paginated in Metronome's API.
    Ok(wire::data(items))
}

async fn get_v1(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    get(state, body, false).await
}

async fn get_v2(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    get(state, body, true).await
}

async fn list_v1(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, false).await
}

async fn list_v2(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, true).await
}

async fn edit(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let customer = customer_of(&state, &obj)?;
    for field in [
        "add_overrides",
        "add_scheduled_charges",
        "update_commits",
        "archive_commits",
        "archive_credits",
        "update_credits",
        "add_recurring_commits",
        "add_recurring_credits",
        "add_spend_trackers",
        "add_subscriptions",
        "add_discounts",
        "add_professional_services",
        "add_reseller_royalties",
        "update_contract_end_date",
        "update_scheduled_charges",
        "archive_scheduled_charges",
        "add_usage_filters",
    ] {
        obj.unsupported(field)?;
    }
    let mut add_commits = Vec::new();
    for commit in obj.objs("add_commits")? {
        add_commits.push(commit_spec(&commit, false, true)?);
    }
    let mut add_credits = Vec::new();
    for credit in obj.objs("add_credits")? {
        add_credits.push(commit_spec(&credit, true, false)?);
    }
    let edit = ContractEdit {
        edit_id: edge_id(&request, &body, "edit"),
        contract_id: obj.req_id("contract_id")?,
        uniqueness_key: obj.str("uniqueness_key")?.map(str::to_owned),
        add_commits,
        add_credits,
        add_spend_threshold: obj
            .obj("add_spend_threshold_configuration")?
            .map(|c| threshold_config(&c, ThresholdKind::Spend))
            .transpose()?,
        update_spend_threshold: obj
            .obj("update_spend_threshold_configuration")?
            .map(|c| threshold_update(&c))
            .transpose()?,
        add_prepaid_threshold: obj
            .obj("add_prepaid_balance_threshold_configuration")?
            .map(|c| threshold_config(&c, ThresholdKind::PrepaidBalance))
            .transpose()?,
        update_prepaid_threshold: obj
            .obj("update_prepaid_balance_threshold_configuration")?
            .map(|c| threshold_update(&c))
            .transpose()?,
    };
    let updated_gates: Vec<ThresholdConfig> =
        [&edit.update_spend_threshold, &edit.update_prepaid_threshold]
            .into_iter()
            .flatten()
            .filter_map(|u| u.gate.clone())
            .map(|gate| ThresholdConfig {
                kind: ThresholdKind::PrepaidBalance,
                commit: ThresholdCommit {
                    product_id: Id::default(),
                    name: None,
                    description: None,
                    priority: None,
                    applicable_product_ids: vec![],
                    applicable_product_tags: vec![],
                },
                is_enabled: true,
                gate,
                threshold_amount: Money::ZERO,
                recharge_to_amount: None,
                discount: None,
                triggers: 0,
            })
            .collect();
    let mut thresholds = vec![
        edit.add_spend_threshold.as_ref(),
        edit.add_prepaid_threshold.as_ref(),
    ];
    thresholds.extend(updated_gates.iter().map(Some));
    check_stripe_gates(&state, &thresholds, &edit.add_commits)?;
    let edit_id = edit.edit_id;
    let commit_count = edit.add_commits.len();
    let applied = state.engine.apply(customer, Input::edit(edit)).await?;
    let (commits, credits) = applied
        .created
        .split_at(commit_count.min(applied.created.len()));
    let ids = |list: &[Id]| -> Vec<Value> {
        list.iter()
            .map(|id| json!({"id": id.to_string()}))
            .collect()
    };
    Ok(wire::data(json!({
        "id": edit_id.to_string(),
        "edit": {
            "id": edit_id.to_string(),
            "add_commits": ids(commits),
            "add_credits": ids(credits),
        },
    })))
}

/// `POST /v1/contracts/commits/threshold-billing/release {"workflow_id", "outcome"}`: the
/// operator reports an EXTERNAL gate's payment result. 200 with an empty body.
async fn release(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let workflow_id = obj.req_id("workflow_id")?;
    let result = parse_enum(
        "outcome",
        obj.req_str("outcome")?,
        &[("paid", true), ("failed", false)],
    )?;
    let customer = state
        .engine
        .workflow_customer(workflow_id)?
        .ok_or_else(|| ApiError::NotFound(format!("workflow {workflow_id} not found")))?;
    let outcome = PaymentOutcome {
        workflow_id,
        source: OutcomeSource::External,
        result: if result {
            PaymentResult::Paid
        } else {
            PaymentResult::Failed {
                error: obj
                    .str("error_message")?
                    .map(|m| crate::domain::gate::ProviderError {
                        message: Some(m.to_owned()),
                        ..Default::default()
                    }),
            }
        },
        payment_intent_id: None,
    };
    let applied = state
        .engine
        .apply(customer, Input::PaymentOutcome(outcome))
        .await;
    let ended = match applied {
        Ok(_) => false,
        Err(EngineError::Rejected(Rejection::WorkflowAlreadyEnded)) => true,
        Err(other) => return Err(other.into()),
    };
    // An ended workflow never changes again, so reading it after the apply is race-free.
    let (workflow, history) = state
        .engine
        .query(customer, move |s| {
            s.customer.workflow_with_history(workflow_id)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workflow {workflow_id} not found")))?;
    if ended {
        // SPEC 1.4: the same outcome again is answered with the workflow (idempotent); the
        // other outcome cannot change how it ended.
        let same = matches!(
            (workflow.state, result),
            (WorkflowState::Released, true) | (WorkflowState::Failed, false)
        );
        if !same {
            return Err(ApiError::Conflict(format!(
                "workflow {workflow_id} already ended {}: the outcome {} cannot change it",
                workflow.state.as_str(),
                if result { "paid" } else { "failed" },
            )));
        }
    }
    Ok(wire::data(render::workflow(customer, &workflow, &history)))
}
