//! Body serializers: JSON and msgpack are decoded; pickle and everything else are refused.
//!
//! Python workers accept only JSON unless told otherwise; we accept msgpack too because it is
//! as safe to decode. Decoded bodies become `serde_json::Value`, so that arguments stay raw
//! until a handler says which types it wants.

use serde::Deserialize as _;
use serde::ser::{Error as _, Serialize, Serializer};
use serde_json::Value;

use crate::error::{DecodeError, EncodeError};

/// The serializers this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `application/json`, encoding `utf-8`: Celery's default.
    Json,
    /// `application/x-msgpack`, encoding `binary`.
    Msgpack,
}

/// Deepest nesting a body may have (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// MIME type Kombu uses for pickle bodies.
pub const PICKLE_MIME: &str = "application/x-python-serialize";

impl ContentType {
    /// Recognises a `content-type` value; pickle and unknown types are refused.
    pub fn parse(mime: &str) -> Result<Self, DecodeError> {
        let lower = mime.trim().to_ascii_lowercase();
        match lower.as_str() {
            "application/json" | "json" => Ok(Self::Json),
            "application/x-msgpack" | "application/msgpack" | "msgpack" => Ok(Self::Msgpack),
            _ if lower == PICKLE_MIME || lower.contains("pickle") => {
                Err(DecodeError::Pickle(mime.to_owned()))
            }
            _ => Err(DecodeError::ContentType(mime.to_owned())),
        }
    }

    /// The `content-type` value written on the wire.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Msgpack => "application/x-msgpack",
        }
    }

    /// The `content-encoding` value Kombu pairs with this type.
    pub fn encoding(self) -> &'static str {
        match self {
            Self::Json => "utf-8",
            Self::Msgpack => "binary",
        }
    }

    /// Decodes a whole (already decompressed) body.
    pub fn decode(self, bytes: &[u8]) -> Result<Value, DecodeError> {
        match self {
            Self::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Body {
                content_type: self.mime(),
                reason: e.to_string(),
            }),
            Self::Msgpack => {
                let mut de = rmp_serde::Deserializer::new(bytes);
                // serde_json stops at 128 levels; msgpack gets the same limit (its default, 1024,
                // can overflow a thread's stack while building a `Value`).
                de.set_max_depth(MAX_DEPTH);
                let value = Value::deserialize(&mut de).map_err(|e| DecodeError::Body {
                    content_type: self.mime(),
                    reason: e.to_string(),
                })?;
                if !de.get_ref().is_empty() {
                    return Err(DecodeError::Body {
                        content_type: self.mime(),
                        reason: "trailing bytes after the value".into(),
                    });
                }
                Ok(value)
            }
        }
    }

    /// Encodes a value as a body of this type.
    pub fn encode(self, value: &Value) -> Result<Vec<u8>, EncodeError> {
        match self {
            Self::Json => serde_json::to_vec(value).map_err(|e| EncodeError::Serialize {
                content_type: self.mime(),
                reason: e.to_string(),
            }),
            Self::Msgpack => {
                rmp_serde::to_vec_named(&MsgpackValue(value)).map_err(|e| EncodeError::Serialize {
                    content_type: self.mime(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// A `Value` as msgpack writes it: numbers as msgpack integers and floats.
///
/// With serde_json's `arbitrary_precision` (on in this workspace) a `Number` serializes as a
/// private one-field struct holding its text, which serde_json's own serializers understand and
/// msgpack would write as a map. An integer msgpack cannot hold fails as Python's msgpack does.
struct MsgpackValue<'a>(&'a Value);

impl Serialize for MsgpackValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    s.serialize_u64(u)
                } else if let Some(i) = n.as_i64() {
                    s.serialize_i64(i)
                } else if n.to_string().contains(['.', 'e', 'E']) {
                    match n.as_f64() {
                        Some(f) => s.serialize_f64(f),
                        None => Err(S::Error::custom(format!("float out of range: {n}"))),
                    }
                } else {
                    Err(S::Error::custom("Integer value out of range"))
                }
            }
            Value::Array(items) => s.collect_seq(items.iter().map(MsgpackValue)),
            Value::Object(m) => s.collect_map(m.iter().map(|(k, v)| (k, MsgpackValue(v)))),
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pickle_and_unknown_types_are_refused_with_their_reason() {
        assert!(matches!(
            ContentType::parse("application/x-python-serialize"),
            Err(DecodeError::Pickle(_))
        ));
        assert!(matches!(
            ContentType::parse("application/x-yaml"),
            Err(DecodeError::ContentType(_))
        ));
        let msg = ContentType::parse(PICKLE_MIME).unwrap_err().to_string();
        assert!(msg.contains("never deserialized"), "{msg}");
    }

    #[test]
    fn msgpack_round_trips_a_task_body() {
        let body = json!([[1, "x"], {"k": [1, 2]}, {"callbacks": null}]);
        let bytes = ContentType::Msgpack.encode(&body).unwrap();
        assert_eq!(ContentType::Msgpack.decode(&bytes).unwrap(), body);
    }

    #[test]
    fn msgpack_writes_numbers_as_msgpack_numbers() {
        // [5, -3, 2**64 - 1, 2.5] as Python's msgpack.packb writes it.
        let body: Value = serde_json::from_str("[5, -3, 18446744073709551615, 2.5]").unwrap();
        let bytes = ContentType::Msgpack.encode(&body).unwrap();
        let mut want = vec![0x94, 0x05, 0xfd, 0xcf];
        want.extend_from_slice(&u64::MAX.to_be_bytes());
        want.push(0xcb);
        want.extend_from_slice(&2.5f64.to_be_bytes());
        assert_eq!(bytes, want);
        // msgpack.packb(2**64) raises OverflowError("Integer value out of range").
        let too_big: Value = serde_json::from_str("[18446744073709551616]").unwrap();
        let e = ContentType::Msgpack
            .encode(&too_big)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Integer value out of range"), "{e}");
    }
}
