//! Balances: `customerBalances/list`, `customerBalances/getNetBalance`, `customerCommits/list`,
//! `customerCredits/list`.
//!
//! As in Metronome, the lists return customer-level commits and credits, and the contracts'
//! own only with `include_contract_balances` / `include_contract_commits` /
//! `include_contract_credits` set; the net balance counts both.

use super::openapi::{Data, Page, Routes};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::render;
use super::request::{self, Choice, Choices, Refused, Time, Uuid};
use super::views::CommitView;
use super::wire;
use crate::domain::contract::{Commit, CommitKind, Release};
use crate::domain::customer::Customer;
use crate::domain::money::USD_CENTS_ID;
use crate::domain::{Id, Money, Timestamp};

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .post(
            "/v1/contracts/customerBalances/list",
            "listBalances",
            "List commits and credits with balances",
            list_balances,
        )
        .body::<ListBalancesBody>()
        .answers::<Page<CommitView>>();
    routes
        .post(
            "/v1/contracts/customerBalances/getNetBalance",
            "getNetBalance",
            "A customer's net balance",
            net_balance,
        )
        .body::<NetBalanceBody>()
        .answers::<Data<NetBalanceView>>();
    routes
        .post(
            "/v1/contracts/customerCommits/list",
            "listCommits",
            "List commits",
            list_commits,
        )
        .body::<ListBalancesBody>()
        .answers::<Page<CommitView>>();
    routes
        .post(
            "/v1/contracts/customerCredits/list",
            "listCredits",
            "List credits",
            list_credits,
        )
        .body::<ListBalancesBody>()
        .answers::<Page<CommitView>>();
}

/// `POST /v1/contracts/customerBalances/list` and `/v1/contracts/customerCommits/list`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ListBalancesBody {
    pub customer_id: Uuid,
    /// Page size, 1-100 (25 unless given).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The cursor a previous page answered.
    #[serde(default)]
    pub next_page: Option<String>,
    /// customerBalances/list: only this commit or credit.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// customerCommits/list: only this commit.
    #[serde(default)]
    pub commit_id: Option<Uuid>,
    /// customerCredits/list: only this credit.
    #[serde(default)]
    pub credit_id: Option<Uuid>,
    /// Only those with a segment in effect at this time.
    #[serde(default)]
    pub covering_date: Option<Time>,
    /// Only those starting at or after this time.
    #[serde(default)]
    pub starting_at: Option<Time>,
    /// Only those starting before this time.
    #[serde(default)]
    pub effective_before: Option<Time>,
    #[serde(default)]
    pub include_archived: Option<bool>,
    #[serde(default)]
    pub include_balance: Option<bool>,
    #[serde(default)]
    pub include_ledgers: Option<bool>,
    #[serde(default)]
    pub exclude_zero_balances: Option<bool>,
    /// customerBalances/list: contract-level commits and credits are listed only with this set.
    #[serde(default)]
    pub include_contract_balances: Option<bool>,
    /// customerCommits/list: contract-level commits are listed only with this set.
    #[serde(default)]
    pub include_contract_commits: Option<bool>,
    /// customerCredits/list: contract-level credits are listed only with this set.
    #[serde(default)]
    pub include_contract_credits: Option<bool>,
}

/// Which list a request reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// customerBalances/list: commits and credits.
    Balances,
    Commits,
    Credits,
}

impl Listing {
    fn lists(self, kind: CommitKind) -> bool {
        match self {
            Listing::Balances => true,
            Listing::Commits => kind != CommitKind::Credit,
            Listing::Credits => kind == CommitKind::Credit,
        }
    }
}

/// The kinds of balance a net-balance filter selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceType(CommitKind);

impl Choices for BalanceType {
    const NAME: &'static str = "BalanceType";
    const VALUES: &'static [(&'static str, Self)] = &[
        ("PREPAID_COMMIT", BalanceType(CommitKind::Prepaid)),
        ("POSTPAID_COMMIT", BalanceType(CommitKind::Postpaid)),
        ("CREDIT", BalanceType(CommitKind::Credit)),
    ];
}

pub type BalanceTypeChoice = Choice<BalanceType>;

/// A filter of `getNetBalance`: a commit or credit counts when it matches any filter.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NetBalanceFilterBody {
    #[serde(default)]
    pub balance_types: Option<Vec<BalanceTypeChoice>>,
    #[serde(default)]
    pub ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub custom_fields: Refused,
}

/// A customer's net balance.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct NetBalanceView {
    #[schema(value_type = crate::http::request::Amount)]
    pub balance: Money,
    #[schema(value_type = crate::http::request::Uuid)]
    pub credit_type_id: String,
}

/// `POST /v1/contracts/customerBalances/getNetBalance`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NetBalanceBody {
    pub customer_id: Uuid,
    /// USD cents unless given.
    #[serde(default)]
    pub credit_type_id: Option<String>,
    /// FINALIZED or FINALIZED_AND_DRAFT (both count the same here).
    #[serde(default)]
    pub invoice_inclusion_mode: Option<String>,
    #[serde(default)]
    pub filters: Option<Vec<NetBalanceFilterBody>>,
}

fn customer(state: &AppState, id: Uuid) -> ApiResult<Id> {
    let id = id.0;
    if !state.engine.customer_exists(id) {
        return Err(ApiError::NotFound(format!("customer {id} not found")));
    }
    Ok(id)
}

async fn customer_state(state: &AppState, customer: Id) -> ApiResult<Customer> {
    Ok(state.engine.query(customer, |s| s.customer.clone()).await?)
}

/// The filters of a list request that look at one commit or credit.
struct CommitFilter {
    listing: Listing,
    only: Option<Id>,
    covering: Option<Timestamp>,
    starting_at: Option<Timestamp>,
    effective_before: Option<Timestamp>,
    include_archived: bool,
    exclude_zero: bool,
    now: Timestamp,
}

impl CommitFilter {
    fn keeps(&self, commit: &Commit) -> bool {
        if !self.listing.lists(commit.kind)
            // A commit whose purchase failed is never usable: Metronome does not list it.
            || matches!(commit.release, Release::Canceled { .. })
            || commit.archived_at.is_some() && !self.include_archived
            || self.only.is_some_and(|id| id != commit.id)
        {
            return false;
        }
        let start = commit.segments.iter().map(|s| s.starting_at).min();
        if self
            .covering
            .is_some_and(|t| !commit.segments.iter().any(|s| s.covers(t)))
            || self
                .starting_at
                .is_some_and(|t| start.is_none_or(|s| s < t))
            || self
                .effective_before
                .is_some_and(|t| start.is_none_or(|s| s >= t))
        {
            return false;
        }
        !self.exclude_zero
            || commit
                .balance_at(self.now)
                .unwrap_or(Money::ZERO)
                .is_positive()
    }
}

/// Lists commits (and credits) as one body-cursor page: the customer-level ones, and the
/// contracts' own when asked.
async fn list(
    state: web::Data<AppState>,
    body: web::Bytes,
    listing: Listing,
) -> ApiResult<HttpResponse> {
    let request: ListBalancesBody = request::read(&body)?;
    let customer = customer(&state, request.customer_id)?;
    let limit = wire::page_limit(request.limit)?;
    let cursor = request.next_page;
    // Each list has its own pair of fields: another list's is refused, not ignored.
    let fields = [
        (
            "id",
            request.id.is_some(),
            request.include_contract_balances.is_some(),
            "include_contract_balances",
            Listing::Balances,
        ),
        (
            "commit_id",
            request.commit_id.is_some(),
            request.include_contract_commits.is_some(),
            "include_contract_commits",
            Listing::Commits,
        ),
        (
            "credit_id",
            request.credit_id.is_some(),
            request.include_contract_credits.is_some(),
            "include_contract_credits",
            Listing::Credits,
        ),
    ];
    for (id_field, id_sent, include_sent, include_field, owner) in fields {
        if owner == listing {
            continue;
        }
        for (sent, field) in [(id_sent, id_field), (include_sent, include_field)] {
            if sent {
                return Err(ApiError::BadRequest(format!(
                    "{field} is not a field of this list"
                )));
            }
        }
    }
    let (only, include_contract) = match listing {
        Listing::Balances => (request.id, request.include_contract_balances),
        Listing::Commits => (request.commit_id, request.include_contract_commits),
        Listing::Credits => (request.credit_id, request.include_contract_credits),
    };
    let include_contract = include_contract.unwrap_or(false);
    let include_balance = request.include_balance.unwrap_or(false);
    let include_ledgers = request.include_ledgers.unwrap_or(false);
    let now = Timestamp(state.engine.now_ms());
    let filter = CommitFilter {
        listing,
        only: only.map(|id| id.0),
        covering: request.covering_date.map(|t| t.0),
        starting_at: request.starting_at.map(|t| t.0),
        effective_before: request.effective_before.map(|t| t.0),
        include_archived: request.include_archived.unwrap_or(false),
        exclude_zero: request.exclude_zero_balances.unwrap_or(false),
        now,
    };
    let catalog = state.engine.catalog();
    let customer = customer_state(&state, customer).await?;
    let mut items: Vec<(String, CommitView)> = Vec::new();
    for shared in &customer.customer_commits {
        if filter.keeps(&shared.commit) {
            let options = (now, include_ledgers, include_balance);
            items.push((
                shared.commit.id.to_string(),
                render::customer_commit(shared, &customer, &catalog, options),
            ));
        }
    }
    if include_contract {
        for contract in &customer.contracts {
            let workflows = render::workflows_by_commit(contract);
            for commit in contract.commits.iter().filter(|c| filter.keeps(c)) {
                items.push((
                    commit.id.to_string(),
                    render::commit(
                        contract,
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
    list(state, body, Listing::Balances).await
}

async fn list_commits(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, Listing::Commits).await
}

async fn list_credits(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    list(state, body, Listing::Credits).await
}

/// The customer's usable balance now: released prepaid commits and credits (and postpaid
/// commits when a filter asks for them), each segment floored at zero.
async fn net_balance(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: NetBalanceBody = request::read(&body)?;
    let customer = customer(&state, request.customer_id)?;
    let credit_type = request
        .credit_type_id
        .unwrap_or_else(|| USD_CENTS_ID.to_owned());
    if let Some(mode) = request.invoice_inclusion_mode {
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
    let filters: Vec<Filter> = request
        .filters
        .unwrap_or_default()
        .into_iter()
        .map(|filter| Filter {
            kinds: filter
                .balance_types
                .unwrap_or_default()
                .into_iter()
                .map(|kind| kind.0.0)
                .collect(),
            ids: filter
                .ids
                .unwrap_or_default()
                .into_iter()
                .map(|id| id.0)
                .collect(),
        })
        .collect();
    let now = Timestamp(state.engine.now_ms());
    let mut balance = Money::ZERO;
    let customer = customer_state(&state, customer).await?;
    let contract_commits = customer
        .contracts
        .iter()
        .map(|c| (&c.credit_type, c.commits.iter().collect::<Vec<_>>()));
    let shared = customer
        .customer_commits
        .iter()
        .map(|c| (&c.credit_type, vec![&c.commit]));
    for (fiat, commits) in contract_commits.chain(shared) {
        // A commit's own unit when it has one, else its owner's fiat credit type.
        for commit in commits {
            if commit.unit_or(fiat.id).to_string() != credit_type {
                continue;
            }
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
    Ok(wire::data(NetBalanceView {
        balance,
        credit_type_id: credit_type,
    }))
}
