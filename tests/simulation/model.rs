//! The reference model: what the engine must end up with, computed plainly from what the
//! simulated clients sent and were told, with none of the engine's code.
//!
//! It covers usage: every event that was acknowledged, or that its client re-sent until it
//! was, counts exactly once (first body per transaction id), in the billing period of its
//! timestamp, on the contract of its customer; a refused batch counts for nothing. COUNT events
//! cost 100 cents each; SUM `tokens` are rated on the period's net, floored at zero, 2 cents
//! each for the first 1000 and 1 cent after (the fixture rate card). What it leaves out (the
//! drawdown order across commits, threshold amounts, workflow timing) is checked by invariants
//! in `sim.rs` instead.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tollgate::domain::Timestamp;

/// One usage event a client sent.
#[derive(Clone, Debug)]
pub struct SentEvent {
    /// The customer the client meant; [`Model::owner`] says whose usage it is.
    pub customer: usize,
    /// The ingest alias sent as `customer_id`, `None` when it was the customer's id.
    pub by_alias: Option<String>,
    pub timestamp: Timestamp,
    pub usage: Usage,
    /// The JSON sent (a resend sends exactly this).
    pub json: serde_json::Value,
    pub status: Status,
    /// False for an event beyond the bounds: its batch is refused, and it is never re-sent.
    pub valid: bool,
    /// Sent before its customer's contract was answered: usage is rated against the contracts
    /// in force when it is applied (README), so whether it is billed depends on where it lands
    /// in the log relative to the contract. Counted as "at most" instead of exactly.
    pub before_contract: bool,
    /// When it was first sent and first acknowledged (simulated ms): it reached the log
    /// between the two.
    pub first_sent_ms: Option<i64>,
    pub first_ack_ms: Option<i64>,
    /// Quarantined by a buggy version, and then discarded by the operator: never billed.
    pub discarded: bool,
}

/// What the client knows of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not answered yet.
    Unsent,
    /// No definitive answer yet (a 429, 5xx or lost answer): the client sends it again.
    Pending,
    /// Its batch was answered 200 (once is enough: that is sticky).
    Acknowledged,
    /// Its batch was refused (4xx), and no earlier send was left without an answer (which
    /// may have reached the log): it counts for nothing.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    ApiCall,
    Tokens(i64),
}

/// One simulated customer as its integrator knows it.
#[derive(Clone, Debug, Default)]
pub struct CustomerModel {
    pub name: String,
    pub alias: String,
    /// Set once the create was answered (or found after a lost answer).
    pub id: Option<String>,
    pub contract_id: Option<String>,
    /// Created after some of its usage was sent (by alias): that usage waits as late events.
    pub late: bool,
    /// The customer's archive: first sent, and answered 200 (simulated ms). Events accepted
    /// after it are not billed (SPEC 2.1).
    pub archived: Option<(i64, Option<i64>)>,
    /// What the integrator granted its contract itself (the contract's commit and credit, the
    /// commits it added), counted when answered 200: the user commits' amounts must sum to it.
    pub granted: Decimal,
    /// Whether the contract has a spend and a prepaid threshold configuration.
    pub thresholds: [bool; 2],
    /// The recharge rails of its prepaid configuration, if any.
    pub rails: Option<super::sim::RailsModel>,
    /// The earliest contract end ever requested (simulated ms): an event timestamped at or
    /// after it may fall after the end in force when it applied, and then is not billed.
    pub end_floor: Option<i64>,
    /// The customer-level commits and credits created (id, whether a credit, and the earliest
    /// access end ever asked for, in simulated ms: an end only moves earlier, and a request
    /// still being retried may apply after a later one is sent).
    pub customer_commits: Vec<(String, bool, i64)>,
    /// The commits added to its contract that were usable at once (id, whether an archive was
    /// sent for it: nothing is aimed at it after that, and whether it was bought through a
    /// NONE gate: its schedules are its workflow's and are not updated).
    pub added_commits: Vec<(String, bool, bool)>,
    /// The sum of the manual ledger entries answered 200 (or 409: a retry finding its entry).
    pub manual: Decimal,
    /// Its contract is on the card pricing API calls in credits (100 credits a call, never
    /// changed: the workload's added rate is on the fixture card).
    pub credits_card: bool,
}

/// What one period of one contract must show: exactly the events sent once the contract
/// existed, plus any of those sent before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodExpectation {
    pub api_calls: i64,
    /// What the sure API calls cost together, at least and at most (cents): a call whose
    /// timestamp falls under the rate added mid-run costs the old or the new price, depending
    /// on whether it reached the log before or after the rate.
    pub api_cents: (i64, i64),
    /// The cheapest and dearest price of one of the calls that may or may not count.
    pub maybe_api_price: (i64, i64),
    pub net_tokens: i64,
    /// Events sent before the contract existed, which may or may not be billed.
    pub maybe_api_calls: i64,
    pub maybe_token_events: usize,
}

/// The fixture rate card's price of one API call (cents).
pub const API_PRICE: i64 = 100;

impl PeriodExpectation {
    /// The least and the most the API line may cost when it bills `quantity` calls.
    /// (Saturating: a quantity beyond the expected calls fails the count check anyway.)
    pub fn api_cents_for(&self, quantity: i64) -> (i64, i64) {
        let maybe = quantity - self.api_calls;
        let add = |sure: i64, price: i64| sure.saturating_add(maybe.saturating_mul(price));
        (
            add(self.api_cents.0, self.maybe_api_price.0),
            add(self.api_cents.1, self.maybe_api_price.1),
        )
    }

    pub fn token_total(&self) -> Decimal {
        let net = self.net_tokens.max(0);
        Decimal::from(2 * net.min(1000) + (net - 1000).max(0))
    }
}

#[derive(Default)]
pub struct Model {
    pub customers: Vec<CustomerModel>,
    /// Every event a client sent, by transaction id (the first body sent).
    pub sent: BTreeMap<String, SentEvent>,
    /// The tokens metric's archive: first sent, and answered 200 (simulated ms). Events that
    /// reached the log after it count no tokens (the catalog of an event's acceptance rates
    /// it); events that may have reached the log on either side may or may not count.
    pub tokens_archived: Option<(i64, Option<i64>)>,
    /// Ingest aliases moved from one customer to another: at most two a run, the second (if
    /// any) back the other way, so replay meets moves in both directions between partitions.
    pub alias_moves: Vec<AliasMove>,
    /// A new price for API calls from an hour after it was added, at most once a run.
    pub rate_change: Option<RateChange>,
    /// (alert, customer) pairs a reset was sent for (answered or not).
    pub alert_resets: std::collections::BTreeSet<(tollgate::domain::Id, tollgate::domain::Id)>,
}

/// A FLAT rate for the API product added to the rate card mid-run.
#[derive(Clone, Copy, Debug)]
pub struct RateChange {
    pub starting_at: Timestamp,
    pub cents: i64,
    /// First sent and answered 200 (simulated ms): an event is rated by the catalog of its
    /// acceptance (README), so one that reached the log before the rate keeps the old price.
    pub added: (i64, Option<i64>),
}

/// An alias taken from customer `from` (its aliases set to a new one) and then given to
/// customer `to`. Usage sent to the alias is `from`'s when it reached the log before the drop
/// was sent, `to`'s when after the drop was answered (in between the alias matches nobody:
/// the events wait, and the add applies them to `to`), either's in the window between.
#[derive(Clone, Debug)]
pub struct AliasMove {
    pub alias: String,
    pub from: usize,
    pub to: usize,
    /// The drop: first sent, answered 200 (simulated ms).
    pub dropped: (i64, Option<i64>),
    /// The add to `to` was answered 200.
    pub added: bool,
}

/// Whose usage an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Sure(usize),
    /// It reached the log while its alias moved: one of the two, never both.
    Either(usize, usize),
}

impl Owner {
    pub fn candidates(self) -> Vec<usize> {
        match self {
            Owner::Sure(c) => vec![c],
            Owner::Either(a, b) => vec![a, b],
        }
    }

    pub fn may_be(self, customer: usize) -> bool {
        match self {
            Owner::Sure(c) => c == customer,
            Owner::Either(a, b) => a == customer || b == customer,
        }
    }
}

/// `Yes` when the event reached the log before `archive` (first sent, answered), `No` when
/// after, `Maybe` when it may have been either.
fn after(event: &SentEvent, archive: Option<(i64, Option<i64>)>) -> Rated {
    let Some((archive_sent, archive_answered)) = archive else {
        return Rated::Yes;
    };
    let logged_by = event.first_ack_ms.unwrap_or(i64::MAX);
    let logged_after = event.first_sent_ms.unwrap_or(i64::MIN);
    if logged_by < archive_sent {
        Rated::Yes
    } else if archive_answered.is_some_and(|answered| logged_after > answered) {
        Rated::No
    } else {
        Rated::Maybe
    }
}

/// Whether an event is billed, given when its customer and the tokens metric were archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rated {
    Yes,
    Maybe,
    No,
}

impl Model {
    /// Events that must be applied: acknowledged. (The simulation re-sends every pending
    /// event until it is acknowledged before it checks.)
    pub fn counted(&self) -> impl Iterator<Item = (&String, &SentEvent)> {
        self.sent
            .iter()
            .filter(|(_, e)| e.status == Status::Acknowledged && !e.discarded)
    }

    /// Records that a batch of these transaction ids is being sent at `now_ms`.
    pub fn sending(&mut self, txns: &[String], now_ms: i64) {
        for txn in txns {
            if let Some(event) = self.sent.get_mut(txn) {
                event.first_sent_ms.get_or_insert(now_ms);
            }
        }
    }

    /// Whose usage the event is, given when it reached the log.
    pub fn owner(&self, event: &SentEvent) -> Owner {
        let moved = self
            .alias_moves
            .iter()
            .find(|m| event.by_alias.as_deref() == Some(m.alias.as_str()));
        match moved {
            Some(m) => {
                let logged_by = event.first_ack_ms.unwrap_or(i64::MAX);
                let logged_after = event.first_sent_ms.unwrap_or(i64::MIN);
                if logged_by < m.dropped.0 {
                    Owner::Sure(m.from)
                } else if m.dropped.1.is_some_and(|answered| logged_after > answered) {
                    Owner::Sure(m.to)
                } else {
                    Owner::Either(m.from, m.to)
                }
            }
            _ => Owner::Sure(event.customer),
        }
    }

    /// Whether the event may be billed at all (archives aside from its owner's: an alias
    /// moves only between customers that are not archived).
    pub fn may_be_billed(&self, event: &SentEvent) -> bool {
        self.rated(event) != Rated::No
    }

    /// Whether the event must be billed to its owner (one of two, for an alias move): sent
    /// after its customer's contract existed, and before any archive that concerns it.
    pub fn must_be_billed(&self, event: &SentEvent) -> bool {
        !event.before_contract && self.rated(event) == Rated::Yes
    }

    /// Whether the event is billed: not when it reached the log after its customer's archive
    /// (any usage) or the tokens metric's (tokens).
    fn rated(&self, event: &SentEvent) -> Rated {
        let owner = match self.owner(event) {
            Owner::Sure(c) | Owner::Either(c, _) => c,
        };
        let customer = self.customers[owner].archived;
        let tokens = match event.usage {
            Usage::Tokens(_) => self.tokens_archived,
            Usage::ApiCall => None,
        };
        let ended = match self.customers[owner].end_floor {
            Some(floor) if event.timestamp.millis() >= floor => Rated::Maybe,
            _ => Rated::Yes,
        };
        match (after(event, customer), after(event, tokens), ended) {
            (Rated::No, _, _) | (_, Rated::No, _) => Rated::No,
            (Rated::Maybe, _, _) | (_, Rated::Maybe, _) | (_, _, Rated::Maybe) => Rated::Maybe,
            _ => Rated::Yes,
        }
    }

    /// The least and the most one API call costs `customer` (cents, or credits on the credits
    /// card).
    pub fn api_price(&self, event: &SentEvent, customer: usize) -> (i64, i64) {
        if self.customers[customer].credits_card {
            return (API_PRICE, API_PRICE);
        }
        match self.rate_change {
            Some(change) if event.timestamp >= change.starting_at => {
                match after(event, Some(change.added)) {
                    Rated::Yes => (API_PRICE, API_PRICE),
                    Rated::No => (change.cents, change.cents),
                    Rated::Maybe => (API_PRICE.min(change.cents), API_PRICE.max(change.cents)),
                }
            }
            _ => (API_PRICE, API_PRICE),
        }
    }

    /// Records the answer, at `now_ms`, to a batch of these transaction ids.
    pub fn answered(&mut self, txns: &[String], status: Status, now_ms: i64) {
        for txn in txns {
            if let Some(event) = self.sent.get_mut(txn) {
                if status == Status::Acknowledged && event.valid {
                    event.first_ack_ms.get_or_insert(now_ms);
                }
                if !event.valid {
                    event.status = Status::Refused;
                    continue;
                }
                event.status = match (event.status, status) {
                    (Status::Acknowledged, _) | (_, Status::Acknowledged) => Status::Acknowledged,
                    // An earlier send without an answer may be in the log: only a 200 settles it.
                    (Status::Pending, _) => Status::Pending,
                    (_, new) => new,
                };
            }
        }
    }

    /// Events still waiting for a definitive answer.
    pub fn pending(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter(|(_, e)| e.status == Status::Pending)
            .map(|(txn, _)| txn.clone())
            .collect()
    }

    /// The expected usage of `customer` in the period `[start, end)`.
    pub fn expected(&self, customer: usize, start: Timestamp, end: Timestamp) -> PeriodExpectation {
        let mut expectation = PeriodExpectation {
            maybe_api_price: (i64::MAX, 0),
            ..PeriodExpectation::default()
        };
        for (_, event) in self.counted() {
            let owner = self.owner(event);
            if !owner.may_be(customer) || event.timestamp < start || event.timestamp >= end {
                continue;
            }
            let sure = owner == Owner::Sure(customer) && !event.before_contract;
            match (event.usage, sure, self.rated(event)) {
                (_, _, Rated::No) => {}
                (Usage::ApiCall, true, Rated::Yes) => {
                    let (least, most) = self.api_price(event, customer);
                    expectation.api_calls += 1;
                    expectation.api_cents.0 += least;
                    expectation.api_cents.1 += most;
                }
                (Usage::ApiCall, _, _) => {
                    let (least, most) = self.api_price(event, customer);
                    expectation.maybe_api_calls += 1;
                    let price = &mut expectation.maybe_api_price;
                    *price = (price.0.min(least), price.1.max(most));
                }
                (Usage::Tokens(n), true, Rated::Yes) => expectation.net_tokens += n,
                (Usage::Tokens(_), _, _) => expectation.maybe_token_events += 1,
            }
        }
        expectation
    }

    /// How many counted events of `customer` fall at or after `from`: at least and at most.
    pub fn counted_since(&self, customer: usize, from: Timestamp) -> (usize, usize) {
        let all: Vec<&SentEvent> = self
            .counted()
            .filter(|(_, e)| self.owner(e).may_be(customer) && e.timestamp >= from)
            .map(|(_, e)| e)
            .collect();
        // An event that is not billed (archives) may fall in a period without an invoice.
        let sure = all
            .iter()
            .filter(|e| {
                !e.before_contract
                    && self.owner(e) == Owner::Sure(customer)
                    && self.rated(e) == Rated::Yes
            })
            .count();
        (sure, all.len())
    }
}
