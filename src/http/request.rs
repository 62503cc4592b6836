//! The one way requests are read: a JSON body deserialized into a typed request struct (a DTO
//! with serde's derive, also the source of the OpenAPI schema), with every 400 naming the path
//! of the bad field (`add_commits[0].access_schedule.schedule_items[1].amount`), taken from
//! `serde_path_to_error`.
//!
//! The field types here carry the wire rules: [`Uuid`], [`Time`] (RFC 3339), [`Text`] (not
//! blank), [`Amount`] and [`Exact`] (exact decimals from the JSON number's own text), choices
//! (case-insensitive enums, [`Choice`]), and [`Refused`] for a field Tollgate does not implement.
//! `null` counts as absent, as Metronome treats it; unknown fields are ignored (newer SDKs send
//! more). With `arbitrary_precision`, serde_json hands a number to a visitor as a private
//! one-entry map, so no request type uses `#[serde(flatten)]` or untagged enums.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::error::{ApiError, ApiResult};
use crate::domain::money::parse_exact_decimal;
use crate::domain::{Id, Money, Rejection, Timestamp};

/// Reads a request body into `T`; an empty body counts as `{}` (the SDK sends none for
/// optional params).
///
/// # Errors
/// 400 naming the field (with its path) that is missing, of the wrong type or refused; 400
/// `invalid request: ...` for text that is not JSON.
pub fn read<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let text = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => &b"{}"[..],
        Some(b'{') => body,
        // Nested structs are read from objects only too (`super::strict`).
        Some(_) => {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
    };
    let mut json = serde_json::Deserializer::from_slice(text);
    let value =
        serde_path_to_error::deserialize(super::strict::Strict(&mut json)).map_err(field_error)?;
    json.end()
        .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
    Ok(value)
}

/// The prefix of a refusal raised by [`Refused`] or an unsupported [`Choice`] value, so that
/// [`field_error`] answers it as [`Rejection::Unsupported`].
const UNSUPPORTED: &str = "\u{1}unsupported\u{1}";
/// The message of a required field sent as `null` whose type reads `null` itself.
const REQUIRED: &str = "\u{1}required\u{1}";

fn field_error<E: fmt::Display + IsSyntax>(error: serde_path_to_error::Error<E>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() {
        return ApiError::BadRequest(format!("invalid request: {inner}"));
    }
    let text = inner.to_string();
    // serde_json appends the position; the path says more.
    let message = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => text.as_str(),
    };
    let root = path == ".";
    let at = |field: &str| {
        if root {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if message == REQUIRED {
        return ApiError::BadRequest(format!("{path} is required"));
    }
    if let Some(rest) = message.strip_prefix(UNSUPPORTED) {
        return Rejection::Unsupported(format!("{path} {rest}")).into();
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        return ApiError::BadRequest(format!("{} is required", at(field)));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        if found == "null" {
            return ApiError::BadRequest(format!("{path} is required"));
        }
        let object = expected.starts_with("struct ") || expected == "a map";
        if root && object {
            return ApiError::BadRequest("the request body must be a JSON object".into());
        }
        let must = match expected {
            "a string" | "a string or null" => "must be a string",
            "a boolean" => "must be true or false",
            "a sequence" => "must be a list",
            _ if object => "must be an object",
            // serde names Rust types here (`usize`, `u16`): say what a client can act on.
            _ if expected.starts_with('u') || expected.starts_with('i') => "must be a whole number",
            _ => "has the wrong type",
        };
        return ApiError::BadRequest(format!("{path}: {must}"));
    }
    // serde's own wording for a value out of range or a list of the wrong length names Rust
    // types; everything else here is one of this module's messages.
    let message = if message.starts_with("invalid value: ") {
        "is out of range"
    } else if message.starts_with("invalid length ") {
        "has the wrong number of items"
    } else {
        message
    };
    if root {
        return ApiError::BadRequest(format!("invalid request: {message}"));
    }
    ApiError::BadRequest(format!("{path}: {message}"))
}

/// A client's text inside a message: quoted, and cut after 64 characters.
fn shown(text: &str) -> String {
    if text.chars().count() <= 64 {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(64).collect();
        format!("{cut:?}...")
    }
}

/// Whether an error is about the text not being JSON at all (not about a field).
pub trait IsSyntax {
    fn is_syntax(&self) -> bool;
}

impl IsSyntax for serde_json::Error {
    fn is_syntax(&self) -> bool {
        self.is_syntax() || self.is_eof() || self.is_io()
    }
}

/// `Some(None)` when the field is present as `null`, for "null clears" updates; use with
/// `#[serde(default, deserialize_with = "present")]`.
///
/// # Errors
/// As `T`'s own deserializer.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn string_schema(format: SchemaFormat, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(format))
        .description(Some(description))
        .into()
}

/// A UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uuid(pub Id);

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Id::parse(&text)
            .map(Uuid)
            .ok_or_else(|| D::Error::custom(format!("{} is not a UUID", shown(&text))))
    }
}

impl PartialSchema for Uuid {
    fn schema() -> RefOr<Schema> {
        string_schema(SchemaFormat::Custom("uuid".into()), "A UUID.")
    }
}

impl ToSchema for Uuid {}

/// An RFC 3339 timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub Timestamp);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map(Time).ok_or_else(|| {
            D::Error::custom(format!(
                "{} is not an RFC 3339 timestamp like 2025-01-01T00:00:00Z",
                shown(&text)
            ))
        })
    }
}

impl PartialSchema for Time {
    fn schema() -> RefOr<Schema> {
        string_schema(
            SchemaFormat::KnownFormat(KnownFormat::DateTime),
            "An RFC 3339 timestamp (2025-01-01T00:00:00Z).",
        )
    }
}

impl ToSchema for Time {}

/// A string that is not blank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().is_empty() {
            return Err(D::Error::custom("must not be empty"));
        }
        Ok(Text(text))
    }
}

impl PartialSchema for Text {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some("A string that is not blank."))
            .into()
    }
}

impl ToSchema for Text {}

/// The text of a JSON number (or of a numeric string), exactly as sent.
fn number_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s),
        Value::Null => Err(D::Error::custom(REQUIRED)),
        _ => Err(D::Error::custom("must be a number")),
    }
}

fn exact_number_schema(description: &str) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")),
        )
        .description(Some(description))
        .into()
}

/// An amount of money in the credit type's unit (cents for USD), read exactly from the JSON
/// number's text: at most 28 significant digits, never through a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(pub Money);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_text(deserializer)?;
        Money::parse(&text).map(Amount).map_err(|_| {
            D::Error::custom(format!(
                "{} is not an exact number (at most 28 significant digits)",
                shown(&text)
            ))
        })
    }
}

impl PartialSchema for Amount {
    fn schema() -> RefOr<Schema> {
        exact_number_schema(
            "An exact amount in the credit type's unit (cents for USD), at most 28 significant digits; a numeric string is accepted too.",
        )
    }
}

impl ToSchema for Amount {}

/// A dimensionless exact decimal (quantity, priority, fraction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exact(pub rust_decimal::Decimal);

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_text(deserializer)?;
        parse_exact_decimal(&text)
            .map(Exact)
            .map_err(|_| D::Error::custom(format!("{} is not an exact number", shown(&text))))
    }
}

impl PartialSchema for Exact {
    fn schema() -> RefOr<Schema> {
        exact_number_schema(
            "An exact decimal, at most 28 significant digits; a numeric string is accepted too.",
        )
    }
}

impl ToSchema for Exact {}

/// The values of a case-insensitive enum field (Metronome accepts `PREPAID` and `prepaid`), and
/// the values Metronome knows that Tollgate refuses as unsupported.
pub trait Choices: Copy + 'static {
    /// The schema's name in the OpenAPI document.
    const NAME: &'static str;
    const VALUES: &'static [(&'static str, Self)];
    const UNSUPPORTED: &'static [&'static str] = &[];
}

/// A value of a [`Choices`] enum. Request types name it through a type alias (`type GateTypeChoice
/// = Choice<GateType>`), which the OpenAPI derive reads as one named schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice<T>(pub T);

impl<'de, T: Choices> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Some((_, value)) = T::VALUES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&text))
        {
            return Ok(Choice(*value));
        }
        let names: Vec<&str> = T::VALUES.iter().map(|(n, _)| *n).collect();
        if T::UNSUPPORTED.iter().any(|u| u.eq_ignore_ascii_case(&text)) {
            return Err(D::Error::custom(format!(
                "{UNSUPPORTED}{} is not supported (use {})",
                shown(&text),
                names.join(" or ")
            )));
        }
        Err(D::Error::custom(format!(
            "{} is not one of {}",
            shown(&text),
            names.join(", ")
        )))
    }
}

impl<T: Choices> PartialSchema for Choice<T> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(T::VALUES.iter().map(|(name, _)| *name)))
            .description(Some("Case-insensitive."))
            .into()
    }
}

impl<T: Choices> ToSchema for Choice<T> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(T::NAME)
    }
}

/// Why a [`Refused`] field is refused, for its message.
pub trait Why {
    const WHY: &'static str;
}

/// The plain reason.
pub struct NotSupported;

impl Why for NotSupported {
    const WHY: &'static str = "is not supported by Tollgate";
}

/// A field Tollgate does not implement: absent, `null`, `[]` and `{}` pass; anything else is
/// refused (400 `unsupported: ...`), since ignoring it would bill differently from what the
/// caller asked for.
pub struct Refused<W: Why = NotSupported>(PhantomData<W>);

impl<W: Why> Default for Refused<W> {
    fn default() -> Self {
        Refused(PhantomData)
    }
}

impl<W: Why> fmt::Debug for Refused<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Refused")
    }
}

impl<'de, W: Why> Deserialize<'de> for Refused<W> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let used = match Value::deserialize(deserializer)? {
            Value::Null => false,
            Value::Array(items) => !items.is_empty(),
            Value::Object(map) => !map.is_empty(),
            _ => true,
        };
        if used {
            return Err(D::Error::custom(format!("{UNSUPPORTED}{}", W::WHY)));
        }
        Ok(Refused::default())
    }
}

impl<W: Why> PartialSchema for Refused<W> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some(
                "Not supported by Tollgate: refused (400) unless absent, null or empty.",
            ))
            .into()
    }
}

impl<W: Why> ToSchema for Refused<W> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Refused")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Item {
        amount: Amount,
        #[serde(default)]
        note: Option<Text>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Prepaid,
        Postpaid,
    }

    impl Choices for Kind {
        const NAME: &'static str = "Kind";
        const VALUES: &'static [(&'static str, Self)] =
            &[("PREPAID", Kind::Prepaid), ("POSTPAID", Kind::Postpaid)];
        const UNSUPPORTED: &'static [&'static str] = &["RECURRING"];
    }

    #[derive(Debug, Deserialize)]
    struct Body {
        id: Uuid,
        kind: Choice<Kind>,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        at: Option<Time>,
        #[serde(default)]
        specifiers: Refused,
        #[serde(default, deserialize_with = "present")]
        name: Option<Option<String>>,
    }

    const ID: &str = "11111111-2222-4333-8444-555555555555";

    fn message(body: Value) -> String {
        match read::<Body>(body.to_string().as_bytes()) {
            Ok(body) => panic!("accepted {body:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn amounts_are_read_exactly_through_the_path_tracker() {
        let body = r#"{"id": "11111111-2222-4333-8444-555555555555", "kind": "prepaid",
            "items": [{"amount": 0.1000000000000000000000000001}, {"amount": "12.50"}]}"#;
        let body: Body = read(body.as_bytes()).unwrap();
        assert_eq!(body.kind, Choice(Kind::Prepaid));
        assert_eq!(
            body.items[0].amount.0.to_string(),
            "0.1000000000000000000000000001"
        );
        assert_eq!(body.items[1].amount.0, Money::parse("12.5").unwrap());
        assert_eq!(body.items[0].note, None);
        assert_eq!(body.id.0.to_string(), ID);
        assert_eq!(body.at, None);
        let _ = body.specifiers;
        assert_eq!(body.name, None);
    }

    #[test]
    fn errors_name_the_path_of_the_field() {
        let base = |items: Value| serde_json::json!({"id": ID, "kind": "PREPAID", "items": items});
        let m = message(base(
            serde_json::json!([{"amount": 1}, {"amount": "1e400"}]),
        ));
        assert!(
            m.contains("items[1].amount: \"1e400\" is not an exact number"),
            "{m}"
        );
        // Client text is quoted and cut, and cannot pass for one of this module's markers.
        let m = message(base(serde_json::json!([{"amount": "9".repeat(500)}])));
        assert!(m.len() < 200, "{m}");
        let m = message(base(
            serde_json::json!([{"amount": "\u{1}unsupported\u{1}x"}]),
        ));
        assert!(!m.starts_with("unsupported"), "{m}");
        let m = message(base(serde_json::json!([{"amount": 1}, {}])));
        assert!(m.contains("items[1].amount is required"), "{m}");
        let m = message(base(serde_json::json!([{"amount": null}])));
        assert!(m.contains("items[0].amount is required"), "{m}");
        let m = message(base(serde_json::json!([{"amount": true}])));
        assert!(m.contains("items[0].amount: must be a number"), "{m}");
        let m = message(base(serde_json::json!([{"amount": 1, "note": "  "}])));
        assert!(m.contains("items[0].note: must not be empty"), "{m}");
        let m = message(base(serde_json::json!([{"amount": 1, "note": 5}])));
        assert!(m.contains("items[0].note: must be a string"), "{m}");
        let m = message(base(serde_json::json!({"amount": 1})));
        assert!(m.contains("items: must be a list"), "{m}");
        let m = message(base(serde_json::json!(["x"])));
        assert!(m.contains("items[0]: must be an object"), "{m}");
        // A struct given as the array of its fields (serde's derive would take it) is refused.
        let m = message(base(serde_json::json!([[5, "note"]])));
        assert!(m.contains("items[0]: must be an object"), "{m}");
    }

    #[test]
    fn top_level_fields_and_choices() {
        let m = message(serde_json::json!({"kind": "PREPAID"}));
        assert!(m.contains("id is required"), "{m}");
        let m = message(serde_json::json!({"id": "cust-1", "kind": "PREPAID"}));
        assert!(m.contains("id: \"cust-1\" is not a UUID"), "{m}");
        let m = message(serde_json::json!({"id": ID, "kind": "weekly"}));
        assert!(
            m.contains("kind: \"weekly\" is not one of PREPAID, POSTPAID"),
            "{m}"
        );
        let m = message(serde_json::json!({"id": ID, "kind": "recurring"}));
        assert!(
            m.starts_with("unsupported: kind \"recurring\" is not supported"),
            "{m}"
        );
        let m = message(serde_json::json!({"id": ID, "kind": "PREPAID", "at": "yesterday"}));
        assert!(
            m.contains("at: \"yesterday\" is not an RFC 3339 timestamp"),
            "{m}"
        );
        let m = message(serde_json::json!([1]));
        assert_eq!(m, "the request body must be a JSON object");
        let m = read::<Body>(b"{\"id\": ").unwrap_err().to_string();
        assert!(m.starts_with("invalid request: "), "{m}");
        let whole = serde_json::json!({"id": ID, "kind": "PREPAID"}).to_string();
        let m = read::<Body>(format!("{whole} trailing").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("invalid request: "), "{m}");
    }

    #[test]
    fn refused_fields_pass_only_when_unused_and_null_is_kept_apart_from_absent() {
        for unused in [Value::Null, serde_json::json!([]), serde_json::json!({})] {
            let body = serde_json::json!({"id": ID, "kind": "PREPAID", "specifiers": unused});
            assert!(read::<Body>(body.to_string().as_bytes()).is_ok());
        }
        let m = message(serde_json::json!({"id": ID, "kind": "PREPAID", "specifiers": [{}]}));
        assert_eq!(m, "unsupported: specifiers is not supported by Tollgate");
        let body = serde_json::json!({"id": ID, "kind": "PREPAID", "name": null});
        let body: Body = read(body.to_string().as_bytes()).unwrap();
        assert_eq!(body.name, Some(None));
    }
}
