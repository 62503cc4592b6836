//! Domain state rendered in Metronome's response shapes (the SDK's types: `Commit`, `Credit`,
//! `ContractV2`, v1 `Contract`, threshold configurations, `Invoice`) as the typed views of
//! [`super::views`]. Amounts are exact JSON numbers in the credit type's unit; times are RFC 3339.

use rustc_hash::FxHashMap;

use super::views::{
    AccessScheduleView, BalanceExcludeView, BalanceSpecifierView, CommitView, ContractTermsView,
    ContractV1View, ContractV2View, CreditTypeView, CustomFieldFilterView, CustomerConfigView,
    CustomerView, DiscountView, ExternalInvoiceView, GateWorkflowRef, HasMoreView, IdRef,
    InvoiceItemView, InvoiceScheduleView, InvoiceView, LedgerEntryView, LineItemView,
    PaymentGateView, PrecalculatedTaxView, ProductRef, RechargeHoldView, RechargeLimitsView,
    SegmentView, StateChangeView, StripeConfigView, ThresholdCommitView, ThresholdView,
    UsageStatementScheduleView, WorkflowView,
};
use super::wire::time;
use crate::domain::Catalog;
use crate::domain::contract::{
    Commit, CommitKind, Contract, PurchaseInvoice, ThresholdConfig, ThresholdKind, UsagePeriod,
};
use crate::domain::customer::{Customer, CustomerCommit, CustomerProfile};
use crate::domain::gate::{
    GateType, PaymentGateConfig, StateChange, StripePaymentType, TaxType, Workflow,
};
use crate::domain::money::{Conversion, CreditType};
use crate::domain::{Id, Money, Timestamp};

/// Who created objects made through the API (Metronome reports a user; we have tokens).
pub const CREATED_BY: &str = "Tollgate API";

pub fn credit_type(ct: &CreditType) -> CreditTypeView {
    CreditTypeView {
        id: ct.id.to_string(),
        name: ct.name.clone(),
    }
}

/// A credit type by id, as the catalog names it (a custom pricing unit is never removed; its
/// id stands for its name should it be missing all the same).
pub fn credit_type_of(catalog: &Catalog, id: Id) -> CreditTypeView {
    match catalog.credit_type(id) {
        Some(ct) => credit_type(&ct),
        None => CreditTypeView {
            id: id.to_string(),
            name: id.to_string(),
        },
    }
}

fn ids(list: &[Id]) -> Vec<String> {
    list.iter().map(Id::to_string).collect()
}

/// The SDK's `CustomerDetail`.
pub fn customer_detail(profile: &CustomerProfile) -> CustomerView {
    let mut view = customer(profile);
    view.customer_config = Some(CustomerConfigView {
        salesforce_account_id: None,
    });
    view.created_at = Some(time(profile.created_at));
    view.updated_at = Some(time(profile.created_at));
    view
}

/// The SDK's `Customer` (the create answer).
pub fn customer(profile: &CustomerProfile) -> CustomerView {
    let external_id = profile
        .external_id
        .clone()
        .or_else(|| profile.ingest_aliases.first().cloned())
        .unwrap_or_else(|| profile.id.to_string());
    CustomerView {
        id: profile.id.to_string(),
        name: profile.name.clone(),
        external_id,
        ingest_aliases: profile.ingest_aliases.clone(),
        custom_fields: profile.custom_fields.iter().cloned().collect(),
        customer_config: None,
        created_at: None,
        updated_at: None,
        archived_at: profile.archived_at.map(time),
    }
}

fn gate_type_name(gate_type: GateType) -> &'static str {
    match gate_type {
        GateType::None => "NONE",
        GateType::External => "EXTERNAL",
        GateType::Stripe => "STRIPE",
    }
}

fn gate(config: &PaymentGateConfig) -> PaymentGateView {
    PaymentGateView {
        payment_gate_type: gate_type_name(config.gate_type),
        tax_type: match config.tax_type {
            TaxType::None => "NONE",
            TaxType::Stripe => "STRIPE",
            TaxType::Anrok => "ANROK",
            TaxType::Precalculated => "PRECALCULATED",
        },
        stripe_config: config.stripe.as_ref().map(|stripe| StripeConfigView {
            payment_type: match stripe.payment_type {
                StripePaymentType::Invoice => "INVOICE",
                StripePaymentType::PaymentIntent => "PAYMENT_INTENT",
            },
            invoice_metadata: stripe.invoice_metadata.iter().cloned().collect(),
        }),
        precalculated_tax_config: config.precalculated_tax.as_ref().map(|(amount, name)| {
            PrecalculatedTaxView {
                tax_amount: *amount,
                tax_name: name.clone(),
            }
        }),
    }
}

pub fn threshold(config: &ThresholdConfig) -> ThresholdView {
    let prepaid = config.kind == ThresholdKind::PrepaidBalance;
    ThresholdView {
        commit: ThresholdCommitView {
            product_id: config.commit.product_id.to_string(),
            name: config.commit.name.clone(),
            description: config.commit.description.clone(),
            priority: config.commit.priority.map(Money::from_decimal),
            applicable_product_ids: prepaid.then(|| ids(&config.commit.applicable_product_ids)),
            applicable_product_tags: prepaid.then(|| config.commit.applicable_product_tags.clone()),
        },
        is_enabled: config.is_enabled,
        payment_gate_config: gate(&config.gate),
        threshold_amount: config.threshold_amount,
        recharge_to_amount: config.recharge_to_amount,
        discount_configuration: config.discount.as_ref().map(|d| DiscountView {
            payment_fraction: Money::from_decimal(d.payment_fraction),
        }),
        recharge_limits: config.limits.as_ref().map(|l| RechargeLimitsView {
            max_recharges_per_period: l.max_recharges_per_period,
            max_recharge_amount_per_period: l.max_amount_per_period,
            min_recharge_interval_minutes: l.min_interval_minutes,
            recharge_commit_duration_days: l.commit_duration_days,
        }),
        recharge_hold: config.hold.map(|h| RechargeHoldView {
            limit: h.rail.as_str(),
            since: h.since.to_rfc3339(),
            until: h.until.to_rfc3339(),
        }),
        custom_credit_type_id: config.credit_type.map(|c| c.credit_type_id.to_string()),
        threshold_balance_specifiers: (!config.balance_specifiers.is_empty()).then(|| {
            config
                .balance_specifiers
                .iter()
                .map(|specifier| BalanceSpecifierView {
                    exclude: specifier
                        .iter()
                        .map(|exclusion| BalanceExcludeView {
                            custom_field_filters: exclusion
                                .iter()
                                .map(|f| CustomFieldFilterView {
                                    entity: f.entity.as_str(),
                                    key: f.key.clone(),
                                    value: f.value.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect()
        }),
    }
}

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
fn gate_workflow(workflow: Option<&Workflow>) -> Option<GateWorkflowRef> {
    workflow.map(|w| GateWorkflowRef {
        id: w.id.to_string(),
        state: w.state.as_str(),
        payment_gate_type: gate_type_name(w.gate.gate_type),
    })
}

/// A payment-gate workflow with its history.
pub fn workflow(customer: Id, w: &Workflow, history: &[StateChange]) -> WorkflowView {
    WorkflowView {
        id: w.id.to_string(),
        state: w.state.as_str(),
        workflow_type: w.kind.as_str(),
        payment_gate_type: gate_type_name(w.gate.gate_type),
        customer_id: customer.to_string(),
        contract_id: w.contract_id.to_string(),
        commit_id: w.commit_id.to_string(),
        invoice_id: w.invoice_id.to_string(),
        access_amount: w.access_amount,
        invoice_total: w.invoice_total,
        started_at: time(w.started_at),
        ended_at: w.ended_at.map(time),
        payment_intent_id: w.payment_intent_id.clone(),
        error_message: w.error.as_ref().and_then(|e| e.message.clone()),
        error_code: w.error.as_ref().and_then(|e| e.code.clone()),
        history: history
            .iter()
            .map(|c| StateChangeView {
                state: c.state.as_str(),
                at: time(c.at),
                reason: c.reason.clone(),
            })
            .collect(),
    }
}

/// A contract's commit (`Commit` shape) or credit (`Credit` shape, `type: "CREDIT"`).
pub fn commit(
    contract: &Contract,
    commit: &Commit,
    (catalog, workflows): (&Catalog, &FxHashMap<Id, &Workflow>),
    as_of: Timestamp,
    include_ledger: bool,
    include_balance: bool,
) -> CommitView {
    let invoiced = commit.kind != CommitKind::Credit && !commit.invoice_schedule.is_empty();
    let owner = Owner {
        credit_type: &contract.credit_type,
        contract: Some(contract.id),
        invoice_contract: invoiced.then_some(contract.id),
        applicable_contract_ids: None,
    };
    let contract_id = contract.id;
    let options = (as_of, include_ledger, include_balance);
    commit_view(commit, owner, (catalog, workflows), options, |_| {
        Some(contract_id)
    })
}

/// A customer-level commit or credit; `customer` names the contract of each usage invoice its
/// ledger deducts for.
pub fn customer_commit(
    shared: &CustomerCommit,
    customer: &Customer,
    catalog: &Catalog,
    (as_of, include_ledger, include_balance): (Timestamp, bool, bool),
) -> CommitView {
    let owner = Owner {
        credit_type: &shared.credit_type,
        contract: None,
        invoice_contract: shared.invoice_contract_id,
        applicable_contract_ids: Some(&shared.applicable_contract_ids),
    };
    let options = (as_of, include_ledger, include_balance);
    commit_view(
        &shared.commit,
        owner,
        (catalog, &FxHashMap::default()),
        options,
        |invoice| customer.contract_of_usage_invoice(invoice),
    )
}

/// Whose a rendered commit is.
struct Owner<'a> {
    credit_type: &'a CreditType,
    contract: Option<Id>,
    invoice_contract: Option<Id>,
    /// Customer-level commits only.
    applicable_contract_ids: Option<&'a [Id]>,
}

fn commit_view(
    commit: &Commit,
    owner: Owner<'_>,
    (catalog, workflows): (&Catalog, &FxHashMap<Id, &Workflow>),
    (as_of, include_ledger, include_balance): (Timestamp, bool, bool),
    contract_of: impl Fn(Id) -> Option<Id>,
) -> CommitView {
    let product_name = catalog
        .product(commit.product_id)
        .map(|p| p.name.clone())
        .unwrap_or_default();
    // The access schedule is in the commit's own unit; invoices are always fiat.
    let fiat = credit_type(owner.credit_type);
    let access = commit
        .credit_type
        .map_or_else(|| fiat.clone(), |id| credit_type_of(catalog, id));
    let invoiced = commit.kind != CommitKind::Credit && !commit.invoice_schedule.is_empty();
    CommitView {
        id: commit.id.to_string(),
        kind: match commit.kind {
            CommitKind::Prepaid => "PREPAID",
            CommitKind::Postpaid => "POSTPAID",
            CommitKind::Credit => "CREDIT",
        },
        name: commit.name.clone(),
        created_at: time(commit.created_at),
        product: ProductRef {
            id: commit.product_id.to_string(),
            name: product_name,
        },
        priority: Money::from_decimal(commit.priority),
        access_schedule: AccessScheduleView {
            credit_type: access,
            schedule_items: commit
                .segments
                .iter()
                .filter(|s| !s.is_removed())
                .map(|s| SegmentView {
                    id: s.id.to_string(),
                    amount: s.amount,
                    starting_at: time(s.starting_at),
                    ending_before: time(s.ending_before),
                })
                .collect(),
        },
        applicable_product_ids: ids(&commit.applicable_product_ids),
        applicable_product_tags: commit.applicable_product_tags.clone(),
        contract: owner.contract.map(|id| IdRef { id: id.to_string() }),
        applicable_contract_ids: owner.applicable_contract_ids.map(ids),
        rate_type: "LIST_RATE",
        description: commit.description.clone(),
        created_by: commit.created_by_threshold.is_none().then_some(CREATED_BY),
        invoice_schedule: invoiced.then(|| InvoiceScheduleView {
            credit_type: fiat,
            schedule_items: commit
                .invoice_schedule
                .iter()
                .map(|i| InvoiceItemView {
                    id: i.id.to_string(),
                    timestamp: time(i.timestamp),
                    amount: i.amount,
                    quantity: Money::from_decimal(i.quantity),
                    unit_price: i.unit_price,
                    invoice_id: i.invoice_id.to_string(),
                })
                .collect(),
        }),
        invoice_contract: owner
            .invoice_contract
            .filter(|_| invoiced)
            .map(|id| IdRef { id: id.to_string() }),
        archived_at: commit.archived_at.map(time),
        payment_gate_workflow: gate_workflow(workflows.get(&commit.id).copied()),
        balance: include_balance.then(|| commit.balance_at(as_of).unwrap_or(Money::ZERO)),
        ledger: include_ledger.then(|| {
            commit
                .ledger(contract_of, as_of)
                .into_iter()
                .map(|e| LedgerEntryView {
                    entry_type: e.entry_type.as_str(),
                    amount: e.amount,
                    segment_id: e.segment_id.to_string(),
                    timestamp: time(e.timestamp),
                    invoice_id: e.invoice_id.map(|id| id.to_string()),
                    contract_id: e.contract_id.map(|id| id.to_string()),
                    reason: e.reason,
                })
                .collect()
        }),
        custom_fields: commit.custom_fields.iter().cloned().collect(),
    }
}

fn visible(commit: &Commit) -> bool {
    // A commit whose purchase failed is never usable: Metronome does not list it.
    !matches!(
        commit.release,
        crate::domain::contract::Release::Canceled { .. }
    )
}

/// How a contract is rendered: balances as of a time, ledgers and balances when asked.
#[derive(Clone, Copy)]
pub struct ContractOptions {
    pub as_of: Timestamp,
    pub include_ledger: bool,
    pub include_balance: bool,
}

/// The terms both contract shapes share.
fn terms(contract: &Contract, catalog: &Catalog, options: ContractOptions) -> ContractTermsView {
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
            options.as_of,
            options.include_ledger,
            options.include_balance,
        )
    };
    ContractTermsView {
        created_at: time(contract.created_at),
        created_by: CREATED_BY,
        starting_at: time(contract.starting_at),
        rate_card_id: contract.rate_card_id.to_string(),
        commits: commits.iter().map(render).collect(),
        credits: credits.iter().map(render).collect(),
        overrides: Vec::new(),
        scheduled_charges: Vec::new(),
        transitions: Vec::new(),
        usage_statement_schedule: UsageStatementScheduleView {
            frequency: "MONTHLY",
            billing_anchor_date: time(contract.starting_at.month_start()),
        },
        ending_before: contract.ending_before.map(time),
        name: contract.name.clone(),
        uniqueness_key: contract.uniqueness_key.clone(),
    }
}

/// `ContractV2` (flat: commits and credits at the top level).
pub fn contract_v2(
    contract: &Contract,
    catalog: &Catalog,
    options: ContractOptions,
) -> ContractV2View {
    ContractV2View {
        id: contract.id.to_string(),
        customer_id: contract.customer_id.to_string(),
        terms: terms(contract, catalog, options),
        usage_filter: Vec::new(),
        has_more: HasMoreView {
            commits: false,
            credits: false,
        },
        spend_threshold_configuration: contract.spend_threshold.as_ref().map(threshold),
        prepaid_balance_threshold_configuration: contract.prepaid_threshold.as_ref().map(threshold),
    }
}

/// v1 `Contract`: `current` and `initial` hold the contract without amendments.
pub fn contract_v1(
    contract: &Contract,
    catalog: &Catalog,
    options: ContractOptions,
) -> ContractV1View {
    let terms = terms(contract, catalog, options);
    ContractV1View {
        id: contract.id.to_string(),
        customer_id: contract.customer_id.to_string(),
        amendments: Vec::new(),
        current: terms.clone(),
        initial: terms,
        spend_threshold_configuration: contract.spend_threshold.as_ref().map(threshold),
        prepaid_balance_threshold_configuration: contract.prepaid_threshold.as_ref().map(threshold),
        uniqueness_key: contract.uniqueness_key.clone(),
    }
}

/// The draft (or finalized) USAGE invoice of one billing period: a usage line per product
/// with the covered part shown as applied commits and credits. A product priced in a custom
/// pricing unit has its lines in that unit, and what commits and credits in that unit left
/// uncovered is converted into fiat by one `cpu_conversion` line per unit (Metronome's), of
/// which fiat commits and credits paid what an `applied_commit_or_credit` line in fiat shows:
/// the invoice's `total` is fiat, what the fiat lines and the conversions leave; `subtotal` is
/// every line's charge in fiat.
pub fn usage_invoice(
    customer: Id,
    contract: &Contract,
    period: &UsagePeriod,
    catalog: &Catalog,
) -> InvoiceView {
    let ct = credit_type(&contract.credit_type);
    let mut lines = Vec::new();
    let mut total = Money::ZERO;
    let mut subtotal = Money::ZERO;
    // Per custom pricing unit: (conversion, uncovered in the unit, uncovered in fiat).
    let mut conversions: Vec<(Conversion, Money, Money)> = Vec::new();
    let line =
        |name: String, line_type, unit: &CreditTypeView, product_id: Id, total| LineItemView {
            name,
            line_type,
            credit_type: unit.clone(),
            product_id: Some(product_id.to_string()),
            product_type: None,
            commit_id: None,
            commit_type: None,
            quantity: None,
            unit_price: None,
            total,
            starting_at: Some(time(period.starting_at)),
            ending_before: Some(time(period.ending_before)),
        };
    for usage in &period.lines {
        let product_name = catalog
            .product(usage.product_id)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        // Checked when the usage was charged: a line's charge converts without overflow.
        let charged_fiat = usage.to_fiat(usage.charged).unwrap_or(usage.charged);
        let uncovered_fiat = usage.uncovered_fiat().unwrap_or(Money::ZERO);
        subtotal = subtotal.checked_add(charged_fiat).unwrap_or(subtotal);
        total = total.checked_add(uncovered_fiat).unwrap_or(total);
        let unit = match usage.conversion {
            None => ct.clone(),
            Some(conversion) => {
                let uncovered = usage.uncovered();
                let gross = conversion.to_fiat(uncovered).unwrap_or(uncovered_fiat);
                match conversions.iter_mut().find(|(c, ..)| *c == conversion) {
                    Some((_, amount, fiat)) => {
                        *amount = amount.checked_add(uncovered).unwrap_or(*amount);
                        *fiat = fiat.checked_add(gross).unwrap_or(*fiat);
                    }
                    None => conversions.push((conversion, uncovered, gross)),
                }
                credit_type_of(catalog, conversion.credit_type_id)
            }
        };
        let mut charged = line(
            product_name.clone(),
            "usage",
            &unit,
            usage.product_id,
            usage.charged,
        );
        charged.product_type = Some("UsageProductListItem");
        charged.quantity = Some(Money::from_decimal(usage.aggregate.quantity()));
        lines.push(charged);
        if usage.covered.is_positive() {
            lines.push(line(
                format!("{product_name} (commits and credits applied)"),
                "applied_commit_or_credit",
                &unit,
                usage.product_id,
                Money::ZERO
                    .checked_sub(usage.covered)
                    .unwrap_or(Money::ZERO),
            ));
        }
        if usage.covered_fiat.is_positive() {
            lines.push(line(
                format!("{product_name} (fiat commits and credits applied, converted)"),
                "applied_commit_or_credit",
                &ct,
                usage.product_id,
                Money::ZERO
                    .checked_sub(usage.covered_fiat)
                    .unwrap_or(Money::ZERO),
            ));
        }
    }
    for (conversion, amount, fiat) in conversions {
        if !amount.is_positive() {
            continue;
        }
        let unit = credit_type_of(catalog, conversion.credit_type_id);
        lines.push(LineItemView {
            name: format!("{} converted to {}", unit.name, ct.name),
            line_type: "cpu_conversion",
            credit_type: ct.clone(),
            product_id: None,
            product_type: None,
            commit_id: None,
            commit_type: None,
            quantity: Some(amount),
            unit_price: Some(Money::from_decimal(conversion.fiat_per_unit)),
            total: fiat,
            starting_at: Some(time(period.starting_at)),
            ending_before: Some(time(period.ending_before)),
        });
    }
    InvoiceView {
        id: period.invoice_id.to_string(),
        customer_id: customer.to_string(),
        contract_id: contract.id.to_string(),
        invoice_type: "USAGE",
        status: period.status.as_str(),
        credit_type: ct.clone(),
        start_timestamp: time(period.starting_at),
        end_timestamp: time(period.ending_before),
        issued_at: time(period.ending_before),
        line_items: lines,
        subtotal,
        total,
        payment_gate_workflow: None,
        external_invoice: None,
    }
}

/// A SCHEDULED invoice with its `commit_purchase` line.
pub fn purchase_invoice(
    customer: Id,
    contract: &Contract,
    purchase: &PurchaseInvoice,
    workflows: &FxHashMap<Id, &Workflow>,
) -> InvoiceView {
    let ct = credit_type(&contract.credit_type);
    let mut lines = vec![LineItemView {
        name: purchase.name.clone(),
        line_type: "commit_purchase",
        credit_type: ct.clone(),
        product_id: Some(purchase.product_id.to_string()),
        product_type: Some("FixedProductListItem"),
        commit_id: Some(purchase.commit_id.to_string()),
        commit_type: Some("PrepaidCommit"),
        quantity: Some(Money::from_i64(1)),
        unit_price: Some(purchase.subtotal),
        total: purchase.subtotal,
        starting_at: None,
        ending_before: None,
    }];
    if purchase.tax.is_positive() {
        lines.push(LineItemView {
            name: "Tax".into(),
            line_type: "tax",
            credit_type: ct.clone(),
            product_id: None,
            product_type: None,
            commit_id: None,
            commit_type: None,
            quantity: None,
            unit_price: None,
            total: purchase.tax,
            starting_at: None,
            ending_before: None,
        });
    }
    let workflow = workflows.get(&purchase.commit_id).copied();
    // Who collects it: Stripe for a STRIPE gate, the operator's own system ("custom") for an
    // EXTERNAL one; an invoice no provider collects has no external invoice.
    let provider = workflow.and_then(|w| match w.gate.gate_type {
        GateType::Stripe => Some("stripe"),
        GateType::External => Some("custom"),
        GateType::None => None,
    });
    let external_invoice = match (&purchase.external_status, provider) {
        (Some(external), Some(provider)) => Some(ExternalInvoiceView {
            billing_provider_type: provider,
            external_status: external.clone(),
            invoiced_total: purchase.total,
        }),
        _ => None,
    };
    InvoiceView {
        id: purchase.id.to_string(),
        customer_id: customer.to_string(),
        contract_id: contract.id.to_string(),
        invoice_type: "SCHEDULED",
        status: purchase.status.as_str(),
        credit_type: ct,
        issued_at: time(purchase.issued_at),
        start_timestamp: time(purchase.issued_at),
        end_timestamp: time(purchase.issued_at),
        line_items: lines,
        subtotal: purchase.subtotal,
        total: purchase.total,
        payment_gate_workflow: gate_workflow(workflow),
        external_invoice,
    }
}
