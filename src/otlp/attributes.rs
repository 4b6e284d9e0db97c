//! Small helpers for reading OTLP attribute lists (`KeyValue` / `AnyValue`).

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};

/// The value of the first attribute named `key`, if any.
pub fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The attribute as a string slice when it is a string value.
pub fn get_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attrs, key) {
        Some(Value::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The attribute as a number when it is an int, a double or a numeric string.
pub fn get_f64(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match get(attrs, key)? {
        Value::IntValue(i) => Some(*i as f64),
        Value::DoubleValue(d) => Some(*d),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The attribute as a bool when it is a bool or the string "true"/"false".
pub fn get_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match get(attrs, key)? {
        Value::BoolValue(b) => Some(*b),
        Value::StringValue(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::StringValue(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Renders a primitive value as text (arrays as comma-joined items); `None` for empty values.
pub fn value_to_string(v: &Value) -> Option<String> {
    Some(match v {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::ArrayValue(a) => a
            .values
            .iter()
            .filter_map(|v| v.value.as_ref().and_then(value_to_string))
            .collect::<Vec<_>>()
            .join(","),
        Value::BytesValue(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Value::KvlistValue(_) | Value::StringValueStrindex(_) => return None,
    })
}

/// Builds a string attribute.
pub fn string_kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Builds a double attribute.
pub fn double_kv(key: &str, value: f64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::DoubleValue(value)),
        }),
        ..Default::default()
    }
}
