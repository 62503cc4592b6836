//! Stripe's webhook signatures: `Stripe-Signature: t=<unix seconds>,v1=<hex hmac>[,v1=...]`,
//! an HMAC-SHA256 over `"{t}.{payload}"` with the endpoint's signing secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Stripe's webhook signatures are accepted this far from now (Stripe's own default).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// Verifies a `Stripe-Signature` header over `payload` with `secret`, within the tolerance of
/// `now_s`. The comparison is constant-time (`Mac::verify_slice`).
///
/// # Errors
/// A description of what is wrong (missing parts, stale timestamp, no matching signature).
pub fn verify_signature(
    header: &str,
    payload: &[u8],
    secret: &str,
    now_s: i64,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.push(sig.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("Stripe-Signature has no timestamp")?;
    if signatures.is_empty() {
        return Err("Stripe-Signature has no v1 signature".into());
    }
    if (now_s - timestamp).abs() > SIGNATURE_TOLERANCE_S {
        return Err("Stripe-Signature timestamp is outside the tolerance".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| "unusable webhook secret".to_owned())?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let matched = signatures
        .iter()
        .any(|sig| hex::decode(sig).is_ok_and(|bytes| mac.clone().verify_slice(&bytes).is_ok()));
    if matched {
        Ok(())
    } else {
        Err("no Stripe-Signature v1 value matches".into())
    }
}

/// Signs a payload as Stripe does (tests and fakes).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_within_tolerance_only() {
        let payload = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let header = sign(payload, "whsec_x", 1_000_000);
        assert!(verify_signature(&header, payload, "whsec_x", 1_000_100).is_ok());
        assert!(verify_signature(&header, payload, "whsec_y", 1_000_100).is_err());
        assert!(verify_signature(&header, b"{}", "whsec_x", 1_000_100).is_err());
        assert!(verify_signature(&header, payload, "whsec_x", 1_000_000 + 301).is_err());
        assert!(verify_signature("v1=abc", payload, "whsec_x", 1_000_000).is_err());
        // Several v1 values (secret rotation): any match counts.
        let rotated = format!("{header},v1=deadbeef");
        assert!(verify_signature(&rotated, payload, "whsec_x", 1_000_000).is_ok());
    }
}
