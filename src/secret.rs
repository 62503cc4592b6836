//! A secret from the configuration (a bearer token, a webhook signing secret, a Stripe key):
//! it never prints. `Debug` shows `Secret([redacted])`, there is no `Display` and no
//! `Serialize`, so `tollgate check-config`, a `{:?}` of any struct that holds one, and every log
//! line leave it out; code that needs the value asks for it by name ([`Secret::expose`]).

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: for signing, comparing and sending, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            secret: Secret,
        }
        let holder = Holder {
            secret: "sk_live_do-not-print".into(),
        };
        let shown = format!("{holder:?} {holder:#?}");
        assert!(!shown.contains("do-not-print"), "{shown}");
        assert!(shown.contains("[redacted]"));
        assert_eq!(holder.secret.expose(), "sk_live_do-not-print");
        let parsed: Secret = serde_json::from_str("\"whsec_1\"").unwrap();
        assert_eq!(parsed, Secret::new("whsec_1"));
    }
}
