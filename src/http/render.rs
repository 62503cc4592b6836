//! Domain state rendered in Metronome's response shapes (the SDK's types: `Commit`, `Credit`,
//! `ContractV2`, v1 `Contract`, threshold configurations, `Invoice`). Amounts are exact JSON
//! numbers in the credit type's unit; times are RFC 3339.

use rustc_hash::FxHashMap;
use serde_json::{Map, Value, json};

use super::wire::time;
use crate::domain::Catalog;
use crate::domain::contract::{
    Commit, CommitKind, Contract, InvoiceStatus, PurchaseInvoice, ThresholdConfig, ThresholdKind,
    UsagePeriod,
};
use crate::domain::customer::CustomerProfile;
use crate::domain::gate::{
    GateType, PaymentGateConfig, StateChange, StripePaymentType, TaxType, Workflow,
};
use crate::domain::money::CreditType;
use crate::domain::{Id, Money, Timestamp};

/// Who created objects made through the API (Metronome reports a user; we have tokens).
pub const CREATED_BY: &str = "Tollgate API";

pub fn credit_type(ct: &CreditType) -> Value {
    json!({"id": ct.id.to_string(), "name": ct.name})
}

pub fn customer_detail(profile: &CustomerProfile) -> Value {
    let custom: Map<String, Value> = profile
        .custom_fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let external_id = profile
        .external_id
        .clone()
        .or_else(|| profile.ingest_aliases.first().cloned())
        .unwrap_or_else(|| profile.id.to_string());
    let mut out = json!({
        "id": profile.id.to_string(),
        "name": profile.name,
        "external_id": external_id,
        "ingest_aliases": profile.ingest_aliases,
        "custom_fields": custom,
        "customer_config": {"salesforce_account_id": null},
        "created_at": time(profile.created_at),
        "updated_at": time(profile.created_at),
    });
    if let Some(archived) = profile.archived_at {
        out["archived_at"] = json!(time(archived));
    }
    out
}

fn gate_type_name(gate_type: GateType) -> &'static str {
    match gate_type {
        GateType::None => "NONE",
        GateType::External => "EXTERNAL",
        GateType::Stripe => "STRIPE",
    }
}

fn gate(config: &PaymentGateConfig) -> Value {
    let gate_type = gate_type_name(config.gate_type);
    let tax_type = match config.tax_type {
        TaxType::None => "NONE",
        TaxType::Stripe => "STRIPE",
        TaxType::Anrok => "ANROK",
        TaxType::Precalculated => "PRECALCULATED",
    };
    let mut out = json!({"payment_gate_type": gate_type, "tax_type": tax_type});
    if let Some(stripe) = &config.stripe {
        let metadata: Map<String, Value> = stripe
            .invoice_metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out["stripe_config"] = json!({
            "payment_type": match stripe.payment_type {
                StripePaymentType::Invoice => "INVOICE",
                StripePaymentType::PaymentIntent => "PAYMENT_INTENT",
            },
            "invoice_metadata": metadata,
        });
    }
    if let Some((amount, name)) = &config.precalculated_tax {
        out["precalculated_tax_config"] = json!({"tax_amount": amount, "tax_name": name});
    }
    out
}

pub fn threshold(config: &ThresholdConfig) -> Value {
    let mut commit = json!({"product_id": config.commit.product_id.to_string()});
    if let Some(name) = &config.commit.name {
        commit["name"] = json!(name);
    }
    if let Some(description) = &config.commit.description {
        commit["description"] = json!(description);
    }
    if let Some(priority) = &config.commit.priority {
        commit["priority"] = json!(Money::from_decimal(*priority));
    }
    if config.kind == ThresholdKind::PrepaidBalance {
        commit["applicable_product_ids"] = json!(
            config
                .commit
                .applicable_product_ids
                .iter()
                .map(Id::to_string)
                .collect::<Vec<_>>()
        );
        commit["applicable_product_tags"] = json!(config.commit.applicable_product_tags);
    }
    let mut out = json!({
        "commit": commit,
        "is_enabled": config.is_enabled,
        "payment_gate_config": gate(&config.gate),
        "threshold_amount": config.threshold_amount,
    });
    if let Some(recharge_to) = config.recharge_to_amount {
        out["recharge_to_amount"] = json!(recharge_to);
    }
    if let Some(discount) = &config.discount {
        out["discount_configuration"] =
            json!({"payment_fraction": Money::from_decimal(discount.payment_fraction)});
    }
    out
}

/// A commit (`Commit` shape) or credit (`Credit` shape, `type: "CREDIT"`).
/// The payment-gate workflow of each commit of `contract` that has one (threshold and gated
/// commits), by commit id: built once per rendered contract.
pub fn workflows_by_commit(contract: &Contract) -> FxHashMap<Id, &Workflow> {
    contract
        .workflows
        .iter()
        .map(|w| (w.commit_id, w))
        .collect()
}

/// Tollgate's extra field on a commit or purchase invoice with a payment-gate workflow
/// (SPEC 3.1; the SDK ignores fields it does not know): the workflow's id, state and gate.
fn gate_workflow(out: &mut Value, workflow: Option<&Workflow>) {
    if let Some(w) = workflow {
        out["payment_gate_workflow"] = json!({
            "id": w.id.to_string(),
            "state": w.state.as_str(),
            "payment_gate_type": gate_type_name(w.gate.gate_type),
        });
    }
}

/// A payment-gate workflow as the release endpoint answers it.
pub fn workflow(customer: Id, w: &Workflow, history: &[StateChange]) -> Value {
    let mut out = json!({
        "id": w.id.to_string(),
        "state": w.state.as_str(),
        "workflow_type": w.kind.as_str(),
        "payment_gate_type": gate_type_name(w.gate.gate_type),
        "customer_id": customer.to_string(),
        "contract_id": w.contract_id.to_string(),
        "commit_id": w.commit_id.to_string(),
        "invoice_id": w.invoice_id.to_string(),
        "access_amount": w.access_amount,
        "invoice_total": w.invoice_total,
        "started_at": time(w.started_at),
    });
    if let Some(ended) = w.ended_at {
        out["ended_at"] = json!(time(ended));
    }
    if let Some(pi) = &w.payment_intent_id {
        out["payment_intent_id"] = json!(pi);
    }
    if let Some(message) = w.error.as_ref().and_then(|e| e.message.as_ref()) {
        out["error_message"] = json!(message);
    }
    if let Some(code) = w.error.as_ref().and_then(|e| e.code.as_ref()) {
        out["error_code"] = json!(code);
    }
    let history: Vec<Value> = history
        .iter()
        .map(|c| {
            let mut change = json!({"state": c.state.as_str(), "at": time(c.at)});
            if let Some(reason) = &c.reason {
                change["reason"] = json!(reason);
            }
            change
        })
        .collect();
    out["history"] = json!(history);
    out
}

pub fn commit(
    contract: &Contract,
    commit: &Commit,
    (catalog, workflows): (&Catalog, &FxHashMap<Id, &Workflow>),
    as_of: Timestamp,
    include_ledger: bool,
    include_balance: bool,
) -> Value {
    let product_name = catalog
        .product(commit.product_id)
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let ct = credit_type(&contract.credit_type);
    let kind = match commit.kind {
        CommitKind::Prepaid => "PREPAID",
        CommitKind::Postpaid => "POSTPAID",
        CommitKind::Credit => "CREDIT",
    };
    let segments: Vec<Value> = commit
        .segments
        .iter()
        .map(|s| {
            json!({
                "id": s.id.to_string(),
                "amount": s.amount,
                "starting_at": time(s.starting_at),
                "ending_before": time(s.ending_before),
            })
        })
        .collect();
    let mut out = json!({
        "id": commit.id.to_string(),
        "type": kind,
        "name": commit.name,
        "created_at": time(commit.created_at),
        "product": {"id": commit.product_id.to_string(), "name": product_name},
        "priority": Money::from_decimal(commit.priority),
        "access_schedule": {"credit_type": ct, "schedule_items": segments},
        "applicable_product_ids": commit.applicable_product_ids.iter().map(Id::to_string).collect::<Vec<_>>(),
        "applicable_product_tags": commit.applicable_product_tags,
        "contract": {"id": contract.id.to_string()},
        "rate_type": "LIST_RATE",
    });
    if let Some(description) = &commit.description {
        out["description"] = json!(description);
    }
    if commit.created_by_threshold.is_none() {
        out["created_by"] = json!(CREATED_BY);
    }
    if commit.kind != CommitKind::Credit && !commit.invoice_schedule.is_empty() {
        let items: Vec<Value> = commit
            .invoice_schedule
            .iter()
            .map(|i| {
                json!({
                    "id": i.id.to_string(),
                    "timestamp": time(i.timestamp),
                    "amount": i.amount,
                    "quantity": Money::from_decimal(i.quantity),
                    "unit_price": i.unit_price,
                    "invoice_id": i.invoice_id.to_string(),
                })
            })
            .collect();
        out["invoice_schedule"] = json!({"credit_type": ct, "schedule_items": items});
        out["invoice_contract"] = json!({"id": contract.id.to_string()});
    }
    if let Some(archived) = commit.archived_at {
        out["archived_at"] = json!(time(archived));
    }
    gate_workflow(&mut out, workflows.get(&commit.id).copied());
    if include_balance {
        out["balance"] = json!(commit.balance_at(as_of).unwrap_or(Money::ZERO));
    }
    if include_ledger {
        let ledger: Vec<Value> = commit
            .ledger(contract.id, as_of)
            .into_iter()
            .map(|e| {
                let mut entry = json!({
                    "type": e.entry_type.as_str(),
                    "amount": e.amount,
                    "segment_id": e.segment_id.to_string(),
                    "timestamp": time(e.timestamp),
                });
                if let Some(invoice) = e.invoice_id {
                    entry["invoice_id"] = json!(invoice.to_string());
                }
                if let Some(contract) = e.contract_id {
                    entry["contract_id"] = json!(contract.to_string());
                }
                entry
            })
            .collect();
        out["ledger"] = json!(ledger);
    }
    out
}

fn visible(commit: &Commit) -> bool {
    // A commit whose purchase failed is never usable: Metronome does not list it.
    !matches!(
        commit.release,
        crate::domain::contract::Release::Canceled { .. }
    )
}

/// `ContractV2` (flat: commits and credits at the top level).
pub fn contract_v2(
    contract: &Contract,
    catalog: &Catalog,
    as_of: Timestamp,
    include_ledger: bool,
    include_balance: bool,
) -> Value {
    let (credits, commits): (Vec<&Commit>, Vec<&Commit>) = contract
        .commits
        .iter()
        .filter(|c| visible(c))
        .partition(|c| c.kind == CommitKind::Credit);
    let workflows = workflows_by_commit(contract);
    let render = |c: &&Commit| {
        commit(
            contract,
            c,
            (catalog, &workflows),
            as_of,
            include_ledger,
            include_balance,
        )
    };
    let mut out = json!({
        "id": contract.id.to_string(),
        "customer_id": contract.customer_id.to_string(),
        "created_at": time(contract.created_at),
        "created_by": CREATED_BY,
        "starting_at": time(contract.starting_at),
        "rate_card_id": contract.rate_card_id.to_string(),
        "commits": commits.iter().map(render).collect::<Vec<_>>(),
        "credits": credits.iter().map(render).collect::<Vec<_>>(),
        "overrides": [],
        "scheduled_charges": [],
        "transitions": [],
        "usage_filter": [],
        "usage_statement_schedule": {
            "frequency": "MONTHLY",
            "billing_anchor_date": time(contract.starting_at.month_start()),
        },
        "has_more": {"commits": false, "credits": false},
    });
    if let Some(end) = contract.ending_before {
        out["ending_before"] = json!(time(end));
    }
    if let Some(name) = &contract.name {
        out["name"] = json!(name);
    }
    if let Some(key) = &contract.uniqueness_key {
        out["uniqueness_key"] = json!(key);
    }
    if let Some(config) = &contract.spend_threshold {
        out["spend_threshold_configuration"] = threshold(config);
    }
    if let Some(config) = &contract.prepaid_threshold {
        out["prepaid_balance_threshold_configuration"] = threshold(config);
    }
    out
}

/// v1 `Contract`: `current` and `initial` hold the contract without amendments.
pub fn contract_v1(
    contract: &Contract,
    catalog: &Catalog,
    as_of: Timestamp,
    include_ledger: bool,
    include_balance: bool,
) -> Value {
    let mut flat = contract_v2(contract, catalog, as_of, include_ledger, include_balance);
    let spend = flat
        .as_object_mut()
        .and_then(|m| m.remove("spend_threshold_configuration"));
    let prepaid = flat
        .as_object_mut()
        .and_then(|m| m.remove("prepaid_balance_threshold_configuration"));
    if let Some(m) = flat.as_object_mut() {
        m.remove("id");
        m.remove("customer_id");
        m.remove("usage_filter");
        m.remove("has_more");
    }
    let mut out = json!({
        "id": contract.id.to_string(),
        "customer_id": contract.customer_id.to_string(),
        "amendments": [],
        "current": flat.clone(),
        "initial": flat,
    });
    if let Some(spend) = spend {
        out["spend_threshold_configuration"] = spend;
    }
    if let Some(prepaid) = prepaid {
        out["prepaid_balance_threshold_configuration"] = prepaid;
    }
    if let Some(key) = &contract.uniqueness_key {
        out["uniqueness_key"] = json!(key);
    }
    out
}

fn status(status: InvoiceStatus) -> &'static str {
    status.as_str()
}

/// The draft (or finalized) USAGE invoice of one billing period: a usage line per product
/// with the covered part shown as applied commits and credits.
pub fn usage_invoice(
    customer: Id,
    contract: &Contract,
    period: &UsagePeriod,
    catalog: &Catalog,
) -> Value {
    let ct = credit_type(&contract.credit_type);
    let mut lines = Vec::new();
    let mut total = Money::ZERO;
    let mut subtotal = Money::ZERO;
    for line in &period.lines {
        let product_name = catalog
            .product(line.product_id)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        subtotal = subtotal.checked_add(line.charged).unwrap_or(subtotal);
        total = total.checked_add(line.uncovered()).unwrap_or(total);
        lines.push(json!({
            "name": product_name,
            "type": "usage",
            "credit_type": ct,
            "product_id": line.product_id.to_string(),
            "product_type": "UsageProductListItem",
            "quantity": Money::from_decimal(line.aggregate.quantity()),
            "total": line.charged,
            "starting_at": time(period.starting_at),
            "ending_before": time(period.ending_before),
        }));
        if line.covered.is_positive() {
            lines.push(json!({
                "name": format!("{product_name} (commits and credits applied)"),
                "type": "applied_commit_or_credit",
                "credit_type": ct,
                "product_id": line.product_id.to_string(),
                "total": Money::ZERO.checked_sub(line.covered).unwrap_or(Money::ZERO),
                "starting_at": time(period.starting_at),
                "ending_before": time(period.ending_before),
            }));
        }
    }
    json!({
        "id": period.invoice_id.to_string(),
        "customer_id": customer.to_string(),
        "contract_id": contract.id.to_string(),
        "type": "USAGE",
        "status": status(period.status),
        "credit_type": ct,
        "start_timestamp": time(period.starting_at),
        "end_timestamp": time(period.ending_before),
        "issued_at": time(period.ending_before),
        "line_items": lines,
        "subtotal": subtotal,
        "total": total,
    })
}

/// A SCHEDULED invoice with its `commit_purchase` line.
pub fn purchase_invoice(
    customer: Id,
    contract: &Contract,
    purchase: &PurchaseInvoice,
    workflows: &FxHashMap<Id, &Workflow>,
) -> Value {
    let ct = credit_type(&contract.credit_type);
    let mut lines = vec![json!({
        "name": purchase.name,
        "type": "commit_purchase",
        "credit_type": ct,
        "product_id": purchase.product_id.to_string(),
        "product_type": "FixedProductListItem",
        "commit_id": purchase.commit_id.to_string(),
        "commit_type": "PrepaidCommit",
        "quantity": 1,
        "unit_price": purchase.subtotal,
        "total": purchase.subtotal,
    })];
    if purchase.tax.is_positive() {
        lines.push(json!({
            "name": "Tax",
            "type": "tax",
            "credit_type": ct,
            "total": purchase.tax,
        }));
    }
    let mut out = json!({
        "id": purchase.id.to_string(),
        "customer_id": customer.to_string(),
        "contract_id": contract.id.to_string(),
        "type": "SCHEDULED",
        "status": status(purchase.status),
        "credit_type": ct,
        "issued_at": time(purchase.issued_at),
        "start_timestamp": time(purchase.issued_at),
        "end_timestamp": time(purchase.issued_at),
        "line_items": lines,
        "subtotal": purchase.subtotal,
        "total": purchase.total,
    });
    let workflow = workflows.get(&purchase.commit_id).copied();
    gate_workflow(&mut out, workflow);
    // Who collects it: Stripe for a STRIPE gate, the operator's own system ("custom") for an
    // EXTERNAL one; an invoice no provider collects has no external invoice.
    let provider = workflow.and_then(|w| match w.gate.gate_type {
        GateType::Stripe => Some("stripe"),
        GateType::External => Some("custom"),
        GateType::None => None,
    });
    if let (Some(external), Some(provider)) = (&purchase.external_status, provider) {
        out["external_invoice"] = json!({
            "billing_provider_type": provider,
            "external_status": external,
            "invoiced_total": purchase.total,
        });
    }
    out
}
