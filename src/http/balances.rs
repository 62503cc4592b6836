//! Balances: `customerBalances/list`, `customerBalances/getNetBalance`, `customerCommits/list`.
//!
//! Tollgate keeps every commit and credit on a contract (there are no customer-level commits
//! yet), so, as in Metronome, the lists return them only with `include_contract_balances` /
//! `include_contract_commits` set.

use super::openapi::Routes;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::fields::Obj;
use super::render;
use super::wire;
use crate::domain::contract::{CommitKind, Contract, Release};
use crate::domain::money::USD_CENTS_ID;
use crate::domain::{Id, Money, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/contracts/customerBalances/list",
        "listBalances",
        "List commits and credits with balances",
        list_balances,
    );
    routes.post(
        "/v1/contracts/customerBalances/getNetBalance",
        "getNetBalance",
        "A customer's net balance",
        net_balance,
    );
    routes.post(
        "/v1/contracts/customerCommits/list",
        "listCommits",
        "List commits",
        list_commits,
    );
}

fn customer(state: &AppState, obj: &Obj<'_>) -> ApiResult<Id> {
    let id = obj.req_id("customer_id")?;
    if !state.engine.customer_exists(id) {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    Ok(id)
}

async fn contracts(state: &AppState, customer: Id) -> ApiResult<Vec<Contract>> {
    Ok(state
        .engine
        .query(customer, |s| s.customer.contracts.clone())
        .await?)
}

/// Lists commits (and credits) as one body-cursor page.
async fn list(
    state: web::Data<AppState>,
    body: web::Bytes,
    with_credits: bool,
    include_flag: &str,
) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let customer = customer(&state, &obj)?;
    let limit = wire::page_limit(
        obj.value("limit")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
    )?;
    let cursor = obj.str("next_page")?.map(str::to_owned);
    let only = obj.id(if with_credits { "id" } else { "commit_id" })?;
    let covering = obj.time("covering_date")?;
    let starting_at = obj.time("starting_at")?;
    let effective_before = obj.time("effective_before")?;
    let include_archived = obj.bool("include_archived")?.unwrap_or(false);
    let include_balance = obj.bool("include_balance")?.unwrap_or(false);
    let include_ledgers = obj.bool("include_ledgers")?.unwrap_or(false);
    let exclude_zero = obj.bool("exclude_zero_balances")?.unwrap_or(false);
    let include_contract = obj.bool(include_flag)?.unwrap_or(false);
    let now = Timestamp(state.engine.now_ms());
    let catalog = state.engine.catalog();
    let mut items: Vec<(String, Value)> = Vec::new();
    if include_contract {
        for contract in contracts(&state, customer).await? {
            let workflows = render::workflows_by_commit(&contract);
            for commit in &contract.commits {
                if commit.kind == CommitKind::Credit && !with_credits {
                    continue;
                }
                if matches!(commit.release, Release::Canceled { .. }) {
                    continue;
                }
                if commit.archived_at.is_some() && !include_archived {
                    continue;
                }
                if only.is_some_and(|id| id != commit.id) {
                    continue;
                }
                let start = commit.segments.iter().map(|s| s.starting_at).min();
                let end = commit.segments.iter().map(|s| s.ending_before).max();
                if covering.is_some_and(|t| !commit.segments.iter().any(|s| s.covers(t))) {
                    continue;
                }
                if starting_at.is_some_and(|t| start.is_none_or(|s| s < t)) {
                    continue;
                }
                if effective_before.is_some_and(|t| start.is_none_or(|s| s >= t)) {
                    continue;
                }
                let _ = end;
                if exclude_zero && !commit.balance_at(now).unwrap_or(Money::ZERO).is_positive() {
                    continue;
                }
                items.push((
                    commit.id.to_string(),
                    render::commit(
                        &contract,
                        commit,
                        (&catalog, &workflows),
                        now,
                        include_ledgers,
                        include_balance,
                    ),
                ));
            }
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let (page, next) = wire::page_after(items, cursor.as_deref(), limit, |(id, _)| id.clone());
    Ok(wire::page(page.into_iter().map(|(_, v)| v).collect(), next))
}

async fn list_balances(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, true, "include_contract_balances").await
}

async fn list_commits(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, false, "include_contract_commits").await
}

/// The customer's usable balance now: released prepaid commits and credits (and postpaid
/// commits when a filter asks for them), each segment floored at zero.
async fn net_balance(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let value: Value = wire::parse_body(&body)?;
    let obj = Obj::root(&value)?;
    let customer = customer(&state, &obj)?;
    let credit_type = obj
        .str("credit_type_id")?
        .unwrap_or(USD_CENTS_ID)
        .to_owned();
    if let Some(mode) = obj.str("invoice_inclusion_mode")? {
        if !mode.eq_ignore_ascii_case("FINALIZED_AND_DRAFT")
            && !mode.eq_ignore_ascii_case("FINALIZED")
        {
            return Err(ApiError::BadRequest(
                "invoice_inclusion_mode: must be FINALIZED or FINALIZED_AND_DRAFT".into(),
            ));
        }
    }
    struct Filter {
        kinds: Vec<CommitKind>,
        ids: Vec<Id>,
    }
    let mut filters = Vec::new();
    for filter in obj.objs("filters")? {
        filter.unsupported("custom_fields")?;
        let mut kinds = Vec::new();
        for kind in filter.strs("balance_types")? {
            kinds.push(wire::parse_enum(
                &filter.path("balance_types"),
                &kind,
                &[
                    ("PREPAID_COMMIT", CommitKind::Prepaid),
                    ("POSTPAID_COMMIT", CommitKind::Postpaid),
                    ("CREDIT", CommitKind::Credit),
                ],
            )?);
        }
        filters.push(Filter {
            kinds,
            ids: filter.ids("ids")?,
        });
    }
    let now = Timestamp(state.engine.now_ms());
    let mut balance = Money::ZERO;
    for contract in contracts(&state, customer).await? {
        if contract.credit_type.id.to_string() != credit_type {
            continue;
        }
        for commit in &contract.commits {
            let included = if filters.is_empty() {
                commit.counts_in_balance()
            } else {
                filters.iter().any(|f| {
                    (f.kinds.is_empty() || f.kinds.contains(&commit.kind))
                        && (f.ids.is_empty() || f.ids.contains(&commit.id))
                })
            };
            if included {
                balance = balance.checked_add(commit.balance_at(now)?)?;
            }
        }
    }
    Ok(wire::data(
        json!({"balance": balance, "credit_type_id": credit_type}),
    ))
}
