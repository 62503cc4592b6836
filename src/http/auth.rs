//! Bearer tokens and their scopes (SPEC 3.1). A token in `auth.tokens` is either a plain string
//! (full access) or a table `{ token, name, scopes }`. Each request is classified by the scope
//! it needs ([`required_scope`]); a token without that scope (or `operator`) gets 403 with a
//! `{"message"}` body, and the refusal is written to the audit log.
//!
//! A token is known by its *identity* wherever it is recorded: its `name`, or `token-` and 16
//! hex digits of an HMAC-SHA256 of the token under a random key kept in the data directory
//! (`auth/fingerprint-key` in `meta`), so a fingerprint read from the audit log cannot be
//! brute-forced back into the token. The token itself is never logged or stored.
//!
//! Requests are classified by the path the router matches (percent-decoded except `%2F`,
//! `%25` and `%2B`), not the raw one: `/v1/%74ollgate/...` is an operator call.

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
    Full(crate::secret::Secret),
    Scoped(ScopedToken),
}

/// A token with a name and scopes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    pub token: crate::secret::Secret,
    /// How the audit log and the logs name this token (default: a fingerprint).
    #[serde(default)]
    pub name: Option<String>,
    pub scopes: Vec<String>,
}

impl TokenConfig {
    pub fn secret(&self) -> &str {
        match self {
            TokenConfig::Full(token) => token.expose(),
            TokenConfig::Scoped(scoped) => scoped.token.expose(),
        }
    }

    /// The configured name, if any (otherwise the token is recorded by its fingerprint).
    pub fn name(&self) -> Option<&str> {
        match self {
            TokenConfig::Scoped(ScopedToken {
                name: Some(name), ..
            }) => Some(name),
            _ => None,
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
        let secret = self.secret();
        if secret.len() < 8 {
            return Err(format!("{at}: a token is shorter than 8 characters"));
        }
        // An HTTP header carries visible ASCII; anything else could never authenticate.
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: a token may only hold visible ASCII characters (no spaces)"
            ));
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
                if name.starts_with(FINGERPRINT_PREFIX) {
                    return Err(format!(
                        "{at}: name: may not start with {FINGERPRINT_PREFIX:?} (fingerprints do)"
                    ));
                }
            }
        }
        Ok(())
    }
}

const FINGERPRINT_PREFIX: &str = "token-";

/// `token-` and the first 16 hex digits of HMAC-SHA256(`key`, token): tells tokens apart in
/// the audit log without saying anything about them to whoever lacks the data directory's key.
pub fn fingerprint(key: &[u8], token: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(token.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{FINGERPRINT_PREFIX}{}", &hex::encode(digest)[..16])
}

/// A configured token, ready to be compared.
struct Known {
    /// SHA-256 of the token: every comparison is of 32 bytes, whatever the tokens' lengths.
    digest: [u8; 32],
    secret: String,
    name: Option<String>,
    scopes: Vec<Scope>,
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Which configured token (its place in `auth.tokens`).
    pub index: usize,
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
                    digest: Sha256::digest(entry.secret().as_bytes()).into(),
                    secret: entry.secret().to_owned(),
                    name: entry.name().map(str::to_owned),
                    scopes: entry.scopes().unwrap_or_default(),
                })
                .collect(),
        )
    }

    /// The caller whose token is `candidate`. Every configured token's digest is compared in
    /// constant time with the candidate's, so how long this takes says nothing about which
    /// token (or how much of one, or how long) matched.
    pub fn authenticate(&self, candidate: &[u8]) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        let mut found = None;
        for (index, known) in self.0.iter().enumerate() {
            if constant_time_eq(&known.digest, &digest) && found.is_none() {
                found = Some(index);
            }
        }
        found.map(|index| Caller {
            index,
            scopes: self.0[index].scopes.clone(),
        })
    }

    /// Whether some token has no name (its identity then needs the fingerprint key).
    pub fn any_unnamed(&self) -> bool {
        self.0.iter().any(|k| k.name.is_none())
    }

    /// The identity of every token, in order: its name or its fingerprint under `key`.
    pub fn identities(&self, key: &[u8]) -> Vec<String> {
        self.0
            .iter()
            .map(|k| match &k.name {
                Some(name) => name.clone(),
                None => fingerprint(key, &k.secret),
            })
            .collect()
    }
}

/// Where the fingerprint key lives in `meta`.
const FINGERPRINT_KEY: &[u8] = b"auth/fingerprint-key";

/// The data directory's fingerprint key, made (32 random bytes, stored durably) at its first
/// use.
///
/// # Errors
/// Storage errors.
pub fn fingerprint_key(
    store: &crate::storage::Store,
) -> Result<Vec<u8>, crate::storage::StorageError> {
    if let Some(key) = store.meta_get(FINGERPRINT_KEY)? {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    store.meta_put(FINGERPRINT_KEY, &key)?;
    Ok(key.to_vec())
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
pub const READ_POSTS: [&str; 16] = [
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
    "/v1/contracts/customerCredits/list",
    "/v1/getCustomerBillingProviderConfigurations",
    "/v1/customer-alerts/list",
    "/v1/customer-alerts/get",
];

/// Tollgate's endpoint creating a custom pricing unit (Metronome's SDK has no create).
pub const CREDIT_TYPE_CREATE: &str = "/v1/tollgate/credit-types/create";

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
    } else if path == CREDIT_TYPE_CREATE {
        // A catalog change like a rate card's, under /v1/tollgate/ only because the SDK has none.
        Scope::Write
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
            required_scope(&post, "/v1/tollgate/credit-types/create"),
            Scope::Write
        );
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
        let served = crate::http::openapi::served(None);
        let posts: Vec<&str> = served
            .iter()
            .filter(|o| o.method == crate::http::openapi::Method::Post)
            .map(|o| o.path.as_str())
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
    fn a_token_is_known_by_its_name_or_a_keyed_fingerprint_never_by_itself() {
        let tokens = Tokens::new(&[
            TokenConfig::Full("secret-token-1".into()),
            scoped("secret-token-2", Some("ingest-svc"), &["ingest"]),
            scoped("secret-token-3", None, &["read"]),
        ]);
        assert!(tokens.any_unnamed());
        let ids = tokens.identities(b"key-one");
        assert_eq!(ids[1], "ingest-svc");
        for id in [&ids[0], &ids[2]] {
            assert!(id.starts_with("token-") && id.len() == 22, "{id}");
            assert!(!id.contains("secret"));
        }
        assert_ne!(ids[0], ids[2]);
        assert_eq!(ids[0], fingerprint(b"key-one", "secret-token-1"));
        // Another data directory's key gives another fingerprint: none can be precomputed.
        assert_ne!(tokens.identities(b"key-two")[0], ids[0]);
        let named = Tokens::new(&[scoped("secret-token-2", Some("a"), &["read"])]);
        assert!(!named.any_unnamed());
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
        assert_eq!(ingest.index, 1);
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
        assert!(check(TokenConfig::Full(" padded-token ".into())).contains("visible ASCII"));
        assert!(check(TokenConfig::Full("tökenwithumlaut".into())).contains("visible ASCII"));
        assert!(
            check(scoped(
                "long-enough-token",
                Some("token-0123abcd"),
                &["read"]
            ))
            .contains("fingerprints")
        );
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
