//! Contract edits: creating a contract and editing one (commits, credits, thresholds).
//!
//! Owns checking what a request describes (uniqueness keys, commit and credit specifications,
//! threshold configurations) and building commits from it: an ungated commit is usable at once,
//! with its scheduled invoices. A payment-gated commit is handed to `workflows`, which withholds
//! it until its payment outcome. It must not change a contract before the whole edit is checked,
//! and it does not evaluate thresholds itself: every edit ends with `workflows`' evaluation.

use rust_decimal::Decimal;

use super::lifecycle::contract_notice;
use super::usage::{Drawable, cover_outstanding};
use super::workflows::{begin_gate, id_of_workflow, start_manual_workflow};
use super::{
    Applied, CommitSpec, ContractEdit, ContractSpec, Ctx, Customer, CustomerProfile,
    DEFAULT_PRIORITY, ThresholdUpdate, commit_name,
};
use crate::domain::bounds;
use crate::domain::catalog::{ProductKind, RateCard};
use crate::domain::contract::DrawSource;
use crate::domain::contract::{
    Commit, CommitKind, Contract, ContractCaches, InvoiceScheduleItem, InvoiceStatus, Lifecycle,
    PurchaseInvoice, Release, Segment, ThresholdConfig, ThresholdKind,
};
use crate::domain::effects::NoticeType;
use crate::domain::gate::{GateType, WorkflowKind};
use crate::domain::ids::{Id, Timestamp};
use crate::domain::money::{CreditType, Money};
use crate::domain::rejection::Rejection;

impl Customer {
    pub(super) fn create_contract(
        &mut self,
        spec: &ContractSpec,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        let customer_id = profile.id;
        if self.contracts.iter().any(|c| c.id == spec.id) {
            return Err(Rejection::AlreadyExists);
        }
        if let Some(key) = &spec.uniqueness_key {
            validate_uniqueness_key(key)?;
            if self
                .contracts
                .iter()
                .any(|c| c.uniqueness_key.as_ref() == Some(key))
            {
                return Err(Rejection::UniquenessKeyReused);
            }
        }
        let card = ctx
            .catalog
            .rate_card(spec.rate_card_id)
            .ok_or_else(|| Rejection::RateCardNotFound(spec.rate_card_id.to_string()))?;
        if spec
            .ending_before
            .is_some_and(|end| end <= spec.starting_at)
        {
            return Err(Rejection::invalid(
                "ending_before",
                "must be after starting_at",
            ));
        }
        for (field, list) in [("commits", &spec.commits), ("credits", &spec.credits)] {
            for (i, commit) in list.iter().enumerate() {
                if commit.payment_gate.is_some() {
                    return Err(Rejection::invalid(
                        &format!("{field}[{i}].payment_gate_config"),
                        "payment-gated commits are added with /v2/contracts/edit",
                    ));
                }
                validate_commit(commit, &format!("{field}[{i}]"), ctx, profile, Some(card))?;
            }
        }
        let mut thresholds = [spec.spend_threshold.clone(), spec.prepaid_threshold.clone()];
        for config in thresholds.iter_mut().flatten() {
            resolve_unit(config, card, ctx)?;
            validate_threshold(config, &card.fiat_credit_type, ctx, profile)?;
        }
        // Checked: build the contract.
        let mut contract = new_contract(spec, thresholds, customer_id, &card.fiat_credit_type, ctx);
        for (i, commit) in spec.commits.iter().chain(&spec.credits).enumerate() {
            let id = Id::derive(spec.id, "commit", i as u64);
            add_ungated_commit(&mut contract, id, commit, ctx)?;
        }
        contract.rebuild_caches();
        let customer = (customer_id, profile.custom_fields.as_slice());
        let notice = contract_notice(&contract, NoticeType::ContractCreate, 0, customer, ctx.at);
        applied.effects.push(notice);
        crate::domain::push_first_exact(&mut self.contracts, contract);
        let ci = self.contracts.len() - 1;
        // Thresholds evaluate at once on creation.
        self.evaluate(ci, customer_id, ctx, applied)
    }

    /// `remember`: whether the edit's id is checked against and kept in the contract's recent
    /// edits (log version 9 on; an older entry replays as it applied then, when a retry of an
    /// edit that added no commits applied again).
    pub(super) fn edit_contract(
        &mut self,
        edit: &ContractEdit,
        remember: bool,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        let profile = self.profile()?;
        let customer_id = profile.id;
        let ci = self
            .contracts
            .iter()
            .position(|c| c.id == edit.contract_id)
            .ok_or(Rejection::ContractNotFound)?;
        // An edit that already applied (same edit id: a retried request) applies nothing.
        let first_commit = Id::derive(edit.edit_id, "commit", 0);
        if self.contracts[ci]
            .commits
            .iter()
            .any(|c| c.id == first_commit)
            || remember && self.contracts[ci].recent_edits.contains(&edit.edit_id)
        {
            return Err(Rejection::AlreadyExists);
        }
        let contract = &self.contracts[ci];
        if let Some(key) = &edit.uniqueness_key {
            validate_uniqueness_key(key)?;
            if contract.edit_keys.contains(key) {
                return Err(Rejection::UniquenessKeyReused);
            }
        }
        let card = ctx
            .catalog
            .rate_card(contract.rate_card_id)
            .ok_or_else(|| Rejection::RateCardNotFound(contract.rate_card_id.to_string()))?;
        let next_configs = next_thresholds((contract, card), edit, ctx, profile)?;
        if let Some(end) = edit.update_ending_before {
            check_new_end(contract, end, ctx.at)?;
        }
        let additions: Vec<&CommitSpec> =
            edit.add_commits.iter().chain(&edit.add_credits).collect();
        for (i, commit) in edit.add_commits.iter().enumerate() {
            validate_commit(
                commit,
                &format!("add_commits[{i}]"),
                ctx,
                profile,
                Some(card),
            )?;
        }
        for (i, credit) in edit.add_credits.iter().enumerate() {
            if credit.payment_gate.is_some() {
                return Err(Rejection::invalid(
                    &format!("add_credits[{i}].payment_gate_config"),
                    "credits cannot be payment-gated",
                ));
            }
            validate_commit(
                credit,
                &format!("add_credits[{i}]"),
                ctx,
                profile,
                Some(card),
            )?;
        }
        let archived = archived_by(contract, edit)?;
        // Checked: apply the edit.
        let customer = (customer_id, profile.custom_fields.clone());
        let contract = &mut self.contracts[ci];
        for &commit in &archived {
            archive(contract, commit, (customer.0, &customer.1), ctx.at, applied);
        }
        let grown = super::commit_updates::apply_updates(
            contract,
            &edit.update_commits,
            edit.edit_id,
            ctx,
        )?;
        if !edit.update_commits.is_empty()
            || !archived.is_empty()
                && !crate::defects::active(crate::defects::Defect::ArchivedStillDraws)
        {
            contract.rebuild_caches();
        }
        for commit in grown {
            // New money, or money for more products: it pays for uncovered usage now.
            cover_outstanding(
                &mut Drawable {
                    contract: &mut *contract,
                    pool: &mut [],
                },
                DrawSource::Contract(commit),
                ctx,
            )?;
        }
        let [spend, prepaid] = next_configs;
        contract.spend_threshold = spend;
        contract.prepaid_threshold = prepaid;
        if edit.add_prepaid_threshold.is_some() || edit.update_prepaid_threshold.is_some() {
            // Its balance specifiers may have changed what B counts.
            contract.balance_rules_changed();
            // Its rails may have changed: a held recharge is checked again now.
            if let Some(hold) = contract
                .prepaid_threshold
                .as_mut()
                .and_then(|c| c.hold.as_mut())
            {
                hold.until = hold.until.min(ctx.at);
            }
        }
        if let Some(end) = edit.update_ending_before {
            set_end(contract, end);
        }
        contract.edits += 1;
        if remember {
            if contract.recent_edits.len() >= crate::domain::contract::RECENT_EDITS {
                contract.recent_edits.remove(0);
            }
            contract.recent_edits.push(edit.edit_id);
        }
        if let Some(key) = &edit.uniqueness_key {
            contract.edit_keys.push(key.clone());
        }
        let notice = contract_notice(
            contract,
            NoticeType::ContractEdit,
            contract.edits,
            (customer.0, &customer.1),
            ctx.at,
        );
        applied.effects.push(notice);
        self.add_commits(ci, customer_id, edit.edit_id, additions, ctx, applied)?;
        // Every configuration edit forces an evaluation (and is_enabled -> true in particular).
        self.evaluate(ci, customer_id, ctx, applied)
    }

    /// Adds the commits and credits of an edit (checked) to contract `ci`: a payment-gated
    /// commit starts its workflow, any other is usable at once.
    fn add_commits(
        &mut self,
        ci: usize,
        customer_id: Id,
        edit_id: Id,
        additions: Vec<&CommitSpec>,
        ctx: &Ctx<'_>,
        applied: &mut Applied,
    ) -> Result<(), Rejection> {
        for (i, spec) in additions.into_iter().enumerate() {
            let id = Id::derive(edit_id, "commit", i as u64);
            applied.created.push(id);
            match &spec.payment_gate {
                Some(gate) => {
                    let contract = &mut self.contracts[ci];
                    start_manual_workflow(contract, id, spec, gate, ctx)?;
                    let workflow_id = id_of_workflow(id);
                    let wi = contract
                        .workflows
                        .iter()
                        .position(|w| w.id == workflow_id)
                        .ok_or(Rejection::WorkflowNotFound)?;
                    let stripe = self.profile.as_ref().and_then(|p| p.stripe.as_ref());
                    begin_gate(
                        &mut self.contracts[ci],
                        customer_id,
                        wi,
                        stripe,
                        ctx,
                        applied,
                    )?;
                }
                None => {
                    let contract = &mut self.contracts[ci];
                    add_ungated_commit(contract, id, spec, ctx)?;
                    contract.commit_released(contract.commits.len() - 1);
                    // The first commit with this id (ids come from the edit's id).
                    if let Some(commit) = contract.commits.iter().position(|c| c.id == id) {
                        cover_outstanding(
                            &mut Drawable {
                                contract,
                                pool: &mut [],
                            },
                            DrawSource::Contract(commit),
                            ctx,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The commits and credits `edit` archives, as indexes into the contract's commits, checked:
/// each is the contract's, in the list of its kind, not archived yet, named once, and not
/// waiting for its payment gate (a workflow in flight is cancelled first, so that no payment
/// arrives for an archived commit).
fn archived_by(contract: &Contract, edit: &ContractEdit) -> Result<Vec<usize>, Rejection> {
    let mut found = Vec::new();
    for (list, credit) in [
        (&edit.archive_commits, false),
        (&edit.archive_credits, true),
    ] {
        let field = if credit {
            "archive_credits"
        } else {
            "archive_commits"
        };
        for id in list {
            let why =
                |why: &str| Rejection::invalid(&format!("{field}[].id"), &format!("{id} {why}"));
            let ci = contract
                .commits
                .iter()
                .position(|c| c.id == *id)
                .ok_or_else(|| why("is not a commit or credit of this contract"))?;
            let commit = &contract.commits[ci];
            if (commit.kind == CommitKind::Credit) != credit {
                return Err(why(if credit {
                    "is a commit: archive it with archive_commits"
                } else {
                    "is a credit: archive it with archive_credits"
                }));
            }
            if commit.archived_at.is_some() {
                return Err(why("is archived already"));
            }
            if found.contains(&ci) {
                return Err(why("is named twice"));
            }
            if let Release::Gated { workflow_id } = commit.release {
                return Err(why(&format!(
                    "waits for its payment gate: cancel workflow {workflow_id} first"
                )));
            }
            // Its unissued invoices would be voided while the usage they pay for stays covered.
            let unissued = contract
                .purchases
                .iter()
                .any(|p| p.commit_id == commit.id && p.status == InvoiceStatus::Draft);
            if unissued && super::commit_updates::drawn_from(commit) {
                return Err(why(
                    "was drawn from and has invoices not issued yet: they stay due (archive it once they are issued)",
                ));
            }
            found.push(ci);
        }
    }
    Ok(found)
}

/// Archives commit `ci` at `at`: from then it draws nothing and counts in no balance; what it
/// covered stays covered, what remains expires (the ledger shows it), its segments end (the
/// lifecycle announces it) and its scheduled invoices not issued yet are voided. Announced
/// with `commit.archive` or `credit.archive`. The caller rebuilds the contract's caches.
fn archive(
    contract: &mut Contract,
    ci: usize,
    customer: (Id, &[(String, String)]),
    at: Timestamp,
    applied: &mut Applied,
) {
    let commit = &mut contract.commits[ci];
    commit.archived_at = Some(at);
    let id = commit.id;
    for purchase in contract
        .purchases
        .iter_mut()
        .filter(|p| p.commit_id == id && p.status == InvoiceStatus::Draft)
    {
        purchase.void();
    }
    let notice = super::lifecycle::archive_notice(contract.id, &contract.commits[ci], customer, at);
    applied.effects.push(notice);
}

/// Whether the contract may end at `end` (`None`: never): after it starts; not at or before the
/// start of a usage period (its usage would belong to no contract); not in the past inside a
/// period that billed usage (usage after the end would stay billed on a contract that has
/// ended, beyond corrections); never inside a finalized usage invoice's period; and never moved
/// at all while its last period is a finalized invoice cut short by the current end (later usage
/// would have no open period to go to). Together these keep every end at or after the end of
/// every finalized invoice, so Metronome's `allow_ending_before_finalized_invoice` changes
/// nothing here.
fn check_new_end(
    contract: &Contract,
    end: Option<Timestamp>,
    now: Timestamp,
) -> Result<(), Rejection> {
    let refuse = |why: String| Err(Rejection::invalid("ending_before", &why));
    if let Some(end) = end {
        if end <= contract.starting_at {
            return refuse("must be after the contract's starting_at".into());
        }
    }
    let final_cut_short = contract.periods.iter().find(|p| {
        p.status == InvoiceStatus::Finalized
            && p.ending_before < p.starting_at.next_month_start()
            && Some(p.ending_before) == contract.ending_before
    });
    if let Some(period) = final_cut_short {
        if end != contract.ending_before {
            return refuse(format!(
                "the contract's last usage invoice (the period starting {}) is final and ends with the contract: its end cannot move",
                period.starting_at.to_rfc3339()
            ));
        }
    }
    let Some(end) = end else {
        return Ok(());
    };
    if let Some(period) = contract.periods.iter().find(|p| p.starting_at >= end) {
        return refuse(format!(
            "usage is already billed on the period starting {}, at or after the new end",
            period.starting_at.to_rfc3339()
        ));
    }
    let containing = contract
        .periods
        .iter()
        .find(|p| p.starting_at < end && end < p.ending_before);
    if let Some(period) = containing {
        if period.status == InvoiceStatus::Finalized {
            return refuse(format!(
                "falls inside the finalized usage invoice of the period starting {}",
                period.starting_at.to_rfc3339()
            ));
        }
        if end < now && !period.lines.is_empty() {
            return refuse(format!(
                "is in the past inside the period starting {}, which already billed usage after it",
                period.starting_at.to_rfc3339()
            ));
        }
    }
    Ok(())
}

/// Moves the contract's end (checked by [`check_new_end`]): each draft usage period ends at
/// its month's end or the new contract end, whichever is first; finalized invoices stay as
/// they are. Thresholds stop evaluating at the end ([`Contract::covers`]) and the lifecycle
/// pass ends the segments still open and sends `contract.end` when it is reached.
fn set_end(contract: &mut Contract, end: Option<Timestamp>) {
    let old_end = contract.end_or_forever();
    contract.ending_before = end;
    let contract_end = contract.end_or_forever();
    if contract_end > old_end {
        // A threshold's commit runs to the contract's end (a recharge's, at most for the rail's
        // duration): what the customer paid for goes on with the contract rather than expiring
        // at the old end and being charged again.
        let duration_ms = contract
            .prepaid_threshold
            .as_ref()
            .and_then(|c| c.limits.as_ref())
            .and_then(|l| l.commit_duration_days)
            .map(|days| i64::from(days) * crate::domain::ids::MS_PER_DAY);
        for commit in contract
            .commits
            .iter_mut()
            .filter(|c| c.created_by_threshold.is_some())
        {
            let recharge = commit.created_by_threshold == Some(WorkflowKind::PrepaidBalance);
            for segment in commit
                .segments
                .iter_mut()
                .filter(|s| s.ending_before == old_end)
            {
                let end = match duration_ms {
                    Some(ms) if recharge => segment.starting_at.plus_ms(ms).min(contract_end),
                    _ => contract_end,
                };
                segment.ending_before = segment.ending_before.max(end);
            }
        }
    }
    for period in &mut contract.periods {
        if period.status == InvoiceStatus::Draft {
            period.ending_before = period.starting_at.next_month_start().min(contract_end);
        }
    }
    contract.periods_changed();
    contract.rebuild_caches();
}

/// An empty contract as `spec` describes it, with its thresholds not triggered yet; its commits
/// are added after.
fn new_contract(
    spec: &ContractSpec,
    [spend, prepaid]: [Option<ThresholdConfig>; 2],
    customer_id: Id,
    credit_type: &CreditType,
    ctx: &Ctx<'_>,
) -> Contract {
    Contract {
        id: spec.id,
        customer_id,
        rate_card_id: spec.rate_card_id,
        name: spec.name.clone(),
        starting_at: spec.starting_at,
        ending_before: spec.ending_before,
        credit_type: credit_type.clone(),
        uniqueness_key: spec.uniqueness_key.clone(),
        created_at: ctx.at,
        commits: Vec::new(),
        periods: Vec::new(),
        purchases: Vec::new(),
        spend_threshold: spend.map(ThresholdConfig::fresh),
        prepaid_threshold: prepaid.map(ThresholdConfig::fresh),
        workflows: Vec::new(),
        edit_keys: Vec::new(),
        edits: 0,
        lifecycle: Some(Lifecycle::default()),
        recent_edits: Vec::new(),
        draw_order: Vec::new(),
        caches: ContractCaches::default(),
    }
}

/// The two threshold configurations (spend, prepaid) of `contract` after `edit`, checked.
fn next_thresholds(
    (contract, card): (&Contract, &RateCard),
    edit: &ContractEdit,
    ctx: &Ctx<'_>,
    profile: &CustomerProfile,
) -> Result<[Option<ThresholdConfig>; 2], Rejection> {
    let mut next_configs = [
        contract.spend_threshold.clone(),
        contract.prepaid_threshold.clone(),
    ];
    let changes = [
        (
            ThresholdKind::Spend,
            &edit.add_spend_threshold,
            &edit.update_spend_threshold,
        ),
        (
            ThresholdKind::PrepaidBalance,
            &edit.add_prepaid_threshold,
            &edit.update_prepaid_threshold,
        ),
    ];
    for (slot, (kind, add, update)) in next_configs.iter_mut().zip(changes) {
        if let Some(add) = add {
            if slot.is_some() {
                return Err(Rejection::ThresholdConfigExists(kind.label()));
            }
            let mut config = add.clone().fresh();
            config.kind = kind;
            resolve_unit(&mut config, card, ctx)?;
            validate_threshold(&config, &contract.credit_type, ctx, profile)?;
            *slot = Some(config);
        }
        if let Some(update) = update {
            let Some(current) = slot.as_ref() else {
                return Err(Rejection::ThresholdConfigMissing(kind.label()));
            };
            let merged = update.merged_into(current);
            validate_threshold(&merged, &contract.credit_type, ctx, profile)?;
            *slot = Some(merged);
        }
    }
    Ok(next_configs)
}

impl ThresholdUpdate {
    fn merged_into(&self, config: &ThresholdConfig) -> ThresholdConfig {
        let mut next = config.clone();
        if let Some(v) = self.is_enabled {
            next.is_enabled = v;
        }
        if let Some(v) = &self.gate {
            next.gate = v.clone();
        }
        if let Some(v) = self.threshold_amount {
            next.threshold_amount = v;
        }
        if let Some(v) = self.recharge_to_amount {
            next.recharge_to_amount = Some(v);
        }
        if let Some(v) = &self.discount {
            next.discount = v.clone();
        }
        if let Some(v) = self.commit_product_id {
            next.commit.product_id = v;
        }
        if let Some(v) = &self.commit_name {
            next.commit.name = v.clone();
        }
        if let Some(v) = &self.commit_description {
            next.commit.description = v.clone();
        }
        if let Some(v) = self.commit_priority {
            next.commit.priority = v;
        }
        if let Some(v) = &self.commit_applicable_product_ids {
            next.commit.applicable_product_ids = v.clone();
        }
        if let Some(v) = &self.commit_applicable_product_tags {
            next.commit.applicable_product_tags = v.clone();
        }
        if let Some(v) = &self.recharge_limits {
            next.limits = v.clone();
        }
        if let Some(v) = &self.balance_specifiers {
            next.balance_specifiers = v.clone();
        }
        next
    }
}

pub(super) use crate::domain::bounds::check_uniqueness_key as validate_uniqueness_key;

/// Takes the worth of a threshold configuration's custom pricing unit from the contract's rate
/// card (what a request says about it is not trusted; conversions never change, so replay
/// takes the same).
///
/// # Errors
/// [`Rejection::InvalidField`] when the card has no conversion for it.
fn resolve_unit(
    config: &mut ThresholdConfig,
    card: &RateCard,
    ctx: &Ctx<'_>,
) -> Result<(), Rejection> {
    let Some(unit) = config.credit_type.as_mut() else {
        return Ok(());
    };
    let found = card.conversion_at(unit.credit_type_id, ctx.catalog_version);
    let conversion = found.ok_or_else(|| {
        Rejection::invalid(
            &format!("{}.custom_credit_type_id", config.kind.field()),
            &format!(
                "rate card {} has no conversion for credit type {} (add one with rate-cards/update add_credit_type_conversions)",
                card.id, unit.credit_type_id
            ),
        )
    })?;
    *unit = *conversion;
    Ok(())
}

/// `card`: the rate card of the contract the commit belongs to; `None` for a customer-level
/// commit (any contract of the customer may use it).
pub(super) fn validate_commit(
    spec: &CommitSpec,
    field: &str,
    ctx: &Ctx<'_>,
    profile: &CustomerProfile,
    card: Option<&RateCard>,
) -> Result<(), Rejection> {
    if let Some(unit) = spec.credit_type {
        let at = format!("{field}.access_schedule.credit_type_id");
        if !ctx.catalog.is_custom_unit_at(unit, ctx.catalog_version) {
            return Err(Rejection::invalid(
                &at,
                &format!("{unit} is neither USD (cents) nor a custom pricing unit"),
            ));
        }
        if let Some(card) = card.filter(|c| c.conversion_at(unit, ctx.catalog_version).is_none()) {
            return Err(Rejection::invalid(
                &at,
                &format!(
                    "the contract's rate card {} has no conversion for {unit}: nothing on it is priced in that unit",
                    card.id
                ),
            ));
        }
    }
    let product = ctx
        .catalog
        .product(spec.product_id)
        .ok_or_else(|| Rejection::ProductNotFound(spec.product_id.to_string()))?;
    if !matches!(product.kind, ProductKind::Fixed) {
        return Err(Rejection::WrongProductType(format!(
            "{field}.product_id must be a FIXED product"
        )));
    }
    validate_schedules(spec, field)?;
    bounds::check_custom_fields(&format!("{field}.custom_fields"), &spec.custom_fields)?;
    if spec.priority.is_some_and(|p| p.is_sign_negative()) {
        return Err(Rejection::invalid(
            &format!("{field}.priority"),
            "must not be negative",
        ));
    }
    match spec.kind {
        CommitKind::Postpaid if spec.invoice_schedule.is_empty() => {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "is required for POSTPAID commits",
            ));
        }
        CommitKind::Credit if !spec.invoice_schedule.is_empty() => {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "credits are free and have no invoice schedule",
            ));
        }
        _ => {}
    }
    if let Some(gate) = &spec.payment_gate {
        gate.validate(&format!("{field}.payment_gate_config"))?;
        if spec.kind != CommitKind::Prepaid {
            return Err(Rejection::invalid(
                &format!("{field}.payment_gate_config"),
                "only PREPAID commits can be payment-gated",
            ));
        }
        if spec.invoice_schedule.is_empty() {
            return Err(Rejection::invalid(
                &format!("{field}.invoice_schedule"),
                "a payment-gated commit needs an invoice schedule (the amount to charge)",
            ));
        }
        if gate.gate_type == GateType::Stripe && profile.stripe.is_none() {
            return Err(Rejection::StripeNotConfigured);
        }
    }
    Ok(())
}

/// The access schedule (at least one segment, each with an amount in bounds and a positive
/// length) and the invoice schedule (unit price, quantity and amount in bounds) of a commit.
fn validate_schedules(spec: &CommitSpec, field: &str) -> Result<(), Rejection> {
    if spec.access_schedule.is_empty() {
        return Err(Rejection::invalid(
            &format!("{field}.access_schedule.schedule_items"),
            "at least one item is required",
        ));
    }
    for (amount, start, end) in &spec.access_schedule {
        bounds::check_amount(
            &format!("{field}.access_schedule.schedule_items[].amount"),
            *amount,
        )?;
        if end <= start {
            return Err(Rejection::invalid(
                &format!("{field}.access_schedule.schedule_items[].ending_before"),
                "must be after starting_at",
            ));
        }
    }
    for (_, unit_price, quantity) in &spec.invoice_schedule {
        let item = format!("{field}.invoice_schedule.schedule_items[]");
        bounds::check_amount(&format!("{item}.unit_price"), *unit_price)?;
        bounds::check_quantity(&format!("{item}.quantity"), *quantity)?;
        bounds::check_amount(
            &format!("{item}.amount"),
            unit_price.checked_mul(*quantity)?,
        )?;
    }
    Ok(())
}

fn validate_threshold(
    config: &ThresholdConfig,
    credit_type: &CreditType,
    ctx: &Ctx<'_>,
    profile: &CustomerProfile,
) -> Result<(), Rejection> {
    config.validate(credit_type, ctx.limits)?;
    bounds::check_balance_specifiers(&config.balance_specifiers)?;
    if config.kind == ThresholdKind::Spend && !config.balance_specifiers.is_empty() {
        return Err(Rejection::invalid(
            "spend_threshold_configuration.threshold_balance_specifiers",
            "only a prepaid balance threshold watches a balance",
        ));
    }
    let product = ctx
        .catalog
        .product(config.commit.product_id)
        .ok_or_else(|| Rejection::ProductNotFound(config.commit.product_id.to_string()))?;
    if !matches!(product.kind, ProductKind::Fixed) {
        return Err(Rejection::WrongProductType(
            "commit.product_id must be a FIXED product".into(),
        ));
    }
    if config.gate.gate_type == GateType::Stripe && profile.stripe.is_none() {
        return Err(Rejection::StripeNotConfigured);
    }
    Ok(())
}

pub(super) fn build_commit(
    id: Id,
    spec: &CommitSpec,
    release: Release,
    invoice_id_of: impl Fn(usize) -> Id,
    ctx: &Ctx<'_>,
) -> Result<Commit, Rejection> {
    let segments = spec
        .access_schedule
        .iter()
        .enumerate()
        .map(|(i, (amount, start, end))| Segment {
            id: Id::derive(id, "segment", i as u64),
            amount: *amount,
            starting_at: *start,
            ending_before: *end,
            drawn: Money::ZERO,
            manual: Money::ZERO,
        })
        .collect();
    let mut invoice_schedule = Vec::with_capacity(spec.invoice_schedule.len());
    for (i, (timestamp, unit_price, quantity)) in spec.invoice_schedule.iter().enumerate() {
        invoice_schedule.push(InvoiceScheduleItem {
            id: Id::derive(id, "invoice_schedule_item", i as u64),
            timestamp: *timestamp,
            amount: unit_price.checked_mul(*quantity)?,
            quantity: *quantity,
            unit_price: *unit_price,
            invoice_id: invoice_id_of(i),
        });
    }
    Ok(Commit {
        id,
        kind: spec.kind,
        product_id: spec.product_id,
        name: commit_name(ctx, spec.product_id, &spec.name),
        description: spec.description.clone(),
        priority: spec.priority.unwrap_or(Decimal::from(DEFAULT_PRIORITY)),
        applicable_product_ids: spec.applicable_product_ids.clone(),
        applicable_product_tags: spec.applicable_product_tags.clone(),
        segments,
        invoice_schedule,
        release,
        created_by_threshold: None,
        created_at: ctx.at,
        deductions: Vec::new(),
        archived_at: None,
        custom_fields: spec.custom_fields.clone(),
        manual_entries: Vec::new(),
        credit_type: spec.credit_type,
    })
}

/// Adds a commit that is usable at once, with one SCHEDULED invoice per invoice schedule item.
fn add_ungated_commit(
    contract: &mut Contract,
    id: Id,
    spec: &CommitSpec,
    ctx: &Ctx<'_>,
) -> Result<(), Rejection> {
    let commit = build_commit(
        id,
        spec,
        Release::Released { at: ctx.at },
        |i| Id::derive(id, "invoice", i as u64),
        ctx,
    )?;
    for invoice in purchase_invoices(&commit, ctx) {
        crate::domain::push_first_exact(&mut contract.purchases, invoice);
    }
    crate::domain::push_first_exact(&mut contract.commits, commit);
    Ok(())
}

/// The SCHEDULED invoices of an ungated commit, one per invoice schedule item: issued (final)
/// when their time has come, drafts until then.
pub(super) fn purchase_invoices(commit: &Commit, ctx: &Ctx<'_>) -> Vec<PurchaseInvoice> {
    commit
        .invoice_schedule
        .iter()
        .map(|item| purchase_invoice(commit, item, ctx))
        .collect()
}

/// The SCHEDULED invoice of one invoice schedule item of an ungated commit.
pub(super) fn purchase_invoice(
    commit: &Commit,
    item: &InvoiceScheduleItem,
    ctx: &Ctx<'_>,
) -> PurchaseInvoice {
    PurchaseInvoice {
        id: item.invoice_id,
        commit_id: commit.id,
        product_id: commit.product_id,
        name: commit.name.clone(),
        status: if item.timestamp <= ctx.at {
            InvoiceStatus::Finalized
        } else {
            InvoiceStatus::Draft
        },
        issued_at: item.timestamp,
        subtotal: item.amount,
        tax: Money::ZERO,
        total: item.amount,
        workflow_id: None,
        external_status: None,
    }
}
