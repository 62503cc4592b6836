//! Reads a JSON object field by field, so that every 400 names the field it is about (with its
//! path for nested objects: `rates[2].tiers[0].price`). `null` counts as absent, as Metronome
//! treats it; fields nobody asks for are ignored.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::super::error::{ApiError, ApiResult};
use super::super::wire;
use crate::domain::{Id, Money, Rejection, Timestamp};

pub(super) struct Fields {
    /// The path of this object followed by a dot, empty for the request body.
    prefix: String,
    map: Map<String, Value>,
}

impl Fields {
    /// The request body; an empty body counts as `{}`.
    ///
    /// # Errors
    /// 400 when the body is not a JSON object.
    pub fn from_body(body: &[u8]) -> ApiResult<Fields> {
        let value: Value = wire::parse_body(body)?;
        match value {
            Value::Object(map) => Ok(Fields {
                prefix: String::new(),
                map,
            }),
            _ => Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            )),
        }
    }

    /// The full name of `key`, for messages.
    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value of `key`, `None` when absent or null.
    pub fn value(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value),
        }
    }

    /// # Errors
    /// 400 naming the field when it has the wrong type.
    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> ApiResult<Option<T>> {
        self.value(key)
            .map(|value| {
                serde_json::from_value(value)
                    .map_err(|e| ApiError::BadRequest(format!("{}: {e}", self.name(key))))
            })
            .transpose()
    }

    /// # Errors
    /// 400 naming the field when it is missing or has the wrong type.
    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> ApiResult<T> {
        self.opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// A required string that is not blank.
    ///
    /// # Errors
    /// 400 naming the field.
    pub fn req_text(&mut self, key: &str) -> ApiResult<String> {
        let text: String = self.req(key)?;
        if text.trim().is_empty() {
            return Err(self.missing(key));
        }
        Ok(text)
    }

    /// # Errors
    /// 400 naming the field when it is not a UUID.
    pub fn opt_id(&mut self, key: &str) -> ApiResult<Option<Id>> {
        let text: Option<String> = self.opt(key)?;
        wire::parse_opt_id(&self.name(key), text.as_deref())
    }

    /// # Errors
    /// 400 naming the field when it is missing or not a UUID.
    pub fn req_id(&mut self, key: &str) -> ApiResult<Id> {
        self.opt_id(key)?.ok_or_else(|| self.missing(key))
    }

    /// # Errors
    /// 400 naming the field when it is not an RFC 3339 timestamp.
    pub fn opt_time(&mut self, key: &str) -> ApiResult<Option<Timestamp>> {
        let text: Option<String> = self.opt(key)?;
        wire::parse_opt_time(&self.name(key), text.as_deref())
    }

    /// # Errors
    /// 400 naming the field when it is missing or not an RFC 3339 timestamp.
    pub fn req_time(&mut self, key: &str) -> ApiResult<Timestamp> {
        self.opt_time(key)?.ok_or_else(|| self.missing(key))
    }

    /// An amount, read exactly from the JSON number's text.
    ///
    /// # Errors
    /// 400 naming the field when it is not an exact number.
    pub fn opt_money(&mut self, key: &str) -> ApiResult<Option<Money>> {
        self.value(key)
            .map(|value| wire::parse_money(&self.name(key), &value))
            .transpose()
    }

    /// # Errors
    /// 400 naming the field when it is not an exact number.
    pub fn opt_decimal(&mut self, key: &str) -> ApiResult<Option<rust_decimal::Decimal>> {
        self.value(key)
            .map(|value| wire::parse_decimal(&self.name(key), &value))
            .transpose()
    }

    /// A list of objects, each read with its own path (`key[i].`).
    ///
    /// # Errors
    /// 400 naming the field when it is not a list of objects.
    pub fn opt_objects(&mut self, key: &str) -> ApiResult<Option<Vec<Fields>>> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(ApiError::BadRequest(format!(
                "{}: must be a list",
                self.name(key)
            )));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let prefix = format!("{}{key}[{i}].", self.prefix);
                match item {
                    Value::Object(map) => Ok(Fields { prefix, map }),
                    _ => Err(ApiError::BadRequest(format!(
                        "{}: must be an object",
                        prefix.trim_end_matches('.')
                    ))),
                }
            })
            .collect::<ApiResult<Vec<Fields>>>()
            .map(Some)
    }

    /// Refuses a field Tollgate does not implement when the request actually uses it (present,
    /// not null, not an empty list or object): silently ignoring it would bill differently from
    /// what the caller asked for.
    ///
    /// # Errors
    /// 400 `unsupported: <field> ...`.
    pub fn refuse(&mut self, key: &str, why: &str) -> ApiResult<()> {
        let used = match self.value(key) {
            None => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(Value::Object(map)) => !map.is_empty(),
            Some(_) => true,
        };
        if used {
            return Err(Rejection::Unsupported(format!("{} {why}", self.name(key))).into());
        }
        Ok(())
    }

    /// A 400 for an unsupported value of an enum field.
    pub fn unsupported_value(&self, key: &str, value: &str, why: &str) -> ApiError {
        Rejection::Unsupported(format!("{} {value:?} {why}", self.name(key))).into()
    }

    /// A 400 for a field with an invalid value.
    pub fn invalid(&self, key: &str, why: &str) -> ApiError {
        ApiError::BadRequest(format!("{}: {why}", self.name(key)))
    }

    /// A domain refusal about a field of this object, with this object's path put in front of
    /// the field name the domain gave.
    pub fn locate(&self, rejection: Rejection) -> ApiError {
        match rejection {
            Rejection::InvalidField(text) if !self.prefix.is_empty() => {
                ApiError::BadRequest(format!("{}{text}", self.prefix))
            }
            other => other.into(),
        }
    }

    /// A 400 for a missing field.
    pub fn missing(&self, key: &str) -> ApiError {
        ApiError::BadRequest(format!("{} is required", self.name(key)))
    }

    /// A 400 for a field that is required in this case (`... is required for USAGE products`).
    pub fn missing_for(&self, key: &str, case: &str) -> ApiError {
        ApiError::BadRequest(format!("{} is required for {case}", self.name(key)))
    }
}

/// Parses a case-insensitive enum whose other known values Tollgate refuses as unsupported.
///
/// # Errors
/// 400 `unsupported` for a value in `unsupported`, 400 listing the choices for anything else.
pub(super) fn parse_supported<T: Copy>(
    fields: &Fields,
    key: &str,
    text: &str,
    supported: &[(&str, T)],
    unsupported: &[&str],
) -> ApiResult<T> {
    if unsupported.iter().any(|u| u.eq_ignore_ascii_case(text)) {
        let names: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
        return Err(fields.unsupported_value(
            key,
            text,
            &format!("is not supported (use {})", names.join(" or ")),
        ));
    }
    wire::parse_enum(&fields.name(key), text, supported)
}
