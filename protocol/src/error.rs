//! Why bytes could not be turned into a Celery message, or a value into bytes.

use thiserror::Error;

/// A message that cannot be decoded. Every variant names what was wrong, so that the worker can
/// log it and set the message aside; none of them is ever retried.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The Kombu envelope is not a JSON object of the expected shape.
    #[error("not a Kombu envelope: {0}")]
    Envelope(String),
    /// A field that must be present is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field is present with a value of the wrong type or form.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field's name as it appears on the wire.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The body claims base64 but is not.
    #[error("body is not valid base64: {0}")]
    Base64(String),
    /// `properties.body_encoding` names an encoding Kombu does not produce.
    #[error("unsupported body encoding `{0}`")]
    BodyEncoding(String),
    /// A pickle body. Pickle is never deserialized: it runs code chosen by the sender.
    #[error("content type `{0}` (pickle) is refused: pickle is never deserialized")]
    Pickle(String),
    /// A content type other than JSON or msgpack.
    #[error("unsupported content type `{0}` (accepted: application/json, application/x-msgpack)")]
    ContentType(String),
    /// A `compression` header this worker cannot undo.
    #[error("unsupported compression `{0}`")]
    Compression(String),
    /// The compressed body is corrupt or larger than the decompression limit.
    #[error("body could not be decompressed ({scheme}): {reason}")]
    Decompress {
        /// The compression scheme that failed.
        scheme: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The (decompressed) body does not parse as its content type.
    #[error("body is not valid {content_type}: {reason}")]
    Body {
        /// The content type that was tried.
        content_type: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The body parsed but is neither `[args, kwargs, embed]` (v2) nor a v1 dict.
    #[error("body has an unexpected shape: {0}")]
    BodyShape(String),
}

/// A value that cannot be encoded for the wire.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer refused the value.
    #[error("could not serialize as {content_type}: {reason}")]
    Serialize {
        /// The content type that was tried.
        content_type: &'static str,
        /// The serializer's complaint.
        reason: String,
    },
    /// Compressing the body failed.
    #[error("could not compress the body: {0}")]
    Compress(#[from] std::io::Error),
}
