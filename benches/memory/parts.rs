//! Where a customer state's heap bytes are: every buffer of a [`PersistedCustomer`] walked
//! field by field, with its capacity, the part of it in use, and one allocation each. The
//! contract's caches have private fields, so the allocator's figure minus this walk is them.

use std::mem::size_of;

use tollgate::actors::entry::PersistedCustomer;
use tollgate::domain::contract::{Commit, Contract, ThresholdConfig};
use tollgate::domain::customer::CustomerProfile;
use tollgate::domain::gate::PaymentGateConfig;
use tollgate::domain::money::CreditType;

#[derive(Clone, Copy, Default)]
pub struct Heap {
    pub bytes: usize,
    pub used: usize,
    pub allocs: usize,
}

/// Heap buffers of a state by part: capacity in bytes, the bytes of it in use, allocations.
#[derive(Default)]
pub struct Parts(pub Vec<(&'static str, Heap)>);

impl Parts {
    fn add(&mut self, part: &'static str, bytes: usize, used: usize) {
        let index = match self.0.iter().position(|(p, _)| *p == part) {
            Some(index) => index,
            None => {
                self.0.push((part, Heap::default()));
                self.0.len() - 1
            }
        };
        if bytes > 0 {
            let heap = &mut self.0[index].1;
            heap.bytes += bytes;
            heap.used += used;
            heap.allocs += 1;
        }
    }

    fn vec<T>(&mut self, part: &'static str, v: &Vec<T>) {
        self.add(
            part,
            v.capacity() * size_of::<T>(),
            v.len() * size_of::<T>(),
        );
    }

    fn string(&mut self, part: &'static str, s: &str) {
        self.add(part, s.len(), s.len());
    }

    fn owned(&mut self, part: &'static str, s: &String) {
        self.add(part, s.capacity(), s.len());
    }

    fn opt(&mut self, part: &'static str, s: &Option<String>) {
        if let Some(s) = s {
            self.owned(part, s);
        }
    }

    pub fn total(&self) -> Heap {
        self.0.iter().fold(Heap::default(), |sum, (_, h)| Heap {
            bytes: sum.bytes + h.bytes,
            used: sum.used + h.used,
            allocs: sum.allocs + h.allocs,
        })
    }
}

fn walk(state: &PersistedCustomer, parts: &mut Parts) {
    parts.vec("state: parked, quarantined", &state.parked);
    parts.vec("state: parked, quarantined", &state.quarantined);
    if let Some(profile) = &state.customer.profile {
        walk_profile(profile, parts);
    }
    parts.vec("customer: contracts buffer", &state.customer.contracts);
    for contract in &state.customer.contracts {
        walk_contract(contract, parts);
    }
}

fn walk_profile(profile: &CustomerProfile, parts: &mut Parts) {
    const PART: &str = "profile: name, aliases (vec + strings)";
    parts.owned(PART, &profile.name);
    parts.opt(PART, &profile.external_id);
    parts.vec(PART, &profile.ingest_aliases);
    for alias in &profile.ingest_aliases {
        parts.owned(PART, alias);
    }
    parts.vec(PART, &profile.custom_fields);
    for (key, value) in &profile.custom_fields {
        parts.owned(PART, key);
        parts.owned(PART, value);
    }
    if let Some(stripe) = &profile.stripe {
        parts.owned(PART, &stripe.stripe_customer_id);
        parts.owned(PART, &stripe.collection_method);
    }
}

fn walk_contract(contract: &Contract, parts: &mut Parts) {
    parts.opt("contract: name, uniqueness key, edit keys", &contract.name);
    parts.opt(
        "contract: name, uniqueness key, edit keys",
        &contract.uniqueness_key,
    );
    parts.vec(
        "contract: name, uniqueness key, edit keys",
        &contract.edit_keys,
    );
    walk_credit_type(&contract.credit_type, parts);
    parts.vec("contract: commits buffer", &contract.commits);
    for commit in &contract.commits {
        walk_commit(commit, parts);
    }
    parts.vec("contract: periods buffer", &contract.periods);
    for period in &contract.periods {
        parts.vec("period: usage lines buffer", &period.lines);
        for line in &period.lines {
            parts.vec("usage line: draws buffer", &line.draws);
        }
    }
    parts.vec("contract: purchases buffer", &contract.purchases);
    for purchase in &contract.purchases {
        parts.owned("purchase: name, external status", &purchase.name);
        parts.opt("purchase: name, external status", &purchase.external_status);
    }
    for config in [&contract.spend_threshold, &contract.prepaid_threshold]
        .into_iter()
        .flatten()
    {
        walk_threshold(config, parts);
    }
    parts.vec("contract: workflows buffer", &contract.workflows);
    for workflow in &contract.workflows {
        walk_gate(&workflow.gate, "workflow: strings", parts);
        parts.opt("workflow: strings", &workflow.payment_intent_id);
    }
    parts.vec("contract: draw order", &contract.draw_order);
}

fn walk_credit_type(credit_type: &CreditType, parts: &mut Parts) {
    parts.owned("contract: credit type name, currency", &credit_type.name);
    parts.opt(
        "contract: credit type name, currency",
        &credit_type.currency,
    );
}

fn walk_commit(commit: &Commit, parts: &mut Parts) {
    const PART: &str = "commit: name, description, ids, tags";
    parts.owned(PART, &commit.name);
    parts.opt(PART, &commit.description);
    parts.vec(PART, &commit.applicable_product_ids);
    parts.vec(PART, &commit.applicable_product_tags);
    for tag in &commit.applicable_product_tags {
        parts.string(PART, tag);
    }
    parts.vec("commit: segments buffer", &commit.segments);
    parts.vec("commit: invoice schedule buffer", &commit.invoice_schedule);
    parts.vec("commit: deductions buffer", &commit.deductions);
}

fn walk_threshold(config: &ThresholdConfig, parts: &mut Parts) {
    const PART: &str = "thresholds: commit name, ids, tags, gate";
    parts.opt(PART, &config.commit.name);
    parts.opt(PART, &config.commit.description);
    parts.vec(PART, &config.commit.applicable_product_ids);
    parts.vec(PART, &config.commit.applicable_product_tags);
    walk_gate(&config.gate, PART, parts);
}

fn walk_gate(gate: &PaymentGateConfig, part: &'static str, parts: &mut Parts) {
    if let Some(stripe) = &gate.stripe {
        parts.vec(part, &stripe.invoice_metadata);
    }
    if let Some((_, text)) = &gate.precalculated_tax {
        parts.opt(part, text);
    }
}

pub fn parts_of(states: &[PersistedCustomer]) -> Parts {
    let mut parts = Parts::default();
    for state in states {
        walk(state, &mut parts);
    }
    parts
}
