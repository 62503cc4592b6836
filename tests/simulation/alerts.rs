//! The simulation's workload and invariants for alerts (issue 15, item 1).
//!
//! Workload: alerts of every type are created now and then (for one customer or for every
//! customer, `evaluate_on_create` either way, thresholds drawn around what the customers reach,
//! now and then a uniqueness key already taken, which must be refused with 409), archived
//! (sometimes releasing the key), and reset for a customer. Requests are cut and retried like
//! every other (a retry finds the alert it made: 409).
//! Invariants, once everything settled and every webhook was delivered: every customer was
//! evaluated on every alert in force for it (the sweep reached customers that send nothing);
//! each status agrees with the value the engine reads from the final state; the alarms and
//! resolutions each status counts arrived, each under one id, and nothing else did (a replay
//! derives the same ids); without a reset, alarms and resolutions alternate.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use serde_json::{Value, json};
use tollgate::actors::Engine;
use tollgate::domain::alerts::{AlertState, AlertType};
use tollgate::domain::{Ctx, Id, Limits};

use super::{Api, Purpose, Request, Sim};

impl Sim {
    /// Creates an alert of a random type (see the module's documentation).
    pub(super) async fn create_alert(&mut self, app: &impl Api) {
        let customers = self.customer_ids();
        let alert_type = AlertType::ALL[self.rng.random_range(0..AlertType::ALL.len())];
        let threshold: i64 = match alert_type {
            t if t.is_percentage() => self.rng.random_range(0..=100),
            AlertType::UsageThreshold => self.rng.random_range(1..200),
            _ => self.rng.random_range(0..30_000),
        };
        let mut body = json!({"alert_type": alert_type.as_str(),
            "name": format!("sim alert {}", self.step), "threshold": threshold,
            "evaluate_on_create": self.rng.random_bool(0.7)});
        if !customers.is_empty() && self.rng.random_bool(0.6) {
            let (_, id) = customers[self.rng.random_range(0..customers.len())];
            body["customer_id"] = json!(id.to_string());
        }
        if alert_type == AlertType::UsageThreshold {
            body["billable_metric_id"] = json!(tollgate::domain::fixtures::API_METRIC.to_string());
        }
        if alert_type == AlertType::InvoiceTotal && self.rng.random_bool(0.5) {
            let types = ["USAGE", "SCHEDULED"];
            body["invoice_types_filter"] = json!([types[self.rng.random_range(0..2)]]);
        }
        if self.rng.random_bool(0.3) {
            body["uniqueness_key"] = json!(format!("sim-alert-{}", self.rng.random_range(0..4)));
        }
        self.txn_counter += 1;
        let request = Request {
            path: "/v1/alerts/create".into(),
            body,
            key: format!("alert-{}", self.txn_counter),
            purpose: Purpose::Alert,
        };
        self.control(app, request).await;
    }

    /// Archives an alert, or resets one for a customer.
    pub(super) async fn archive_or_reset_alert(&mut self, app: &impl Api, engine: &Engine) {
        let catalog = engine.catalog();
        let mut alerts: Vec<_> = catalog
            .alerts()
            .filter(|a| a.archived_at.is_none())
            .cloned()
            .collect();
        alerts.sort_by_key(|a| a.id);
        if alerts.is_empty() {
            return;
        }
        let alert = alerts[self.rng.random_range(0..alerts.len())].clone();
        self.txn_counter += 1;
        let key = format!("alert-{}", self.txn_counter);
        let request = if self.rng.random_bool(0.3) {
            Request {
                path: "/v1/alerts/archive".into(),
                body: json!({"id": alert.id.to_string(),
                             "release_uniqueness_key": self.rng.random_bool(0.5)}),
                key,
                purpose: Purpose::Alert,
            }
        } else {
            let customers: Vec<Id> = self
                .customer_ids()
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| alert.customer_id.is_none_or(|c| c == *id))
                .collect();
            if customers.is_empty() {
                return;
            }
            let customer = customers[self.rng.random_range(0..customers.len())];
            self.model.alert_resets.insert((alert.id, customer));
            Request {
                path: "/v1/customer-alerts/reset".into(),
                body: json!({"alert_id": alert.id.to_string(), "customer_id": customer.to_string()}),
                key,
                purpose: Purpose::Alert,
            }
        };
        self.control(app, request).await;
    }

    /// An alert request's answer: applied; a creation refused only for a uniqueness key taken
    /// (or, retried, for the alert it made); a reset refused only for an alert archived since.
    pub(super) fn alert_answered(&mut self, request: &Request, status: u16, value: &Value) {
        let message = value["message"].as_str().unwrap_or("");
        let fine = match (request.path.as_str(), status) {
            (_, 200) => {
                if request.path == "/v1/alerts/create" {
                    self.report.alerts_created += 1;
                }
                true
            }
            ("/v1/alerts/create", 409) => {
                message.contains("uniqueness key") || message.contains("already exists")
            }
            ("/v1/customer-alerts/reset", 400) => message.contains("archived"),
            _ => false,
        };
        if !fine {
            self.violations.push(format!(
                "{} {} was answered {status}: {value}",
                request.path, request.body
            ));
        }
    }

    /// The alert invariants (see the module's documentation).
    pub(super) async fn check_alerts(&mut self, engine: &Engine) -> Result<(), String> {
        let catalog = engine.catalog();
        // Every alert webhook received, by (alert, customer, resolved): its ids.
        let mut received: BTreeMap<(String, String, bool), BTreeSet<String>> = BTreeMap::new();
        for (id, kept) in self.receiver.kept() {
            if !kept.event_type.starts_with("alerts.") {
                continue;
            }
            let body: Value = serde_json::from_slice(&kept.body).unwrap_or(Value::Null);
            let p = &body["properties"];
            let key = (
                p["alert_id"].as_str().unwrap_or("").to_owned(),
                p["customer_id"].as_str().unwrap_or("").to_owned(),
                kept.event_type.ends_with("_resolved"),
            );
            received.entry(key).or_default().insert(id);
        }
        self.report.alert_webhooks = received.values().map(BTreeSet::len).sum();
        for (c, id) in self.customer_ids() {
            let limits = Limits::default();
            let catalog_for = std::sync::Arc::clone(&catalog);
            let found = engine
                .query(id, move |s| {
                    let customer = &s.customer;
                    let ctx = Ctx {
                        at: customer.alerts_as_of,
                        catalog: &catalog_for,
                        catalog_version: catalog_for.version(),
                        limits: &limits,
                    };
                    let in_force: Vec<Id> = catalog_for
                        .alerts_for(id, catalog_for.version())
                        .map(|a| a.id)
                        .collect();
                    let statuses: Vec<_> = customer
                        .alerts
                        .iter()
                        .map(|status| {
                            let reading = catalog_for
                                .alert(status.alert_id)
                                .map(|alert| customer.alert_reading(alert, &ctx));
                            (status.clone(), reading)
                        })
                        .collect();
                    (customer.profile.is_some(), in_force, statuses)
                })
                .await
                .map_err(|e| format!("alerts of customer {c}: {e}"))?;
            let (created, in_force, statuses) = found;
            if !created {
                continue;
            }
            for alert in &in_force {
                let evaluated = statuses
                    .iter()
                    .any(|(s, _)| s.alert_id == *alert && s.state != AlertState::Evaluating);
                if !evaluated {
                    return Err(format!("customer {c} was never evaluated on alert {alert}"));
                }
            }
            for (status, reading) in &statuses {
                let alert = status.alert_id;
                let archived = catalog.alert(alert).is_none_or(|a| a.archived_at.is_some());
                if !archived {
                    let reading = match reading {
                        Some(Ok(reading)) => reading,
                        other => return Err(format!("customer {c}, alert {alert}: {other:?}")),
                    };
                    let in_alarm = status.state == AlertState::InAlarm;
                    if in_alarm != reading.breached {
                        return Err(format!(
                            "customer {c}, alert {alert}: {:?}, but the state reads {reading:?}",
                            status.state
                        ));
                    }
                }
                let ids = |resolved| {
                    received
                        .get(&(alert.to_string(), id.to_string(), resolved))
                        .map_or(0, BTreeSet::len) as u64
                };
                if ids(false) != status.alarms || ids(true) != status.resolutions {
                    return Err(format!(
                        "customer {c}, alert {alert}: {} alarms and {} resolutions arrived, the state counts {} and {}",
                        ids(false),
                        ids(true),
                        status.alarms,
                        status.resolutions
                    ));
                }
                if !self.model.alert_resets.contains(&(alert, id)) {
                    let (alarms, resolutions) = (status.alarms, status.resolutions);
                    // A silent first evaluation may start in alarm without one; a resolution
                    // only ever answers an announced alarm.
                    let alternating = match status.state {
                        AlertState::InAlarm => alarms == resolutions + 1 || alarms == resolutions,
                        _ => resolutions == alarms,
                    };
                    if !alternating {
                        return Err(format!(
                            "customer {c}, alert {alert}: {alarms} alarms and {resolutions} resolutions do not alternate ({:?})",
                            status.state
                        ));
                    }
                }
            }
            // Nothing arrived about an alert the customer has no status on.
            for ((alert, customer, _), ids) in &received {
                if *customer == id.to_string()
                    && !statuses
                        .iter()
                        .any(|(s, _)| s.alert_id.to_string() == *alert)
                {
                    return Err(format!(
                        "customer {c}: {} alert webhooks about {alert} without a status",
                        ids.len()
                    ));
                }
            }
        }
        Ok(())
    }
}
