//! Reading a JSON request object field by field, with 400s that name the full path of the bad
//! field (`add_commits[0].access_schedule.schedule_items[1].amount`). Unknown fields are ignored
//! (newer SDKs may send more).

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::wire;
use crate::domain::{Id, Money, Timestamp};

pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// The top-level request object.
    ///
    /// # Errors
    /// 400 when the body is not an object.
    pub fn root(value: &'a Value) -> ApiResult<Obj<'a>> {
        Obj::at(value, String::new())
    }

    fn at(value: &'a Value, path: String) -> ApiResult<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            _ => Err(ApiError::BadRequest(format!(
                "{}: must be an object",
                if path.is_empty() { "body" } else { &path }
            ))),
        }
    }

    pub fn path(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        }
    }

    /// The raw value, `None` when absent or null.
    pub fn value(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub fn has(&self, field: &str) -> bool {
        self.value(field).is_some()
    }

    /// Whether the field is present at all (even as null), for "null clears" updates.
    pub fn present(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// # Errors
    /// 400 when present but not a string.
    pub fn str(&self, field: &str) -> ApiResult<Option<&'a str>> {
        match self.value(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must be a string",
                self.path(field)
            ))),
        }
    }

    /// # Errors
    /// 400 when missing, empty or not a string.
    pub fn req_str(&self, field: &str) -> ApiResult<&'a str> {
        match self.str(field)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must not be empty",
                self.path(field)
            ))),
            None => Err(ApiError::BadRequest(format!(
                "{} is required",
                self.path(field)
            ))),
        }
    }

    /// # Errors
    /// 400 when present but not a boolean.
    pub fn bool(&self, field: &str) -> ApiResult<Option<bool>> {
        match self.value(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must be true or false",
                self.path(field)
            ))),
        }
    }

    /// # Errors
    /// 400 when missing or not a boolean.
    pub fn req_bool(&self, field: &str) -> ApiResult<bool> {
        self.bool(field)?
            .ok_or_else(|| ApiError::BadRequest(format!("{} is required", self.path(field))))
    }

    /// # Errors
    /// 400 when present but not an exact number.
    pub fn money(&self, field: &str) -> ApiResult<Option<Money>> {
        self.value(field)
            .map(|v| wire::parse_money(&self.path(field), v))
            .transpose()
    }

    /// # Errors
    /// 400 when missing or not an exact number.
    pub fn req_money(&self, field: &str) -> ApiResult<Money> {
        self.money(field)?
            .ok_or_else(|| ApiError::BadRequest(format!("{} is required", self.path(field))))
    }

    /// # Errors
    /// 400 when present but not an exact number.
    pub fn decimal(&self, field: &str) -> ApiResult<Option<rust_decimal::Decimal>> {
        self.value(field)
            .map(|v| wire::parse_decimal(&self.path(field), v))
            .transpose()
    }

    /// # Errors
    /// 400 when present but not a UUID.
    pub fn id(&self, field: &str) -> ApiResult<Option<Id>> {
        self.str(field)?
            .map(|s| wire::parse_id(&self.path(field), s))
            .transpose()
    }

    /// # Errors
    /// 400 when missing or not a UUID.
    pub fn req_id(&self, field: &str) -> ApiResult<Id> {
        wire::parse_id(&self.path(field), self.req_str(field)?)
    }

    /// # Errors
    /// 400 when present but not RFC 3339.
    pub fn time(&self, field: &str) -> ApiResult<Option<Timestamp>> {
        self.str(field)?
            .map(|s| wire::parse_time(&self.path(field), s))
            .transpose()
    }

    /// # Errors
    /// 400 when missing or not RFC 3339.
    pub fn req_time(&self, field: &str) -> ApiResult<Timestamp> {
        wire::parse_time(&self.path(field), self.req_str(field)?)
    }

    /// # Errors
    /// 400 when present but not an object.
    pub fn obj(&self, field: &str) -> ApiResult<Option<Obj<'a>>> {
        self.value(field)
            .map(|v| Obj::at(v, self.path(field)))
            .transpose()
    }

    /// # Errors
    /// 400 when missing or not an object.
    pub fn req_obj(&self, field: &str) -> ApiResult<Obj<'a>> {
        self.obj(field)?
            .ok_or_else(|| ApiError::BadRequest(format!("{} is required", self.path(field))))
    }

    /// The objects of an array field (empty when absent).
    ///
    /// # Errors
    /// 400 when not an array of objects.
    pub fn objs(&self, field: &str) -> ApiResult<Vec<Obj<'a>>> {
        match self.value(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Obj::at(v, format!("{}[{i}]", self.path(field))))
                .collect(),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must be an array",
                self.path(field)
            ))),
        }
    }

    /// The strings of an array field (empty when absent).
    ///
    /// # Errors
    /// 400 when not an array of strings.
    pub fn strs(&self, field: &str) -> ApiResult<Vec<String>> {
        match self.value(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(ApiError::BadRequest(format!(
                        "{}: must be an array of strings",
                        self.path(field)
                    ))),
                })
                .collect(),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must be an array",
                self.path(field)
            ))),
        }
    }

    /// The ids of an array field.
    ///
    /// # Errors
    /// 400 when not an array of UUIDs.
    pub fn ids(&self, field: &str) -> ApiResult<Vec<Id>> {
        self.strs(field)?
            .iter()
            .map(|s| wire::parse_id(&self.path(field), s))
            .collect()
    }

    /// A string-to-string object (custom fields, metadata).
    ///
    /// # Errors
    /// 400 when not an object of strings.
    pub fn string_map(&self, field: &str) -> ApiResult<Vec<(String, String)>> {
        match self.value(field) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(ApiError::BadRequest(format!(
                        "{}.{k}: must be a string",
                        self.path(field)
                    ))),
                })
                .collect(),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: must be an object",
                self.path(field)
            ))),
        }
    }

    /// Refuses a field Tollgate does not implement, when the request sets it.
    ///
    /// # Errors
    /// 400 naming the field.
    pub fn unsupported(&self, field: &str) -> ApiResult<()> {
        match self.value(field) {
            None => Ok(()),
            Some(Value::Array(a)) if a.is_empty() => Ok(()),
            Some(Value::Object(o)) if o.is_empty() => Ok(()),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{}: is not supported by Tollgate",
                self.path(field)
            ))),
        }
    }
}
