//! Versioned bincode encoding for the opaque payloads the engine stores (inputs, checkpointed
//! state, outbox effects). It owns the envelope only: one version byte, then
//! `bincode::serde` with the standard config. It must not know any payload type or migrate
//! between versions; a caller that changes a stored type bumps its version and decides what an
//! older version means.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StorageError;

/// Encodes `v` as `version` followed by its bincode bytes.
///
/// # Errors
/// [`StorageError::Encode`] when the value's `Serialize` impl reports an error.
pub fn encode<T: Serialize>(version: u8, v: &T) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![version];
    let body = bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| StorageError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes bytes written by [`encode`] with `expected_version`.
///
/// Trailing bytes are an error: they mean the reader's type is not the writer's type, which a
/// silent partial read would hide.
///
/// # Errors
/// [`StorageError::UnknownVersion`] when the version byte differs (or is missing),
/// [`StorageError::Decode`] when the body does not decode as `T` exactly.
pub fn decode<T: DeserializeOwned>(expected_version: u8, bytes: &[u8]) -> Result<T, StorageError> {
    let Some((&found, body)) = bytes.split_first() else {
        return Err(StorageError::Decode(
            "empty input, no version byte".to_owned(),
        ));
    };
    if found != expected_version {
        return Err(StorageError::UnknownVersion {
            expected: expected_version,
            found,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| StorageError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(StorageError::Decode(format!(
            "{} trailing bytes after the value",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn sample() -> Sample {
        Sample {
            id: 7,
            name: "acme".to_owned(),
            tags: vec!["a".to_owned()],
        }
    }

    #[test]
    fn codec_roundtrips_a_value_with_its_version() {
        let bytes = encode(3, &sample()).unwrap();
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<Sample>(3, &bytes).unwrap(), sample());
    }

    #[test]
    fn codec_rejects_a_wrong_version() {
        let bytes = encode(2, &sample()).unwrap();
        let err = decode::<Sample>(3, &bytes).unwrap_err();
        assert!(matches!(
            err,
            StorageError::UnknownVersion {
                expected: 3,
                found: 2
            }
        ));
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn codec_rejects_empty_truncated_and_trailing_input() {
        assert!(matches!(
            decode::<Sample>(1, &[]),
            Err(StorageError::Decode(_))
        ));
        let bytes = encode(1, &sample()).unwrap();
        assert!(matches!(
            decode::<Sample>(1, &bytes[..bytes.len() - 1]),
            Err(StorageError::Decode(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Sample>(1, &longer),
            Err(StorageError::Decode(_))
        ));
    }
}
