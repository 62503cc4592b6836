//! Contracts: `POST /v1/contracts/create`, `/v1/contracts/get|list`, `/v2/contracts/get|list`,
//! `/v2/contracts/edit` (threshold configurations, commits and credits, payment-gated commits),
//! and the external payment-gate release.

use super::openapi::{Data, List, Routes};
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::contract_bodies::{
    CommitRole, CreateContractBody, EditContractBody, GetContractBody, ListContractsBody,
    ReleaseBody, ThresholdConfigBody, ThresholdUpdateBody, UpdateEndDateBody, commit_specs,
};
use super::error::{ApiError, ApiResult};
use super::render;
use super::request::{self, Time, Uuid};
use super::views::{ContractV1View, ContractV2View, IdRef, WorkflowView};
use super::wire::{self, IdView};
use crate::actors::EngineError;
use crate::domain::contract::{Contract, ThresholdCommit, ThresholdConfig, ThresholdKind};
use crate::domain::customer::{CommitSpec, ContractEdit, ContractSpec, Input};
use crate::domain::gate::{GateType, OutcomeSource, PaymentOutcome, PaymentResult, WorkflowState};
use crate::domain::{Id, Money, Rejection, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/contracts/create",
            "createContract",
            "Create a contract (commits, credits, threshold configurations)",
            create,
        )
        .body::<CreateContractBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contracts/get",
            "getContractV1",
            "Get a contract (v1 shape)",
            get_v1,
        )
        .body::<GetContractBody>()
        .answers::<Data<ContractV1View>>();
    routes
        .post(
            "/v1/contracts/list",
            "listContractsV1",
            "List a customer's contracts (v1 shape, not paginated)",
            list_v1,
        )
        .body::<ListContractsBody>()
        .answers::<List<ContractV1View>>();
    routes
        .post(
            "/v2/contracts/get",
            "getContractV2",
            "Get a contract (v2 shape)",
            get_v2,
        )
        .body::<GetContractBody>()
        .answers::<Data<ContractV2View>>();
    routes
        .post(
            "/v2/contracts/list",
            "listContractsV2",
            "List a customer's contracts (v2 shape, not paginated)",
            list_v2,
        )
        .body::<ListContractsBody>()
        .answers::<List<ContractV2View>>();
    routes
        .post(
            "/v2/contracts/edit",
            "editContract",
            "Edit a contract: threshold configurations, commits (payment-gated), credits",
            edit,
        )
        .body::<EditContractBody>()
        .answers::<Data<EditView>>();
    routes
        .post(
            "/v1/contracts/updateEndDate",
            "updateContractEndDate",
            "Set or clear a contract's end date (thresholds stop and segments end with it)",
            update_end_date,
        )
        .body::<UpdateEndDateBody>()
        .answers::<Data<IdView>>();
    routes
        .post(
            "/v1/contracts/commits/threshold-billing/release",
            "releaseThresholdBillingWorkflow",
            "Report an EXTERNAL gate's payment outcome (paid or failed)",
            release,
        )
        .body::<ReleaseBody>()
        .answers::<Data<WorkflowView>>();
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

pub(super) fn customer_of(state: &AppState, id: Uuid) -> ApiResult<Id> {
    let id = id.0;
    if !state.engine.customer_exists(id) {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    Ok(id)
}

async fn create(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: CreateContractBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    if let Some(frequency) = request
        .usage_statement_schedule
        .and_then(|schedule| schedule.frequency)
    {
        if !frequency.eq_ignore_ascii_case("MONTHLY") {
            return Err(ApiError::BadRequest(
                "usage_statement_schedule.frequency: only MONTHLY is supported".into(),
            ));
        }
    }
    let rate_card_id = match (request.rate_card_id, request.rate_card_alias) {
        (Some(id), _) => id.0,
        (None, Some(alias)) => state
            .engine
            .catalog()
            .rate_cards()
            .find(|c| c.aliases.contains(&alias))
            .map(|c| c.id)
            .ok_or_else(|| ApiError::BadRequest(format!("rate_card_alias: {alias:?} not found")))?,
        (None, None) => return Err(ApiError::BadRequest("rate_card_id is required".into())),
    };
    let commit = CommitRole::Commit {
        gates_allowed: false,
    };
    let spec = ContractSpec {
        id: edge_id(&http, &body, "contract"),
        rate_card_id,
        name: request.name,
        starting_at: request.starting_at.0,
        ending_before: request.ending_before.map(|t| t.0),
        uniqueness_key: request.uniqueness_key,
        commits: commit_specs(request.commits, commit, "commits")?,
        credits: commit_specs(request.credits, CommitRole::Credit, "credits")?,
        spend_threshold: request
            .spend_threshold_configuration
            .map(|c| c.into_domain(ThresholdKind::Spend, "spend_threshold_configuration"))
            .transpose()?,
        prepaid_threshold: request
            .prepaid_balance_threshold_configuration
            .map(|c| {
                c.into_domain(
                    ThresholdKind::PrepaidBalance,
                    "prepaid_balance_threshold_configuration",
                )
            })
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

impl ReadOptions {
    fn shape(&self) -> render::ContractOptions {
        render::ContractOptions {
            as_of: self.as_of,
            include_ledger: self.include_ledger,
            include_balance: self.include_balance,
        }
    }

    fn new(
        state: &AppState,
        customer: Uuid,
        as_of: Option<Time>,
        include_ledgers: Option<bool>,
        include_balance: Option<bool>,
    ) -> ApiResult<ReadOptions> {
        Ok(ReadOptions {
            customer: customer_of(state, customer)?,
            as_of: as_of.map_or(Timestamp(state.engine.now_ms()), |t| t.0),
            include_ledger: include_ledgers.unwrap_or(false),
            include_balance: include_balance.unwrap_or(false),
        })
    }
}

async fn contracts_of(state: &AppState, customer: Id) -> ApiResult<Vec<Contract>> {
    Ok(state
        .engine
        .query(customer, |s| s.customer.contracts.clone())
        .await?)
}

async fn get(state: web::Data<AppState>, body: web::Bytes, v2: bool) -> ApiResult<HttpResponse> {
    let request: GetContractBody = request::read(&body)?;
    let options = ReadOptions::new(
        &state,
        request.customer_id,
        request.as_of_date,
        request.include_ledgers,
        request.include_balance,
    )?;
    let contract_id = request.contract_id.0;
    let contracts = contracts_of(&state, options.customer).await?;
    let contract = contracts
        .iter()
        .find(|c| c.id == contract_id)
        .ok_or_else(|| ApiError::NotFound(format!("contract {contract_id} not found")))?;
    let catalog = state.engine.catalog();
    let shape = options.shape();
    Ok(if v2 {
        wire::data(render::contract_v2(contract, &catalog, shape))
    } else {
        wire::data(render::contract_v1(contract, &catalog, shape))
    })
}

async fn list(state: web::Data<AppState>, body: web::Bytes, v2: bool) -> ApiResult<HttpResponse> {
    let request: ListContractsBody = request::read(&body)?;
    let options = ReadOptions::new(
        &state,
        request.customer_id,
        request.as_of_date,
        request.include_ledgers,
        request.include_balance,
    )?;
    let covering = request.covering_date.map(|t| t.0);
    let starting_at = request.starting_at.map(|t| t.0);
    let contracts = contracts_of(&state, options.customer).await?;
    let catalog = state.engine.catalog();
    let shape = options.shape();
    let listed = contracts
        .iter()
        .filter(|c| covering.is_none_or(|t| c.covers(t)))
        .filter(|c| starting_at.is_none_or(|t| c.starting_at >= t));
    // Not paginated in Metronome's API.
    Ok(if v2 {
        let items: Vec<_> = listed
            .map(|c| render::contract_v2(c, &catalog, shape))
            .collect();
        wire::data(items)
    } else {
        let items: Vec<_> = listed
            .map(|c| render::contract_v1(c, &catalog, shape))
            .collect();
        wire::data(items)
    })
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
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: EditContractBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    let add_threshold = |config: Option<ThresholdConfigBody>, kind, at: &str| {
        config.map(|c| c.into_domain(kind, at)).transpose()
    };
    let update_threshold = |update: Option<ThresholdUpdateBody>, at: &str| {
        update.map(|u| u.into_domain(at)).transpose()
    };
    let edit = ContractEdit {
        edit_id: edge_id(&http, &body, "edit"),
        contract_id: request.contract_id.0,
        uniqueness_key: request.uniqueness_key,
        add_commits: commit_specs(
            request.add_commits,
            CommitRole::Commit {
                gates_allowed: true,
            },
            "add_commits",
        )?,
        add_credits: commit_specs(request.add_credits, CommitRole::Credit, "add_credits")?,
        add_spend_threshold: add_threshold(
            request.add_spend_threshold_configuration,
            ThresholdKind::Spend,
            "add_spend_threshold_configuration",
        )?,
        update_spend_threshold: update_threshold(
            request.update_spend_threshold_configuration,
            "update_spend_threshold_configuration",
        )?,
        add_prepaid_threshold: add_threshold(
            request.add_prepaid_balance_threshold_configuration,
            ThresholdKind::PrepaidBalance,
            "add_prepaid_balance_threshold_configuration",
        )?,
        update_prepaid_threshold: update_threshold(
            request.update_prepaid_balance_threshold_configuration,
            "update_prepaid_balance_threshold_configuration",
        )?,
        update_ending_before: request.update_contract_end_date.map(|end| end.map(|t| t.0)),
        allow_ending_before_finalized_invoice: request
            .allow_contract_ending_before_finalized_invoice
            .unwrap_or(true),
        archive_commits: archived(request.archive_commits),
        archive_credits: archived(request.archive_credits),
        update_commits: updates(request.update_commits, request.update_credits)?,
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
                limits: None,
                hold: None,
                holds: 0,
                balance_specifiers: Vec::new(),
                credit_type: None,
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
    let ids = |list: &[Id]| -> Vec<IdRef> {
        list.iter().map(|id| IdRef { id: id.to_string() }).collect()
    };
    Ok(wire::data(EditView {
        id: edit_id.to_string(),
        edit: EditDetailView {
            id: edit_id.to_string(),
            add_commits: ids(commits),
            add_credits: ids(credits),
        },
    }))
}

fn updates(
    commits: Option<Vec<super::contract_bodies::UpdateCommitBody>>,
    credits: Option<Vec<super::contract_bodies::UpdateCommitBody>>,
) -> ApiResult<Vec<crate::domain::customer::CommitUpdate>> {
    let mut all = Vec::new();
    for (list, credit, field) in [
        (commits, false, "update_commits"),
        (credits, true, "update_credits"),
    ] {
        for (i, body) in list.unwrap_or_default().into_iter().enumerate() {
            all.push(body.into_domain(credit, &format!("{field}[{i}]"))?);
        }
    }
    Ok(all)
}

fn archived(list: Option<Vec<super::contract_bodies::ArchiveBody>>) -> Vec<Id> {
    list.unwrap_or_default()
        .into_iter()
        .map(|a| a.id.0)
        .collect()
}

/// `POST /v1/contracts/updateEndDate`: an edit of the end date alone (it goes through the log
/// as a contract edit, so it sends `contract.edit`, and `contract.end` once the end is reached).
async fn update_end_date(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: UpdateEndDateBody = request::read(&body)?;
    let customer = customer_of(&state, request.customer_id)?;
    let edit = ContractEdit {
        edit_id: edge_id(&http, &body, "edit"),
        contract_id: request.contract_id.0,
        update_ending_before: Some(request.ending_before.map(|t| t.0)),
        allow_ending_before_finalized_invoice: request
            .allow_ending_before_finalized_invoice
            .unwrap_or(true),
        ..ContractEdit::default()
    };
    state.engine.apply(customer, Input::edit(edit)).await?;
    Ok(wire::data(IdView {
        id: request.contract_id.0.to_string(),
    }))
}

/// The answer of `/v2/contracts/edit`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EditView {
    #[schema(value_type = super::request::Uuid)]
    pub id: String,
    pub edit: EditDetailView,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EditDetailView {
    #[schema(value_type = super::request::Uuid)]
    pub id: String,
    /// The commits added, in the request's order.
    pub add_commits: Vec<IdRef>,
    pub add_credits: Vec<IdRef>,
}

/// `POST /v1/contracts/commits/threshold-billing/release {"workflow_id", "outcome"}`: the
/// operator reports an EXTERNAL gate's payment result. 200 with an empty body.
async fn release(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: ReleaseBody = request::read(&body)?;
    let workflow_id = request.workflow_id.0;
    let result = request.outcome.0.paid;
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
                error: request
                    .error_message
                    .map(|m| crate::domain::gate::ProviderError {
                        message: Some(m),
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
