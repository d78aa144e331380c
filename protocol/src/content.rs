//! Body serializers: JSON and msgpack are decoded; pickle and everything else are refused.
//!
//! Python workers accept only JSON unless told otherwise; we accept msgpack too because it is
//! as safe to decode. Decoded bodies become `serde_json::Value`, so that arguments stay raw
//! until a handler says which types it wants.

use serde::Deserialize as _;
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
            Self::Msgpack => rmp_serde::to_vec_named(value).map_err(|e| EncodeError::Serialize {
                content_type: self.mime(),
                reason: e.to_string(),
            }),
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
}
