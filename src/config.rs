//! Configuration: `config/default.toml` (built in), then the `--config` file, then environment
//! variables `TOLLGATE__SECTION__KEY`. Unknown keys are refused, and [`Config::validate`] checks
//! values, so a typo stops start-up with a clear message instead of being ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::actors::EngineSettings;
use crate::actors::engine::EngineConfig;
use crate::actors::payment::PaymentSettings;
use crate::actors::webhook::{Destination, WebhookSettings};
use crate::domain::ids::MS_PER_DAY;
use crate::domain::{Limits, Money};
use crate::http::auth::TokenConfig;
use crate::secret::Secret;
use crate::storage::Durability;

/// The most recent transaction ids `storage.dedupe_memory_entries` may keep in memory (about
/// 4 GB at that size).
pub const DEDUPE_MEMORY_ENTRIES_MAX: usize = 20_000_000;

/// The built-in defaults (the same text as `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub engine: EngineSection,
    pub limits: LimitsConfig,
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub payments: PaymentsConfig,
    pub logging: LoggingConfig,
}

/// `[payments]`: how STRIPE-gated charges are paced (see the README's payment rules).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// An ACTION_REQUIRED workflow ends FAILED (its PaymentIntent cancelled) after this long.
    /// The value in force is logged with each ACTION_REQUIRED outcome: changing it affects
    /// workflows that enter ACTION_REQUIRED afterwards, and never replay.
    #[serde(default = "action_required_timeout_ms")]
    pub action_required_timeout_ms: i64,
    /// First retry (5xx, timeouts, 409, `idempotency_error`) and poll (`processing`,
    /// `requires_action`) delay, doubling up to `retry_max_ms`.
    #[serde(default = "payments_retry_first_ms")]
    pub retry_first_ms: i64,
    #[serde(default = "payments_retry_max_ms")]
    pub retry_max_ms: i64,
    pub stripe: Option<StripeConfig>,
}

impl Default for PaymentsConfig {
    fn default() -> PaymentsConfig {
        PaymentsConfig {
            action_required_timeout_ms: action_required_timeout_ms(),
            retry_first_ms: payments_retry_first_ms(),
            retry_max_ms: payments_retry_max_ms(),
            stripe: None,
        }
    }
}

fn action_required_timeout_ms() -> i64 {
    24 * 3_600_000
}

fn payments_retry_first_ms() -> i64 {
    1_000
}

fn payments_retry_max_ms() -> i64 {
    900_000
}

/// `[payments.stripe]`: the Stripe account that collects STRIPE-gated charges.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// The account's secret key (`sk_live_...` / `sk_test_...`).
    pub secret_key: Secret,
    /// Stripe's API; tests point it at a local fake.
    #[serde(default = "stripe_api_base")]
    pub api_base: String,
    /// The signing secret of the webhook endpoint configured in Stripe (`whsec_...`).
    pub webhook_secret: Secret,
    /// Path of Tollgate's endpoint receiving Stripe's webhooks.
    #[serde(default = "stripe_webhook_path")]
    pub webhook_path: String,
    /// Per-request timeout of Stripe calls.
    #[serde(default = "stripe_timeout_ms")]
    pub timeout_ms: u64,
}

fn stripe_api_base() -> String {
    crate::payments::stripe::API_BASE_DEFAULT.to_owned()
}

fn stripe_webhook_path() -> String {
    "/v1/stripe/webhook".to_owned()
}

fn stripe_timeout_ms() -> u64 {
    20_000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub workers: usize,
    pub body_limit_bytes: usize,
    /// Lets the development token (`tollgate-dev-token`) be used on an address other machines
    /// can reach; refused at start otherwise.
    #[serde(default)]
    pub allow_development_token_on_network: bool,
}

/// The token `config/default.toml` ships with: for trying Tollgate on one's own machine.
pub const DEVELOPMENT_TOKEN: &str = "tollgate-dev-token";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Plain strings (full access) or `{ token, name, scopes }` tables (`http::auth`).
    pub tokens: Vec<TokenConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "durability")]
    pub durability: Durability,
    pub dedupe_window_days: i64,
    pub dedupe_memory_entries: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub partitions: u16,
    pub mailbox_capacity: usize,
    pub pending_inputs_max: usize,
    pub apply_lag_max_ms: i64,
    pub checkpoint_interval_ms: u64,
    pub checkpoint_every_inputs: u64,
    pub evict_idle_ms: i64,
    pub preload_customers_max: usize,
    pub tick_interval_ms: u64,
    pub housekeeping_ms: u64,
    pub late_window_days: i64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub prepaid_threshold_min_usd_cents: i64,
    pub recharge_gap_min_usd_cents: i64,
    pub draft_grace_days: i64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    pub timeout_ms: u64,
    pub first_retry_ms: i64,
    pub max_interval_ms: i64,
    pub give_up_after_ms: i64,
    pub concurrency_per_destination: usize,
    pub schedule_check_ms: u64,
    pub delivered_retention_ms: i64,
    pub destinations: Vec<DestinationConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub url: String,
    pub secret: Secret,
    /// The webhook types this destination receives: exact names (`contract.end`) or prefixes
    /// ending in `*` (`payment_gate.*`). Absent: every type.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
}

/// The URL without user info or query string (where receivers put credentials), as the
/// operator API and the logs show it.
impl std::fmt::Debug for DestinationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationConfig")
            .field("url", &crate::actors::webhook::shown_destination(&self.url))
            .field("secret", &self.secret)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(deserialize_with = "log_format")]
    pub format: LogFormat,
    pub level: String,
}

/// Reads one of `choices` by name; anything else is refused with every valid name listed.
fn choice<'de, D, T: Copy>(deserializer: D, choices: &[(&str, T)]) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let name = String::deserialize(deserializer)?;
    choices
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            serde::de::Error::custom(format!("{name:?} is not one of {}", names.join(", ")))
        })
}

fn durability<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
    choice(d, &[("fsync", Durability::Fsync), ("wal", Durability::Wal)])
}

fn log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    choice(d, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
}

/// The levels a `logging.level` directive may name.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks `logging.level`: comma-separated directives, each a level or `target=level`
/// (RUST_LOG's syntax). A bare word that is no level would be read as a target and silence
/// everything else, so it is refused.
fn check_log_level(level: &str) -> Result<(), String> {
    let bad = |why: String| {
        Err(format!(
            "logging.level: {level:?} {why}; use a level ({}) or target=level directives, e.g. \"info,tollgate=debug\"",
            LOG_LEVELS.join(", ")
        ))
    };
    if level.trim().is_empty() {
        return bad("is empty".into());
    }
    for directive in level.split(',').map(str::trim) {
        let named = match directive.rsplit_once('=') {
            Some((target, named)) if !target.is_empty() => named,
            Some(_) => return bad(format!("has a directive without a target: {directive:?}")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&named.to_ascii_lowercase().as_str()) {
            return bad(format!("names no level in {directive:?}"));
        }
    }
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(level) {
        return bad(format!("is not a filter: {error}"));
    }
    Ok(())
}

/// A configuration error whose key was set by an environment variable, with the variable
/// named (the `config` crate names only the key).
fn name_the_variables(message: String) -> String {
    let mut named: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| {
            let Some(rest) = name.strip_prefix("TOLLGATE__") else {
                return false;
            };
            let path = rest.to_ascii_lowercase().replace("__", ".");
            let (section, field) = path.rsplit_once('.').unwrap_or(("", path.as_str()));
            message.contains(&format!("`{path}`"))
                || (message.contains(&format!("`{field}`"))
                    && message.contains(&format!("key `{section}`")))
        })
        .collect();
    named.sort();
    if named.is_empty() {
        message
    } else {
        format!(
            "{message} (set by the environment variable {})",
            named.join(", ")
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Loads the layered configuration.
    ///
    /// # Errors
    /// A message naming the file, key or value that is wrong.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("TOLLGATE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.tokens")
                .try_parsing(true),
        );
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| name_the_variables(format!("invalid configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.auth.tokens.is_empty() {
            return Err("auth.tokens: at least one token is required".into());
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            token.check(i)?;
            let earlier = &self.auth.tokens[..i];
            if earlier.iter().any(|t| t.secret() == token.secret()) {
                return Err(format!("auth.tokens[{i}]: the same token is listed twice"));
            }
            if let Some(name) = token.name()
                && earlier.iter().any(|t| t.name() == Some(name))
            {
                return Err(format!(
                    "auth.tokens[{i}]: the name {name:?} is taken by another token"
                ));
            }
        }
        if self.http.body_limit_bytes < 1024 {
            return Err("http.body_limit_bytes: must be at least 1024".into());
        }
        if !(1..=400).contains(&self.storage.dedupe_window_days) {
            return Err("storage.dedupe_window_days: must be between 1 and 400".into());
        }
        // The recent-key map is allocated for this many keys at start (about 200 bytes each
        // once full), so an absurd value must fail here, not abort the process.
        if self.storage.dedupe_memory_entries > DEDUPE_MEMORY_ENTRIES_MAX {
            return Err(format!(
                "storage.dedupe_memory_entries: at most {DEDUPE_MEMORY_ENTRIES_MAX}"
            ));
        }
        if self.engine.partitions > 1024 {
            return Err("engine.partitions: at most 1024".into());
        }
        if self.engine.mailbox_capacity == 0 || self.engine.pending_inputs_max < 100 {
            return Err(
                "engine.mailbox_capacity must be > 0 and engine.pending_inputs_max >= 100".into(),
            );
        }
        if !(1..=60_000).contains(&self.engine.apply_lag_max_ms) {
            return Err("engine.apply_lag_max_ms: must be between 1 and 60000".into());
        }
        if self.engine.checkpoint_interval_ms < 100 || self.engine.tick_interval_ms < 1_000 {
            return Err(
                "engine.checkpoint_interval_ms must be >= 100 and engine.tick_interval_ms >= 1000"
                    .into(),
            );
        }
        if !(1..=60_000).contains(&self.engine.housekeeping_ms) {
            return Err("engine.housekeeping_ms must be between 1 and 60000".into());
        }
        if !(1..=60_000).contains(&self.webhooks.schedule_check_ms) {
            return Err("webhooks.schedule_check_ms must be between 1 and 60000".into());
        }
        if self.limits.prepaid_threshold_min_usd_cents < 0
            || self.limits.recharge_gap_min_usd_cents < 0
            || self.limits.draft_grace_days < 0
        {
            return Err("limits: values must not be negative".into());
        }
        let w = &self.webhooks;
        if w.timeout_ms == 0
            || w.first_retry_ms <= 0
            || w.max_interval_ms < w.first_retry_ms
            || w.give_up_after_ms <= 0
            || w.delivered_retention_ms <= 0
            || w.concurrency_per_destination == 0
        {
            return Err("webhooks: timeouts, intervals and concurrency must be positive, max_interval_ms >= first_retry_ms".into());
        }
        for (i, d) in w.destinations.iter().enumerate() {
            if let Some(types) = &d.event_types {
                for pattern in types {
                    if !crate::domain::effects::type_pattern_is_known(pattern) {
                        return Err(format!(
                            "webhooks.destinations[{i}].event_types: {pattern:?} names no webhook type (exact names, or a prefix ending in *)"
                        ));
                    }
                }
            }
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err(format!(
                    "webhooks.destinations[{i}].url: must start with http:// or https://"
                ));
            }
            if d.secret.expose().is_empty() {
                return Err(format!(
                    "webhooks.destinations[{i}].secret: must not be empty"
                ));
            }
        }
        let p = &self.payments;
        if p.action_required_timeout_ms <= 0
            || p.retry_first_ms <= 0
            || p.retry_max_ms < p.retry_first_ms
        {
            return Err("payments: action_required_timeout_ms and retry_first_ms must be positive, retry_max_ms >= retry_first_ms".into());
        }
        if let Some(stripe) = &self.payments.stripe {
            if stripe.secret_key.expose().trim().is_empty()
                || stripe.webhook_secret.expose().trim().is_empty()
            {
                return Err("payments.stripe: secret_key and webhook_secret are required".into());
            }
            if !(stripe.api_base.starts_with("http://") || stripe.api_base.starts_with("https://"))
            {
                return Err("payments.stripe.api_base: must start with http:// or https://".into());
            }
            if !stripe.webhook_path.starts_with('/') || stripe.timeout_ms == 0 {
                return Err(
                    "payments.stripe: webhook_path must start with / and timeout_ms be positive"
                        .into(),
                );
            }
        }
        check_log_level(&self.logging.level)?;
        self.check_development_token()?;
        Ok(())
    }

    /// The development token may only be used where nobody else can reach it: a loopback
    /// listen address, unless `http.allow_development_token_on_network` says otherwise.
    fn check_development_token(&self) -> Result<(), String> {
        let development = self
            .auth
            .tokens
            .iter()
            .any(|t| t.secret() == DEVELOPMENT_TOKEN);
        let reachable = !self.listen_addr()?.ip().is_loopback();
        if development && reachable && !self.http.allow_development_token_on_network {
            return Err(format!(
                "auth.tokens: the development token is refused on {}, which other machines can reach: set your own tokens (auth.tokens, or TOLLGATE__AUTH__TOKENS), or set http.allow_development_token_on_network = true",
                self.http.listen
            ));
        }
        Ok(())
    }

    /// # Errors
    /// When `http.listen` is not `host:port`.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.http.listen.parse().map_err(|_| {
            format!(
                "http.listen: {:?} is not an address like 127.0.0.1:8080",
                self.http.listen
            )
        })
    }

    pub fn partitions(&self) -> u16 {
        if self.engine.partitions == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get().min(1024) as u16)
                .unwrap_or(1)
        } else {
            self.engine.partitions
        }
    }

    /// How the payment actor paces STRIPE charges.
    pub fn payment_settings(&self) -> PaymentSettings {
        PaymentSettings {
            action_required_timeout_ms: self.payments.action_required_timeout_ms,
            retry_first_ms: self.payments.retry_first_ms,
            retry_max_ms: self.payments.retry_max_ms,
            ..PaymentSettings::default()
        }
    }

    /// The engine's part of the configuration.
    pub fn engine_config(&self) -> EngineConfig {
        let e = &self.engine;
        let l = &self.limits;
        let w = &self.webhooks;
        EngineConfig {
            data_dir: self.storage.data_dir.clone(),
            durability: self.storage.durability,
            dedupe_window_ms: self.storage.dedupe_window_days * MS_PER_DAY,
            dedupe_memory_entries: self.storage.dedupe_memory_entries,
            settings: EngineSettings {
                partitions: self.partitions(),
                limits: Limits {
                    prepaid_threshold_min_usd_cents: Money::from_i64(
                        l.prepaid_threshold_min_usd_cents,
                    ),
                    recharge_gap_min_usd_cents: Money::from_i64(l.recharge_gap_min_usd_cents),
                    draft_grace_ms: l.draft_grace_days * MS_PER_DAY,
                },
                webhook_routes: w
                    .destinations
                    .iter()
                    .map(|d| crate::actors::shared::WebhookRoute {
                        url: d.url.clone(),
                        event_types: d.event_types.clone(),
                    })
                    .collect(),
                mailbox_capacity: e.mailbox_capacity,
                pending_inputs_max: e.pending_inputs_max,
                apply_lag_max_ms: e.apply_lag_max_ms,
                checkpoint_interval_ms: e.checkpoint_interval_ms,
                checkpoint_every_inputs: e.checkpoint_every_inputs,
                evict_idle_ms: e.evict_idle_ms,
                preload_customers_max: e.preload_customers_max,
                tick_interval_ms: e.tick_interval_ms,
                housekeeping_ms: e.housekeeping_ms,
                late_window_ms: e.late_window_days * MS_PER_DAY,
            },
            webhooks: WebhookSettings {
                destinations: w
                    .destinations
                    .iter()
                    .map(|d| Destination {
                        url: d.url.clone(),
                        secret: d.secret.expose().to_owned(),
                    })
                    .collect(),
                timeout_ms: w.timeout_ms,
                first_retry_ms: w.first_retry_ms,
                max_interval_ms: w.max_interval_ms,
                give_up_after_ms: w.give_up_after_ms,
                concurrency_per_destination: w.concurrency_per_destination,
                schedule_check_ms: w.schedule_check_ms,
                delivered_retention_ms: w.delivered_retention_ms,
            },
            submit_capacity: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_load_and_validate() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.http.listen, "127.0.0.1:8080");
        assert_eq!(config.storage.durability, Durability::Fsync);
        assert!(config.partitions() >= 1);
        assert_eq!(config.engine_config().dedupe_window_ms, 34 * MS_PER_DAY);
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[storage]\ndurability = \"wal\"\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.storage.durability, Durability::Wal);
        std::fs::write(&path, "[storage]\ndurabilty = \"wal\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err();
        assert!(err.contains("durabilty"), "{err}");
        std::fs::write(&path, "[storage]\ndurability = \"sometimes\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn tokens_are_plain_strings_or_tables_with_a_name_and_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let write = |tokens: &str| {
            std::fs::write(&path, format!("[auth]\ntokens = {tokens}\n")).unwrap();
            Config::load(Some(&path))
        };
        let config = write(
            r#"["plain-token-1", { token = "ingest-token-1", name = "ingest", scopes = ["ingest"] }]"#,
        )
        .unwrap();
        assert_eq!(
            config.auth.tokens[0],
            TokenConfig::Full("plain-token-1".into())
        );
        assert_eq!(config.auth.tokens[1].name(), Some("ingest"));
        assert_eq!(
            config.auth.tokens[1].scopes(),
            Ok(vec![crate::http::auth::Scope::Ingest])
        );
        let err = write(r#"[{ token = "ingest-token-1", scopes = ["admin"] }]"#).unwrap_err();
        assert!(
            err.contains("auth.tokens[0]") && err.contains("admin"),
            "{err}"
        );
        let err = write(r#"[{ token = "ingest-token-1", scope = ["read"] }]"#).unwrap_err();
        assert!(err.contains("invalid configuration"), "{err}");
        let err = write(r#"["same-token-1", { token = "same-token-1", scopes = ["read"] }]"#)
            .unwrap_err();
        assert!(
            err.contains("auth.tokens[1]") && err.contains("twice"),
            "{err}"
        );
        let err = write(
            r#"[{ token = "token-one-1", name = "a", scopes = ["read"] }, { token = "token-two-2", name = "a", scopes = ["ingest"] }]"#,
        )
        .unwrap_err();
        assert!(
            err.contains("auth.tokens[1]") && err.contains("\"a\""),
            "{err}"
        );
    }

    #[test]
    fn a_log_level_that_names_no_level_is_refused() {
        let mut config = Config::load(None).unwrap();
        for good in [
            "info",
            "WARN",
            "info,tollgate=debug",
            "tollgate::http=trace,off",
        ] {
            config.logging.level = good.into();
            assert_eq!(config.validate(), Ok(()), "{good}");
        }
        for bad in [
            "verbose!!",
            "",
            " ",
            "info,loud",
            "=debug",
            "tollgate=chatty",
        ] {
            config.logging.level = bad.into();
            let err = config.validate().unwrap_err();
            assert!(
                err.starts_with("logging.level") && err.contains("trace, debug, info"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_wrong_choice_is_refused_with_every_valid_one_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        for (text, names) in [
            (
                "[storage]\ndurability = \"sometimes\"\n",
                "\"fsync\", \"wal\"",
            ),
            ("[logging]\nformat = \"xml\"\n", "\"text\", \"json\""),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path)).unwrap_err();
            assert!(err.contains(names), "{err}");
        }
    }

    #[test]
    fn the_development_token_is_refused_where_other_machines_can_reach_it() {
        let mut config = Config::load(None).unwrap();
        assert_eq!(config.validate(), Ok(()), "loopback: fine");
        for listen in ["0.0.0.0:8080", "192.168.1.10:8080", "[::]:8080"] {
            config.http.listen = listen.into();
            let err = config.validate().unwrap_err();
            assert!(err.contains("development token"), "{listen}: {err}");
        }
        config.http.listen = "[::1]:8080".into();
        assert_eq!(config.validate(), Ok(()));
        config.http.listen = "0.0.0.0:8080".into();
        config.http.allow_development_token_on_network = true;
        assert_eq!(config.validate(), Ok(()), "allowed explicitly");
        config.http.allow_development_token_on_network = false;
        config.auth.tokens = vec![TokenConfig::Full("a-real-token-1".into())];
        assert_eq!(config.validate(), Ok(()), "own tokens");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let mut config = Config::load(None).unwrap();
        config.http.listen = "localhost".into();
        assert!(config.validate().unwrap_err().contains("http.listen"));
        let mut config = Config::load(None).unwrap();
        config.auth.tokens = vec![];
        assert!(config.validate().unwrap_err().contains("auth.tokens"));
        let mut config = Config::load(None).unwrap();
        config.engine.housekeeping_ms = 0;
        assert!(config.validate().unwrap_err().contains("housekeeping_ms"));
        let mut config = Config::load(None).unwrap();
        assert_eq!(config.engine_config().settings.apply_lag_max_ms, 100);
        for bad in [0, 60_001] {
            config.engine.apply_lag_max_ms = bad;
            assert!(config.validate().unwrap_err().contains("apply_lag_max_ms"));
        }
        let mut config = Config::load(None).unwrap();
        config.storage.dedupe_memory_entries = DEDUPE_MEMORY_ENTRIES_MAX;
        assert_eq!(config.validate(), Ok(()));
        config.storage.dedupe_memory_entries = DEDUPE_MEMORY_ENTRIES_MAX + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("dedupe_memory_entries")
        );
        let mut config = Config::load(None).unwrap();
        config.webhooks.schedule_check_ms = 0;
        assert!(config.validate().unwrap_err().contains("schedule_check_ms"));
        let mut config = Config::load(None).unwrap();
        config.webhooks.destinations = vec![DestinationConfig {
            url: "ftp://x".into(),
            secret: "s".into(),
            event_types: None,
        }];
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("destinations[0].url")
        );
        // A destination's types are known names or prefixes of some: a typo is refused.
        for (types, ok) in [
            (vec!["payment_gate.*", "contract.end"], true),
            (vec!["*"], true),
            (vec!["commit.segment.*"], true),
            (vec!["contract.ended"], false),
            (vec!["invoices.*"], false),
        ] {
            let mut config = Config::load(None).unwrap();
            config.webhooks.destinations = vec![DestinationConfig {
                url: "http://127.0.0.1:9/hooks".into(),
                secret: "s".into(),
                event_types: Some(types.iter().map(|t| t.to_string()).collect()),
            }];
            let result = config.validate();
            assert_eq!(result.is_ok(), ok, "{types:?}: {result:?}");
            if !ok {
                assert!(result.unwrap_err().contains("event_types"));
            }
        }
        let mut config = Config::load(None).unwrap();
        assert_eq!(
            config.payment_settings().action_required_timeout_ms,
            24 * 3_600_000
        );
        config.payments.action_required_timeout_ms = 0;
        assert!(config.validate().unwrap_err().contains("payments"));
    }
}
