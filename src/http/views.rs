//! The response types outside the catalog, in Metronome's shapes (the SDK's `Customer`,
//! `ContractV2`, v1 `Contract`, `Commit`, `Credit`, threshold configurations, `Invoice`) and
//! Tollgate's own (workflows): what `render` builds from domain state and serializes, and what the
//! OpenAPI document describes (utoipa's derive), so the two cannot drift. Amounts are exact JSON
//! numbers in the credit type's unit; times are RFC 3339; ids are UUID strings.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::request::{Amount, Time, Uuid};
use crate::domain::Money;

/// `{"id", "name"}`: Metronome's `CreditTypeData`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CreditTypeView {
    #[schema(value_type = Uuid)]
    pub id: String,
    pub name: String,
}

/// `{"id"}` of a referenced object.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct IdRef {
    #[schema(value_type = Uuid)]
    pub id: String,
}

/// `{"id", "name"}` of a product.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProductRef {
    #[schema(value_type = Uuid)]
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomerConfigView {
    /// Always null (Tollgate has no Salesforce link).
    pub salesforce_account_id: Option<String>,
}

/// The SDK's `CustomerDetail` (get, list); the create answer leaves out `customer_config`,
/// `created_at` and `updated_at` (the SDK's `Customer`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomerView {
    #[schema(value_type = Uuid)]
    pub id: String,
    pub name: String,
    /// The first ingest alias (Metronome's deprecated single alias), or the id.
    pub external_id: String,
    pub ingest_aliases: Vec<String>,
    pub custom_fields: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_config: Option<CustomerConfigView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub archived_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StripeConfigView {
    /// INVOICE or PAYMENT_INTENT.
    pub payment_type: &'static str,
    pub invoice_metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PrecalculatedTaxView {
    #[schema(value_type = Amount)]
    pub tax_amount: Money,
    pub tax_name: Option<String>,
}

/// A payment gate configuration.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PaymentGateView {
    /// NONE, EXTERNAL or STRIPE.
    pub payment_gate_type: &'static str,
    /// NONE, STRIPE, ANROK or PRECALCULATED.
    pub tax_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe_config: Option<StripeConfigView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precalculated_tax_config: Option<PrecalculatedTaxView>,
}

/// The commit a threshold configuration issues.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThresholdCommitView {
    #[schema(value_type = Uuid)]
    pub product_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub priority: Option<Money>,
    /// Prepaid balance thresholds only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub applicable_product_ids: Option<Vec<String>>,
    /// Prepaid balance thresholds only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applicable_product_tags: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DiscountView {
    #[schema(value_type = Amount)]
    pub payment_fraction: Money,
}

/// `spend_threshold_configuration` or `prepaid_balance_threshold_configuration`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThresholdView {
    pub commit: ThresholdCommitView,
    pub is_enabled: bool,
    pub payment_gate_config: PaymentGateView,
    #[schema(value_type = Amount)]
    pub threshold_amount: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub recharge_to_amount: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount_configuration: Option<DiscountView>,
    /// Tollgate's recharge safety rails, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recharge_limits: Option<RechargeLimitsView>,
    /// Tollgate's: the rail holding the next recharge back, while one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recharge_hold: Option<RechargeHoldView>,
    /// Prepaid balance thresholds with specifiers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_balance_specifiers: Option<Vec<BalanceSpecifierView>>,
    /// Prepaid balance thresholds in a custom pricing unit only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::request::Uuid>)]
    pub custom_credit_type_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BalanceSpecifierView {
    pub exclude: Vec<BalanceExcludeView>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BalanceExcludeView {
    pub custom_field_filters: Vec<CustomFieldFilterView>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomFieldFilterView {
    pub entity: &'static str,
    pub key: String,
    pub value: String,
}

/// `recharge_limits` as configured (absent limits are left out).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RechargeLimitsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_recharges_per_period: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub max_recharge_amount_per_period: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_recharge_interval_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recharge_commit_duration_days: Option<u32>,
}

/// A recharge held back by a rail.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RechargeHoldView {
    /// The rail's field name in `recharge_limits`.
    pub limit: &'static str,
    #[schema(value_type = Time)]
    pub since: String,
    /// When it is evaluated again.
    #[schema(value_type = Time)]
    pub until: String,
}

/// Tollgate's field on a commit or purchase invoice with a payment-gate workflow.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct GateWorkflowRef {
    #[schema(value_type = Uuid)]
    pub id: String,
    /// PENDING_INVOICE, PENDING_PAYMENT, ACTION_REQUIRED, RELEASED or FAILED.
    pub state: &'static str,
    pub payment_gate_type: &'static str,
}

/// One change of a workflow's state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StateChangeView {
    pub state: &'static str,
    #[schema(value_type = Time)]
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A payment-gate workflow with its history (Tollgate).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    #[schema(value_type = Uuid)]
    pub id: String,
    /// PENDING_INVOICE, PENDING_PAYMENT, ACTION_REQUIRED, RELEASED or FAILED.
    pub state: &'static str,
    /// SPEND_THRESHOLD, PREPAID_BALANCE_THRESHOLD or COMMIT.
    pub workflow_type: &'static str,
    pub payment_gate_type: &'static str,
    #[schema(value_type = Uuid)]
    pub customer_id: String,
    #[schema(value_type = Uuid)]
    pub contract_id: String,
    #[schema(value_type = Uuid)]
    pub commit_id: String,
    #[schema(value_type = Uuid)]
    pub invoice_id: String,
    /// What the commit grants once released.
    #[schema(value_type = Amount)]
    pub access_amount: Money,
    /// What is charged (tax and discount included).
    #[schema(value_type = Amount)]
    pub invoice_total: Money,
    #[schema(value_type = Time)]
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub history: Vec<StateChangeView>,
}

/// A segment of an access schedule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SegmentView {
    #[schema(value_type = Uuid)]
    pub id: String,
    #[schema(value_type = Amount)]
    pub amount: Money,
    #[schema(value_type = Time)]
    pub starting_at: String,
    #[schema(value_type = Time)]
    pub ending_before: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccessScheduleView {
    pub credit_type: CreditTypeView,
    pub schedule_items: Vec<SegmentView>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceItemView {
    #[schema(value_type = Uuid)]
    pub id: String,
    #[schema(value_type = Time)]
    pub timestamp: String,
    #[schema(value_type = Amount)]
    pub amount: Money,
    #[schema(value_type = Amount)]
    pub quantity: Money,
    #[schema(value_type = Amount)]
    pub unit_price: Money,
    #[schema(value_type = Uuid)]
    pub invoice_id: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceScheduleView {
    pub credit_type: CreditTypeView,
    pub schedule_items: Vec<InvoiceItemView>,
}

/// A ledger entry of a commit or credit.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LedgerEntryView {
    #[serde(rename = "type")]
    pub entry_type: &'static str,
    #[schema(value_type = Amount)]
    pub amount: Money,
    #[schema(value_type = Uuid)]
    pub segment_id: String,
    #[schema(value_type = Time)]
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub invoice_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub contract_id: Option<String>,
    /// Manual entries only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The SDK's `Commit` (`type` PREPAID or POSTPAID) or `Credit` (`type` CREDIT).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CommitView {
    #[schema(value_type = Uuid)]
    pub id: String,
    /// PREPAID, POSTPAID or CREDIT.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    #[schema(value_type = Time)]
    pub created_at: String,
    pub product: ProductRef,
    #[schema(value_type = Amount)]
    pub priority: Money,
    pub access_schedule: AccessScheduleView,
    #[schema(value_type = Vec<Uuid>)]
    pub applicable_product_ids: Vec<String>,
    pub applicable_product_tags: Vec<String>,
    /// The contract it belongs to; absent for a customer-level commit or credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<IdRef>,
    /// A customer-level commit's or credit's contracts (empty: every contract).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub applicable_contract_ids: Option<Vec<String>>,
    /// Always LIST_RATE.
    pub rate_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Absent on commits a threshold configuration created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_schedule: Option<InvoiceScheduleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_contract: Option<IdRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub archived_at: Option<String>,
    /// Tollgate: the payment-gate workflow of a threshold or gated commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_gate_workflow: Option<GateWorkflowRef>,
    /// With `include_balance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub balance: Option<Money>,
    /// With `include_ledgers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Vec<LedgerEntryView>>,
    pub custom_fields: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageStatementScheduleView {
    /// Always MONTHLY.
    pub frequency: &'static str,
    #[schema(value_type = Time)]
    pub billing_anchor_date: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HasMoreView {
    pub commits: bool,
    pub credits: bool,
}

/// What Tollgate always answers empty (features it does not implement).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Nothing {}

/// The body of a contract shared by `ContractV2` and v1's `current`/`initial`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ContractTermsView {
    #[schema(value_type = Time)]
    pub created_at: String,
    pub created_by: &'static str,
    #[schema(value_type = Time)]
    pub starting_at: String,
    #[schema(value_type = Uuid)]
    pub rate_card_id: String,
    pub commits: Vec<CommitView>,
    pub credits: Vec<CommitView>,
    /// Always empty.
    pub overrides: Vec<Nothing>,
    /// Always empty.
    pub scheduled_charges: Vec<Nothing>,
    /// Always empty.
    pub transitions: Vec<Nothing>,
    pub usage_statement_schedule: UsageStatementScheduleView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub ending_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniqueness_key: Option<String>,
}

/// The SDK's `ContractV2` (`/v2/contracts/get|list`): commits and credits at the top level.
/// [`ContractTermsView`]'s fields are serialized into the same object.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ContractV2View {
    #[schema(value_type = Uuid)]
    pub id: String,
    #[schema(value_type = Uuid)]
    pub customer_id: String,
    #[serde(flatten)]
    pub terms: ContractTermsView,
    /// Always empty.
    pub usage_filter: Vec<Nothing>,
    pub has_more: HasMoreView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_threshold_configuration: Option<ThresholdView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepaid_balance_threshold_configuration: Option<ThresholdView>,
}

/// The SDK's v1 `Contract` (`/v1/contracts/get|list`): `current` and `initial` hold the
/// contract without amendments.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ContractV1View {
    #[schema(value_type = Uuid)]
    pub id: String,
    #[schema(value_type = Uuid)]
    pub customer_id: String,
    /// Always empty.
    pub amendments: Vec<Nothing>,
    pub current: ContractTermsView,
    pub initial: ContractTermsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_threshold_configuration: Option<ThresholdView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepaid_balance_threshold_configuration: Option<ThresholdView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniqueness_key: Option<String>,
}

/// A line of an invoice.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LineItemView {
    pub name: String,
    /// usage, applied_commit_or_credit, commit_purchase or tax.
    #[serde(rename = "type")]
    pub line_type: &'static str,
    pub credit_type: CreditTypeView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub product_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub commit_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub quantity: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Amount>)]
    pub unit_price: Option<Money>,
    #[schema(value_type = Amount)]
    pub total: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub starting_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Time>)]
    pub ending_before: Option<String>,
}

/// Where a purchase invoice is collected.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ExternalInvoiceView {
    /// stripe (a STRIPE gate) or custom (an EXTERNAL gate: the operator's system).
    pub billing_provider_type: &'static str,
    pub external_status: String,
    #[schema(value_type = Amount)]
    pub invoiced_total: Money,
}

/// The SDK's `Invoice`: a USAGE invoice of a billing period, or a SCHEDULED purchase invoice.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceView {
    #[schema(value_type = Uuid)]
    pub id: String,
    #[schema(value_type = Uuid)]
    pub customer_id: String,
    #[schema(value_type = Uuid)]
    pub contract_id: String,
    /// USAGE or SCHEDULED.
    #[serde(rename = "type")]
    pub invoice_type: &'static str,
    /// DRAFT, FINALIZED or VOID.
    pub status: &'static str,
    pub credit_type: CreditTypeView,
    #[schema(value_type = Time)]
    pub start_timestamp: String,
    #[schema(value_type = Time)]
    pub end_timestamp: String,
    #[schema(value_type = Time)]
    pub issued_at: String,
    pub line_items: Vec<LineItemView>,
    #[schema(value_type = Amount)]
    pub subtotal: Money,
    #[schema(value_type = Amount)]
    pub total: Money,
    /// Tollgate: the payment-gate workflow of a purchase invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_gate_workflow: Option<GateWorkflowRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_invoice: Option<ExternalInvoiceView>,
}
