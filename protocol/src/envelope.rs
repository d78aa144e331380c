//! Kombu's Redis envelope: the JSON object that is one list element.
//!
//! `{"body": <base64>, "content-encoding", "content-type", "headers": {...}, "properties":
//! {..., "delivery_info": {...}, "priority", "body_encoding": "base64", "delivery_tag": <uuid>}}`.
//! Fields we do not know are kept, so that a message we hand back is the message we took.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::error::DecodeError;
use crate::kombu;

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as the standard, padded base64 Kombu writes.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One Kombu message as stored on Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The body exactly as in the envelope: base64 text when `body_encoding` is `base64`.
    pub body: String,
    /// `content-type`, e.g. `application/json`.
    pub content_type: String,
    /// `content-encoding`, e.g. `utf-8`.
    pub content_encoding: String,
    /// Message headers (task headers for Celery protocol v2).
    pub headers: Map<String, Value>,
    /// Message properties, including Kombu's `delivery_info` and `delivery_tag`.
    pub properties: Map<String, Value>,
    /// Top-level fields we do not interpret, kept for re-encoding.
    pub extra: Map<String, Value>,
}

fn take_string(
    obj: &mut Map<String, Value>,
    key: &'static str,
    required: bool,
) -> Result<String, DecodeError> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None | Some(Value::Null) => Err(DecodeError::MissingField(key)),
        Some(other) => Err(DecodeError::InvalidField {
            field: key,
            reason: format!("expected a string, found {}", kind(&other)),
        }),
    }
}

fn take_object(
    obj: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Map<String, Value>, DecodeError> {
    match obj.remove(key) {
        Some(Value::Object(m)) => Ok(m),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(other) => Err(DecodeError::InvalidField {
            field: key,
            reason: format!("expected an object, found {}", kind(&other)),
        }),
    }
}

/// A short name for a JSON value's type, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Envelope {
    /// Parses one list element.
    pub fn from_json(raw: &str) -> Result<Self, DecodeError> {
        let value: Value =
            serde_json::from_str(raw).map_err(|e| DecodeError::Envelope(e.to_string()))?;
        Self::from_value(value)
    }

    /// Builds an envelope from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, DecodeError> {
        let Value::Object(mut obj) = value else {
            return Err(DecodeError::Envelope(format!(
                "expected an object, found {}",
                kind(&value)
            )));
        };
        let body = take_string(&mut obj, "body", true)?;
        let content_type = take_string(&mut obj, "content-type", false)?;
        let content_encoding = take_string(&mut obj, "content-encoding", false)?;
        let headers = take_object(&mut obj, "headers")?;
        let properties = take_object(&mut obj, "properties")?;
        Ok(Self {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
            extra: obj,
        })
    }

    /// Serializes in Kombu's field order.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("body".into(), Value::String(self.body.clone()));
        obj.insert(
            "content-encoding".into(),
            Value::String(self.content_encoding.clone()),
        );
        obj.insert(
            "content-type".into(),
            Value::String(self.content_type.clone()),
        );
        obj.insert("headers".into(), Value::Object(self.headers.clone()));
        obj.insert("properties".into(), Value::Object(self.properties.clone()));
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }

    /// The list element's JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// The body bytes, base64-decoded when `body_encoding` says so.
    pub fn body_bytes(&self) -> Result<Vec<u8>, DecodeError> {
        match self.properties.get("body_encoding") {
            Some(Value::String(enc)) if enc == "base64" => {
                let cleaned: Vec<u8> = self
                    .body
                    .bytes()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                BASE64
                    .decode(cleaned)
                    .map_err(|e| DecodeError::Base64(e.to_string()))
            }
            None | Some(Value::Null) => Ok(self.body.as_bytes().to_vec()),
            Some(Value::String(enc)) if enc.is_empty() => Ok(self.body.as_bytes().to_vec()),
            Some(other) => Err(DecodeError::BodyEncoding(match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })),
        }
    }

    /// Kombu's delivery tag (a UUID chosen by the publisher), if any.
    pub fn delivery_tag(&self) -> Option<&str> {
        self.properties.get("delivery_tag").and_then(Value::as_str)
    }

    /// The message priority, clamped to `0..=9` as Kombu does; 0 when absent or unreadable.
    pub fn priority(&self) -> u8 {
        let p = match self.properties.get("priority") {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        kombu::clamp_priority(p.unwrap_or(0))
    }

    /// `properties.delivery_info.exchange` (empty when absent).
    pub fn exchange(&self) -> &str {
        self.delivery_info_str("exchange")
    }

    /// `properties.delivery_info.routing_key` (empty when absent).
    pub fn routing_key(&self) -> &str {
        self.delivery_info_str("routing_key")
    }

    fn delivery_info_str(&self, key: &str) -> &str {
        self.properties
            .get("delivery_info")
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Whether Kombu flagged the message as restored after a lost ack.
    pub fn redelivered(&self) -> bool {
        let flag = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
        flag(self.headers.get("redelivered"))
            || flag(
                self.properties
                    .get("delivery_info")
                    .and_then(|d| d.get("redelivered")),
            )
    }

    /// Sets the flags Kombu sets when it puts an unacked message back on its queue.
    pub fn mark_redelivered(&mut self) {
        self.headers.insert("redelivered".into(), Value::Bool(true));
        let info = self
            .properties
            .entry("delivery_info")
            .or_insert_with(|| Value::Object(Map::new()));
        if !info.is_object() {
            *info = Value::Object(Map::new());
        }
        if let Value::Object(info) = info {
            info.insert("redelivered".into(), Value::Bool(true));
        }
    }
}

/// The value Kombu stores in the `unacked` hash: `[envelope, exchange, routing_key]`, built
/// from the exact list element so that what is restored is byte-for-byte what was taken.
pub fn unacked_entry(raw_envelope: &str, exchange: &str, routing_key: &str) -> String {
    format!(
        "[{raw_envelope}, {}, {}]",
        Value::String(exchange.to_owned()),
        Value::String(routing_key.to_owned())
    )
}

/// Splits an `unacked` hash value into `(envelope, exchange, routing_key)`.
pub fn parse_unacked_entry(entry: &str) -> Result<(Envelope, String, String), DecodeError> {
    let (env, exchange, routing_key): (Value, Value, Value) =
        serde_json::from_str(entry).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let text = |v: Value| match v {
        Value::String(s) => s,
        _ => String::new(),
    };
    Ok((
        Envelope::from_value(env)?,
        text(exchange),
        text(routing_key),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add"}, "properties": {"correlation_id": "x", "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "5536af4d"}}"#;

    #[test]
    fn parses_and_re_encodes_in_kombu_order() {
        let env = Envelope::from_json(RAW).unwrap();
        assert_eq!(env.delivery_tag(), Some("5536af4d"));
        assert_eq!(env.routing_key(), "celery");
        assert_eq!(
            env.body_bytes().unwrap(),
            br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
        let again: Value = serde_json::from_str(&env.to_json()).unwrap();
        let orig: Value = serde_json::from_str(RAW).unwrap();
        assert_eq!(again, orig);
        let keys: Vec<_> = again.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "body",
                "content-encoding",
                "content-type",
                "headers",
                "properties"
            ]
        );
    }

    #[test]
    fn redelivered_flags_go_in_headers_and_delivery_info() {
        let mut env = Envelope::from_json(RAW).unwrap();
        assert!(!env.redelivered());
        env.mark_redelivered();
        assert!(env.redelivered());
        assert_eq!(env.headers["redelivered"], Value::Bool(true));
        assert_eq!(
            env.properties["delivery_info"]["redelivered"],
            Value::Bool(true)
        );
    }

    #[test]
    fn unacked_entry_wraps_the_raw_text() {
        let entry = unacked_entry(RAW, "", "celery");
        let (env, ex, rk) = parse_unacked_entry(&entry).unwrap();
        assert_eq!(env, Envelope::from_json(RAW).unwrap());
        assert_eq!((ex.as_str(), rk.as_str()), ("", "celery"));
    }

    #[test]
    fn bad_envelopes_say_why() {
        assert!(matches!(
            Envelope::from_json("not json"),
            Err(DecodeError::Envelope(_))
        ));
        assert!(matches!(
            Envelope::from_json("[1]"),
            Err(DecodeError::Envelope(_))
        ));
        assert_eq!(
            Envelope::from_json("{}"),
            Err(DecodeError::MissingField("body"))
        );
        let bad64 = r#"{"body": "@@@", "properties": {"body_encoding": "base64"}}"#;
        assert!(matches!(
            Envelope::from_json(bad64).unwrap().body_bytes(),
            Err(DecodeError::Base64(_))
        ));
    }
}
