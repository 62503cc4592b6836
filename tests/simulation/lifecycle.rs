//! The simulation's workload and invariants for recharge safety rails, contract end dates and
//! lifecycle notices (issue 15, items 6 to 8).
//!
//! Workload: prepaid configurations get random rails at creation (their count and interval
//! never change; an edit that moves the amounts raises the amount rail to fit); contracts get
//! end dates set, moved and lifted, always in the future of the request.
//! Invariants, against the customers' states once everything settled and every webhook was
//! delivered: the rails held (per period at most N recharges and at most the amount, starts at
//! least the interval apart, each recharge's commit no longer than its duration); every hold was
//! announced exactly once, with the ids the state implies; no threshold workflow started at or
//! after its contract's end and no usage period starts there; every lifecycle notice the state
//! implies arrived (a create per contract and commit, a start for every open segment, the end of
//! an ended contract) and none arrived twice under two ids.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use serde_json::{Value, json};
use tollgate::actors::Engine;
use tollgate::actors::clock::Clock;
use tollgate::domain::{Id, Timestamp};

use super::{Api, DAY_MS, MINUTE_MS, Purpose, Request, Sim};

/// The rails of one contract as the integrator set them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RailsModel {
    pub max_count: Option<u32>,
    /// Only ever raised (to fit an edit's new amounts): the last value bounds every period.
    pub max_amount: Option<i64>,
    pub interval_minutes: Option<u32>,
    pub duration_days: Option<u32>,
}

impl RailsModel {
    pub fn to_json(&self) -> Value {
        let mut limits = serde_json::Map::new();
        if let Some(n) = self.max_count {
            limits.insert("max_recharges_per_period".into(), json!(n));
        }
        if let Some(a) = self.max_amount {
            limits.insert("max_recharge_amount_per_period".into(), json!(a));
        }
        if let Some(m) = self.interval_minutes {
            limits.insert("min_recharge_interval_minutes".into(), json!(m));
        }
        if let Some(d) = self.duration_days {
            limits.insert("recharge_commit_duration_days".into(), json!(d));
        }
        Value::Object(limits)
    }
}

/// A segment as the invariants read it: (id, starting_at, ending_before).
type SegmentView = (Id, Timestamp, Timestamp);

/// What the invariants read of one contract.
struct ContractView {
    id: Id,
    ending_before: Option<Timestamp>,
    lifecycle: Option<tollgate::domain::contract::Lifecycle>,
    /// (id, is a credit, segments (id, starting_at, ending_before)).
    commits: Vec<(Id, bool, Vec<SegmentView>)>,
    /// Threshold workflows: (kind is prepaid, started_at, failed, access amount, commit id).
    workflows: Vec<(bool, Timestamp, bool, rust_decimal::Decimal, Id)>,
    holds: u64,
    period_starts: Vec<Timestamp>,
}

impl Sim {
    /// Rails for a new prepaid configuration recharging to `recharge_to` (half of them none).
    pub(super) fn random_rails(&mut self, recharge_to: i64) -> Option<RailsModel> {
        if !self.rng.random_bool(0.5) {
            return None;
        }
        let rng = &mut self.rng;
        let rails = RailsModel {
            max_count: rng.random_bool(0.5).then(|| rng.random_range(1..4)),
            max_amount: rng
                .random_bool(0.4)
                .then(|| recharge_to * rng.random_range(1..4) + rng.random_range(0..1_000)),
            interval_minutes: rng.random_bool(0.6).then(|| rng.random_range(5..120)),
            duration_days: rng.random_bool(0.4).then(|| rng.random_range(1..40)),
        };
        Some(rails)
    }

    /// An end date for a contract, always after now, or none (open-ended), through either
    /// endpoint.
    pub(super) async fn set_end_date(&mut self, app: &impl Api) {
        let Some((_, customer)) = self.customer_with_contract() else {
            return;
        };
        let end_ms = self
            .rng
            .random_bool(0.7)
            .then(|| self.time.now_ms() + self.rng.random_range(MINUTE_MS..3 * DAY_MS));
        if let Some(end_ms) = end_ms {
            let c = self
                .model
                .customers
                .iter()
                .position(|m| m.id == customer.id);
            if let Some(c) = c {
                let floor = &mut self.model.customers[c].end_floor;
                *floor = Some(floor.map_or(end_ms, |f| f.min(end_ms)));
            }
        }
        let end = end_ms.map(|ms| Timestamp(ms).to_rfc3339());
        self.txn_counter += 1;
        let (path, body) = if self.rng.random_bool(0.5) {
            let mut body = json!({"customer_id": customer.id, "contract_id": customer.contract_id});
            if let Some(end) = &end {
                body["ending_before"] = json!(end);
            }
            ("/v1/contracts/updateEndDate", body)
        } else {
            let body = json!({"customer_id": customer.id, "contract_id": customer.contract_id,
                "update_contract_end_date": end});
            ("/v2/contracts/edit", body)
        };
        let request = Request {
            path: path.into(),
            body,
            key: format!("end-{}", self.txn_counter),
            purpose: Purpose::EndDate,
        };
        self.control(app, request).await;
    }

    /// An end date's answer: applied, or refused only for what a future end can meet: usage
    /// already billed on a period at or after it (an event up to a day ahead opens next month's
    /// period), or a finalized usage invoice in the way.
    pub(super) fn end_date_answered(&mut self, request: &Request, status: u16, value: &Value) {
        let billed_after = status == 400
            && value["message"].as_str().is_some_and(|m| {
                m.contains("usage is already billed")
                    || m.contains("finalized usage invoice")
                    || m.contains("is final and ends with the contract")
            });
        // 409: a retry after a 503 whose edit had reached the log finds it applied.
        let applied = status == 200 || status == 409;
        if applied {
            self.report.end_dates += 1;
        }
        if !applied && !billed_after && !(500..600).contains(&status) {
            self.violations.push(format!(
                "an end date {} {} was answered {status}: {value}",
                request.path, request.body
            ));
        }
    }

    async fn contract_views(&self, engine: &Engine) -> Result<Vec<(usize, ContractView)>, String> {
        use tollgate::domain::contract::CommitKind;
        let mut views = Vec::new();
        for (c, id) in self.customer_ids() {
            let found = engine
                .query(id, |s| {
                    s.customer
                        .contracts
                        .iter()
                        .map(|contract| ContractView {
                            id: contract.id,
                            ending_before: contract.ending_before,
                            lifecycle: contract.lifecycle.clone(),
                            commits: contract
                                .commits
                                .iter()
                                .map(|commit| {
                                    let segments = commit
                                        .segments
                                        .iter()
                                        .map(|s| (s.id, s.starting_at, s.ending_before))
                                        .collect();
                                    (commit.id, commit.kind == CommitKind::Credit, segments)
                                })
                                .collect(),
                            workflows: contract
                                .workflows
                                .iter()
                                .filter(|w| {
                                    w.kind != tollgate::domain::gate::WorkflowKind::ManualCommit
                                })
                                .map(|w| {
                                    (
                                        w.kind
                                            == tollgate::domain::gate::WorkflowKind::PrepaidBalance,
                                        w.started_at,
                                        w.state == tollgate::domain::gate::WorkflowState::Failed,
                                        w.access_amount.as_decimal(),
                                        w.commit_id,
                                    )
                                })
                                .collect(),
                            holds: contract.prepaid_threshold.as_ref().map_or(0, |t| t.holds),
                            period_starts: contract.periods.iter().map(|p| p.starting_at).collect(),
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| format!("contracts of customer {c}: {e}"))?;
            views.extend(found.into_iter().map(|v| (c, v)));
        }
        Ok(views)
    }

    /// The rails, end dates and lifecycle invariants (see the module's documentation).
    pub(super) async fn check_rails_and_lifecycle(
        &mut self,
        engine: &Engine,
    ) -> Result<(), String> {
        let views = self.contract_views(engine).await?;
        // Every notice received, by type, as (id, body).
        let mut received: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for (id, kept) in self.receiver.kept() {
            let body: Value = serde_json::from_slice(&kept.body).unwrap_or(Value::Null);
            received
                .entry(kept.event_type.clone())
                .or_default()
                .push((id, body));
        }
        let of = |t: &str| received.get(t).cloned().unwrap_or_default();
        self.report.rail_holds = views.iter().map(|(_, v)| v.holds).sum();
        self.report.contracts_ended = views
            .iter()
            .filter(|(_, v)| v.lifecycle.as_ref().is_some_and(|l| l.ended.is_some()))
            .count();
        self.report.lifecycle_notices = received
            .iter()
            .filter(|(t, _)| {
                t.starts_with("contract.") || t.starts_with("commit.") || t.starts_with("credit.")
            })
            .map(|(_, list)| list.len())
            .sum();
        // No fact announced under two ids (a replay must derive the same id).
        for (notice, key) in [
            ("contract.create", "contract_id"),
            ("commit.create", "commit_id"),
            ("credit.create", "commit_id"),
        ] {
            let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (id, body) in of(notice) {
                let subject = body[key].as_str().unwrap_or("").to_owned();
                ids.entry(subject).or_default().insert(id);
            }
            if let Some((subject, ids)) = ids.iter().find(|(_, ids)| ids.len() > 1) {
                return Err(format!("{notice} for {subject} arrived under ids {ids:?}"));
            }
        }
        let started: BTreeSet<String> = of("commit.segment.start")
            .into_iter()
            .chain(of("credit.segment.start"))
            .filter_map(|(_, b)| b["segment_id"].as_str().map(str::to_owned))
            .collect();
        let ended: BTreeSet<String> = of("commit.segment.end")
            .into_iter()
            .chain(of("credit.segment.end"))
            .filter_map(|(_, b)| b["segment_id"].as_str().map(str::to_owned))
            .collect();
        if let Some(segment) = ended.iter().find(|s| !started.contains(*s)) {
            return Err(format!("segment {segment} ended and never started"));
        }
        // Every segment announced as started and no longer open was announced as ended.
        let open: BTreeSet<String> = views
            .iter()
            .filter_map(|(_, v)| v.lifecycle.as_ref())
            .flat_map(|l| l.open_segments.iter().map(Id::to_string))
            .collect();
        // A segment starts once, and once more after each end the contract's end brought (an
        // end lifted again): each start and end under one id of its own, so the
        // starts number the ends, plus one while it is open (a replay deriving another id for
        // the same fact would add one).
        let ids_by_segment = |types: [&str; 2]| {
            let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (id, body) in types.into_iter().flat_map(&of) {
                let segment = body["segment_id"].as_str().unwrap_or("").to_owned();
                ids.entry(segment).or_default().insert(id);
            }
            ids
        };
        let starts = ids_by_segment(["commit.segment.start", "credit.segment.start"]);
        let ends = ids_by_segment(["commit.segment.end", "credit.segment.end"]);
        for (segment, ids) in &starts {
            let ended = ends.get(segment).map_or(0, BTreeSet::len);
            if ids.len() != ended + usize::from(open.contains(segment)) {
                return Err(format!(
                    "segment {segment} started under ids {ids:?} and ended {ended} times (open: {})",
                    open.contains(segment)
                ));
            }
        }
        if let Some(segment) = started
            .iter()
            .find(|s| !open.contains(*s) && !ended.contains(*s))
        {
            return Err(format!(
                "segment {segment} started, is not open, and never ended"
            ));
        }
        for (c, view) in &views {
            let contract = view.id.to_string();
            let about = |list: &[(String, Value)], key: &str, value: &str| {
                list.iter().filter(|(_, b)| b[key] == json!(value)).count()
            };
            if view.lifecycle.is_some()
                && about(&of("contract.create"), "contract_id", &contract) != 1
            {
                return Err(format!(
                    "customer {c}: contract {contract} was not announced once"
                ));
            }
            for (commit, credit, _) in &view.commits {
                let notice = if *credit {
                    "credit.create"
                } else {
                    "commit.create"
                };
                if about(&of(notice), "commit_id", &commit.to_string()) != 1 {
                    return Err(format!(
                        "customer {c}: {notice} of {commit} did not arrive once"
                    ));
                }
            }
            if let Some(lifecycle) = &view.lifecycle {
                for segment in &lifecycle.open_segments {
                    if !started.contains(&segment.to_string()) {
                        return Err(format!(
                            "customer {c}: open segment {segment} never announced"
                        ));
                    }
                }
                if let Some(end) = lifecycle.ended {
                    let ended = of("contract.end").into_iter().any(|(_, b)| {
                        b["contract_id"] == json!(contract)
                            && b["timestamp"] == json!(end.to_rfc3339())
                    });
                    if !ended {
                        return Err(format!(
                            "customer {c}: contract.end at {end:?} never arrived"
                        ));
                    }
                }
            }
            // No threshold workflow at or after the end, no usage period from it.
            if let Some(end) = view.ending_before {
                if let Some(w) = view.workflows.iter().find(|w| w.1 >= end) {
                    return Err(format!(
                        "customer {c}: a workflow started at {:?}, at or after the end {end:?}",
                        w.1
                    ));
                }
                if let Some(p) = view.period_starts.iter().find(|p| **p >= end) {
                    return Err(format!(
                        "customer {c}: a usage period starts at {p:?}, after the end {end:?}"
                    ));
                }
            }
            // Every hold announced once, under the ids the state implies.
            let limited: BTreeSet<String> = of("payment_gate.recharge_limited")
                .into_iter()
                .filter(|(_, b)| b["properties"]["contract_id"] == json!(contract))
                .map(|(id, _)| id)
                .collect();
            let expected: BTreeSet<String> = (1..=view.holds)
                .map(|k| Id::derive(view.id, "payment_gate.recharge_limited", k).to_string())
                .collect();
            if limited != expected {
                return Err(format!(
                    "customer {c}: recharge_limited ids {limited:?}, the state implies {expected:?}"
                ));
            }
            let Some(rails) = self.model.customers[*c].rails.clone() else {
                if view.holds != 0 {
                    return Err(format!("customer {c}: holds without rails"));
                }
                continue;
            };
            self.check_rails(*c, view, &rails)?;
        }
        Ok(())
    }

    fn check_rails(&self, c: usize, view: &ContractView, rails: &RailsModel) -> Result<(), String> {
        let mut recharges: Vec<_> = view.workflows.iter().filter(|w| w.0).collect();
        recharges.sort_by_key(|w| w.1);
        let mut per_period: BTreeMap<Timestamp, (u32, rust_decimal::Decimal)> = BTreeMap::new();
        for (i, w) in recharges.iter().enumerate() {
            let slot = per_period.entry(w.1.month_start()).or_default();
            slot.0 += 1;
            if !w.2 {
                slot.1 += w.3;
            }
            if let (Some(minutes), Some(before)) = (rails.interval_minutes, i.checked_sub(1)) {
                let gap = w.1.millis() - recharges[before].1.millis();
                if gap < i64::from(minutes) * MINUTE_MS {
                    return Err(format!(
                        "customer {c}: two recharges {gap} ms apart, the rail says {minutes} min"
                    ));
                }
            }
            if let Some(days) = rails.duration_days {
                let commit = view.commits.iter().find(|(id, ..)| *id == w.4);
                for (_, start, end) in commit.map(|c| c.2.as_slice()).unwrap_or(&[]) {
                    if end.millis() - start.millis() > i64::from(days) * DAY_MS {
                        return Err(format!(
                            "customer {c}: a recharge's commit outlives {days} days"
                        ));
                    }
                }
            }
        }
        for (period, (count, amount)) in per_period {
            if rails.max_count.is_some_and(|max| count > max) {
                return Err(format!(
                    "customer {c}: {count} recharges in the period of {period:?}"
                ));
            }
            if rails
                .max_amount
                .is_some_and(|max| amount > rust_decimal::Decimal::from(max))
            {
                return Err(format!(
                    "customer {c}: {amount} recharged in the period of {period:?}"
                ));
            }
        }
        Ok(())
    }
}
