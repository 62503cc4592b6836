//! Bearer tokens and their scopes (SPEC 3.1). A token in `auth.tokens` is either a plain string
//! (full access) or a table `{ token, name, scopes }`. Each request is classified by the scope
//! it needs ([`required_scope`]); a token without that scope (or `operator`) gets 403 with a
//! `{"message"}` body, and the refusal is written to the audit log.
//!
//! A token is known by its *identity* (its `name`, or `token-` and the first 12 hex digits of
//! its SHA-256) wherever it is recorded: the token itself is never logged or stored.

use actix_web::http::Method;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a request may need. `Operator` includes every other scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/ingest` only.
    Ingest,
    /// GETs, and the POSTs that only read (Metronome's `get`/`list` calls).
    Read,
    /// Every other call of the Metronome-compatible API: customers, catalog, contracts,
    /// invoices, the external release.
    Write,
    /// Tollgate's own operator surface (`/v1/tollgate/...`), and everything else.
    Operator,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Ingest, Scope::Read, Scope::Write, Scope::Operator];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Operator => "operator",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a call needing this scope changes something (and so is audited).
    pub fn mutates(self) -> bool {
        matches!(self, Scope::Write | Scope::Operator)
    }
}

/// One entry of `auth.tokens`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenConfig {
    /// A plain token: every scope.
    Full(String),
    Scoped(ScopedToken),
}

/// A token with a name and scopes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    pub token: String,
    /// How the audit log and the logs name this token (default: a fingerprint).
    #[serde(default)]
    pub name: Option<String>,
    pub scopes: Vec<String>,
}

impl TokenConfig {
    pub fn secret(&self) -> &str {
        match self {
            TokenConfig::Full(token) => token,
            TokenConfig::Scoped(scoped) => &scoped.token,
        }
    }

    /// The name under which the token is recorded: its `name`, or a fingerprint of it.
    pub fn identity(&self) -> String {
        match self {
            TokenConfig::Scoped(ScopedToken {
                name: Some(name), ..
            }) => name.clone(),
            _ => fingerprint(self.secret()),
        }
    }

    /// Its scopes; `Err` names the first unknown one.
    ///
    /// # Errors
    /// An unknown scope name.
    pub fn scopes(&self) -> Result<Vec<Scope>, String> {
        match self {
            TokenConfig::Full(_) => Ok(vec![Scope::Operator]),
            TokenConfig::Scoped(scoped) => scoped
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        format!("unknown scope {s:?} (known: ingest, read, write, operator)")
                    })
                })
                .collect(),
        }
    }

    /// Checks what `Config::validate` reports, naming the entry.
    ///
    /// # Errors
    /// The first problem, prefixed with `auth.tokens[i]`.
    pub fn check(&self, index: usize) -> Result<(), String> {
        let at = format!("auth.tokens[{index}]");
        if self.secret().trim().len() < 8 {
            return Err(format!("{at}: a token is shorter than 8 characters"));
        }
        if self.secret().trim() != self.secret() {
            return Err(format!("{at}: a token has leading or trailing whitespace"));
        }
        if let TokenConfig::Scoped(scoped) = self {
            if scoped.scopes.is_empty() {
                return Err(format!("{at}: scopes: at least one scope is required"));
            }
            self.scopes().map_err(|e| format!("{at}: scopes: {e}"))?;
            if let Some(name) = &scoped.name {
                let ok = (1..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(format!(
                        "{at}: name: 1 to 64 characters of letters, digits, '.', '_' or '-'"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `token-` and the first 12 hex digits of the token's SHA-256: enough to tell tokens apart in
/// the audit log, useless for guessing the token.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("token-{}", &hex::encode(digest)[..12])
}

/// A configured token, ready to be compared.
struct Known {
    secret: Vec<u8>,
    identity: String,
    scopes: Vec<Scope>,
}

/// Who made a request: put in the request's extensions once its token is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    pub fn may(&self, needed: Scope) -> bool {
        self.scopes.contains(&Scope::Operator) || self.scopes.contains(&needed)
    }

    /// The scopes, comma-separated, for messages.
    pub fn scope_names(&self) -> String {
        let names: Vec<&str> = self.scopes.iter().map(|s| s.name()).collect();
        names.join(", ")
    }
}

/// The configured tokens.
pub struct Tokens(Vec<Known>);

impl Tokens {
    /// Tokens from config entries. An entry with an unknown scope gets no scope at all (the
    /// config is validated before this; a test building tokens directly sees it refused).
    pub fn new(entries: &[TokenConfig]) -> Tokens {
        Tokens(
            entries
                .iter()
                .map(|entry| Known {
                    secret: entry.secret().as_bytes().to_vec(),
                    identity: entry.identity(),
                    scopes: entry.scopes().unwrap_or_default(),
                })
                .collect(),
        )
    }

    /// The caller whose token is `candidate`. Every configured token is compared in constant
    /// time, so how long this takes does not say which one (or how much of one) matched.
    pub fn authenticate(&self, candidate: &[u8]) -> Option<Caller> {
        let mut found = None;
        for known in &self.0 {
            if constant_time_eq(&known.secret, candidate) && found.is_none() {
                found = Some(known);
            }
        }
        found.map(|known| Caller {
            identity: known.identity.clone(),
            scopes: known.scopes.clone(),
        })
    }
}

/// Compares without an early exit on the first differing byte (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The POSTs of the Metronome-compatible API that only read.
pub const READ_POSTS: [&str; 13] = [
    "/v1/contract-pricing/products/get",
    "/v1/contract-pricing/products/list",
    "/v1/contract-pricing/rate-cards/get",
    "/v1/contract-pricing/rate-cards/list",
    "/v1/contract-pricing/rate-cards/getRates",
    "/v1/contracts/get",
    "/v1/contracts/list",
    "/v2/contracts/get",
    "/v2/contracts/list",
    "/v1/contracts/customerBalances/list",
    "/v1/contracts/customerBalances/getNetBalance",
    "/v1/contracts/customerCommits/list",
    "/v1/getCustomerBillingProviderConfigurations",
];

/// The scope a request needs. Anything not known to read or ingest needs `write`, and anything
/// under `/v1/tollgate/` that is not a read needs `operator`: a new route is never open to a
/// narrower token by accident.
pub fn required_scope(method: &Method, path: &str) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else if method == Method::POST && path == "/v1/ingest" {
        Scope::Ingest
    } else if method == Method::POST && READ_POSTS.contains(&path) {
        Scope::Read
    } else if path.starts_with("/v1/tollgate/") || !path.starts_with("/v") {
        Scope::Operator
    } else {
        Scope::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(token: &str, name: Option<&str>, scopes: &[&str]) -> TokenConfig {
        TokenConfig::Scoped(ScopedToken {
            token: token.into(),
            name: name.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    #[test]
    fn requests_need_the_scope_of_what_they_do() {
        let post = Method::POST;
        assert_eq!(required_scope(&post, "/v1/ingest"), Scope::Ingest);
        assert_eq!(required_scope(&Method::GET, "/v1/customers"), Scope::Read);
        assert_eq!(required_scope(&post, "/v1/contracts/list"), Scope::Read);
        assert_eq!(required_scope(&post, "/v1/customers"), Scope::Write);
        assert_eq!(required_scope(&post, "/v2/contracts/edit"), Scope::Write);
        assert_eq!(
            required_scope(&post, "/v1/tollgate/quarantine/discard"),
            Scope::Operator
        );
        assert_eq!(
            required_scope(&Method::GET, "/v1/tollgate/audit"),
            Scope::Read
        );
        // Look-alikes of the read and ingest paths are not reads.
        assert_eq!(required_scope(&post, "/v1/ingest/"), Scope::Write);
        assert_eq!(required_scope(&post, "/v1/contracts/list/x"), Scope::Write);
        assert_eq!(required_scope(&post, "/V1/INGEST"), Scope::Operator);
        assert_eq!(required_scope(&Method::DELETE, "/v1/ingest"), Scope::Write);
    }

    #[test]
    fn every_read_post_is_a_served_post_and_every_served_get_or_list_post_is_a_read() {
        let posts: Vec<&str> = crate::http::openapi::ENDPOINTS
            .iter()
            .filter(|e| e.0 == "post")
            .map(|e| e.1)
            .collect();
        for path in READ_POSTS {
            assert!(posts.contains(&path), "{path} is not a documented POST");
        }
        // Metronome names its reading POSTs get*/list: none may be left needing `write`.
        for path in posts {
            let last = path.rsplit('/').next().unwrap_or("");
            if last.starts_with("get") || last == "list" {
                assert_eq!(required_scope(&Method::POST, path), Scope::Read, "{path}");
            }
        }
    }

    #[test]
    fn a_token_is_known_by_its_name_or_a_fingerprint_never_by_itself() {
        let plain = TokenConfig::Full("secret-token-1".into());
        let identity = plain.identity();
        assert!(
            identity.starts_with("token-") && identity.len() == 18,
            "{identity}"
        );
        assert!(!identity.contains("secret"));
        assert_eq!(identity, fingerprint("secret-token-1"));
        assert_ne!(identity, fingerprint("secret-token-2"));
        let named = scoped("secret-token-1", Some("ingest-svc"), &["ingest"]);
        assert_eq!(named.identity(), "ingest-svc");
        assert_eq!(
            scoped("secret-token-1", None, &["read"]).identity(),
            identity
        );
    }

    #[test]
    fn authentication_finds_the_token_and_its_scopes() {
        let tokens = Tokens::new(&[
            TokenConfig::Full("full-access-token".into()),
            scoped("ingest-only-token", Some("ingest"), &["ingest"]),
            scoped("reader-and-writer", Some("rw"), &["read", "write"]),
        ]);
        let full = tokens.authenticate(b"full-access-token").unwrap();
        assert!(Scope::ALL.iter().all(|&s| full.may(s)));
        let ingest = tokens.authenticate(b"ingest-only-token").unwrap();
        assert_eq!(ingest.identity, "ingest");
        assert!(ingest.may(Scope::Ingest));
        assert!(!ingest.may(Scope::Read) && !ingest.may(Scope::Write));
        assert!(!ingest.may(Scope::Operator));
        let rw = tokens.authenticate(b"reader-and-writer").unwrap();
        assert!(rw.may(Scope::Read) && rw.may(Scope::Write));
        assert!(!rw.may(Scope::Ingest) && !rw.may(Scope::Operator));
        assert_eq!(rw.scope_names(), "read, write");
        assert_eq!(tokens.authenticate(b"ingest-only-toke"), None);
        assert_eq!(tokens.authenticate(b""), None);
    }

    #[test]
    fn bad_token_entries_are_refused_naming_the_entry() {
        let check = |entry: TokenConfig| entry.check(2).unwrap_err();
        assert!(check(TokenConfig::Full("short".into())).starts_with("auth.tokens[2]"));
        assert!(check(TokenConfig::Full(" padded-token ".into())).contains("whitespace"));
        assert!(check(scoped("long-enough-token", None, &[])).contains("at least one scope"));
        let unknown = check(scoped("long-enough-token", None, &["admin"]));
        assert!(unknown.contains("\"admin\""), "{unknown}");
        assert!(check(scoped("long-enough-token", Some("a b"), &["read"])).contains("name"));
        assert!(check(scoped("long-enough-token", Some(""), &["read"])).contains("name"));
        assert_eq!(
            scoped(
                "long-enough-token",
                Some("ci.ingest-1"),
                &["ingest", "read"]
            )
            .check(0),
            Ok(())
        );
    }
}
