//! Celery task messages: protocol v2 (headers + `[args, kwargs, embed]`) and v1 (all in a body
//! dict), decoded into one shape.
//!
//! Decoding happens before any task lookup: `args` and `kwargs` stay raw JSON values until a
//! handler says what types it wants, so an unknown task is a clean rejection rather than a
//! decode error. Encoding always writes protocol v2, Celery's default.

mod decode;
mod encode;
mod repr;

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::compression::Compression;
use crate::content::ContentType;
use crate::envelope::{Envelope, kind};
use crate::error::DecodeError;

pub use repr::{py_repr, py_tuple_repr};

/// Which Celery message protocol a message used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Everything in a body dict; headers empty (`task_protocol=1`).
    V1,
    /// Task fields in headers; body `[args, kwargs, embed]` (the default since Celery 4).
    V2,
}

/// Longest `argsrepr`/`kwargsrepr` Celery writes.
pub const REPR_MAX: usize = 1024;

/// Header keys of protocol v2, in the order Celery writes them.
const KNOWN_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// The task fields of a message (protocol v2 headers; v1 bodies are converted to these).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// `lang`, `"py"` from Python.
    pub lang: Option<String>,
    /// Registered task name.
    pub task: String,
    /// Task id (a UUID string).
    pub id: String,
    /// Display name used instead of `task` in logs and events.
    pub shadow: Option<String>,
    /// When to run, as sent (ISO-8601; naive means app time zone). Checked when decoded.
    pub eta: Option<String>,
    /// When the task stops being worth running, as sent. Checked when decoded.
    pub expires: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Position within the group.
    pub group_index: Option<i64>,
    /// How many times this task was retried before this message.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    pub timelimit: [Option<f64>; 2],
    /// First task of the workflow (equals `id` when there is no parent).
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Python `repr` of the args, for display only.
    pub argsrepr: Option<String>,
    /// Python `repr` of the kwargs, for display only.
    pub kwargsrepr: Option<String>,
    /// `gen<pid>@<host>` of the sender.
    pub origin: Option<String>,
    /// `true` when the sender wants no result stored; `None` when it did not say.
    pub ignore_result: Option<bool>,
    /// Nesting depth of `Task.replace`.
    pub replaced_task_nesting: i64,
    /// Stamping (Celery 5.3+), kept as sent.
    pub stamped_headers: Value,
    /// Stamping (Celery 5.3+), kept as sent.
    pub stamps: Value,
    /// Custom headers (`send_task(headers=...)` merges them flat), and Kombu's `redelivered`.
    pub extra: Map<String, Value>,
}

/// Message properties, with Kombu's Redis additions.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskProperties {
    /// Equals the task id.
    pub correlation_id: Option<String>,
    /// The client's oid.
    pub reply_to: Option<String>,
    /// 2 = persistent, 1 = transient.
    pub delivery_mode: Option<i64>,
    /// Clamped to `0..=9`.
    pub priority: u8,
    /// `delivery_info.exchange` (`""` for Celery's direct sends).
    pub exchange: String,
    /// `delivery_info.routing_key` (the queue name for direct sends).
    pub routing_key: String,
    /// Set when Kombu restored the message after a lost ack.
    pub redelivered: bool,
    /// Kombu's delivery tag on Redis.
    pub delivery_tag: Option<String>,
    /// Per-message TTL in milliseconds as a string (enforced by RabbitMQ only).
    pub expiration: Option<String>,
    /// Other properties, kept as sent.
    pub extra: Map<String, Value>,
}

/// The third element of a v2 body: what happens after the task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embed {
    /// Link signatures (run on success).
    pub callbacks: Value,
    /// Link-error signatures (run on failure).
    pub errbacks: Value,
    /// Remaining chain steps, reversed (the next one is last).
    pub chain: Value,
    /// Chord callback signature, on chord header tasks.
    pub chord: Value,
    /// Other keys, kept as sent.
    pub extra: Map<String, Value>,
}

/// A decoded task message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The protocol it arrived in.
    pub protocol: Protocol,
    /// Body serializer.
    pub content_type: ContentType,
    /// Body compression, if any.
    pub compression: Option<Compression>,
    /// Task fields.
    pub headers: TaskHeaders,
    /// Message properties.
    pub properties: TaskProperties,
    /// Positional arguments, raw.
    pub args: Vec<Value>,
    /// Keyword arguments, raw.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
}

impl TaskMessage {
    /// Decodes a Kombu Redis envelope.
    pub fn from_envelope(env: &Envelope) -> Result<Self, DecodeError> {
        let body = env.body_bytes()?;
        Self::decode(&env.headers, &env.properties, &env.content_type, &body)
    }

    /// Decodes a message from its parts (the body already base64-decoded), whatever the broker.
    pub fn decode(
        headers: &Map<String, Value>,
        properties: &Map<String, Value>,
        content_type: &str,
        body: &[u8],
    ) -> Result<Self, DecodeError> {
        let content = ContentType::parse(content_type)?;
        let compression = match headers.get("compression") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Compression::from_header(s)?),
            Some(other) => {
                return Err(decode::invalid(
                    "compression",
                    format!("expected a string, found {}", kind(other)),
                ));
            }
        };
        let bytes: Cow<'_, [u8]> = match compression {
            Some(c) => Cow::Owned(c.decompress(body)?),
            None => Cow::Borrowed(body),
        };
        let payload = content.decode(&bytes)?;
        let properties = TaskProperties::from_map(properties)?;
        match payload {
            Value::Array(parts) => {
                let (headers, args, kwargs, embed) = decode::decode_v2(headers, parts)?;
                Ok(Self {
                    protocol: Protocol::V2,
                    content_type: content,
                    compression,
                    headers,
                    properties,
                    args,
                    kwargs,
                    embed,
                })
            }
            // Celery's rule (worker/strategy.py): a dict body with `args` is protocol v1.
            Value::Object(body) if body.contains_key("args") => {
                let (headers, args, kwargs, embed) = decode::decode_v1(headers, body)?;
                Ok(Self {
                    protocol: Protocol::V1,
                    content_type: content,
                    compression,
                    headers,
                    properties,
                    args,
                    kwargs,
                    embed,
                })
            }
            other => Err(DecodeError::BodyShape(format!(
                "expected [args, kwargs, embed] or a v1 dict, found {}",
                kind(&other)
            ))),
        }
    }

    /// A fresh protocol-v2 message with Celery's `send_task` defaults, for `queue`.
    pub fn new(
        task: &str,
        id: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        queue: &str,
    ) -> Self {
        let headers = TaskHeaders {
            lang: Some("py".into()),
            task: task.into(),
            id: id.into(),
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: [None, None],
            root_id: Some(id.into()),
            parent_id: None,
            argsrepr: Some(repr::truncate(
                py_repr(&Value::Array(args.clone())),
                REPR_MAX,
            )),
            kwargsrepr: Some(repr::truncate(
                py_repr(&Value::Object(kwargs.clone())),
                REPR_MAX,
            )),
            origin: None,
            ignore_result: None,
            replaced_task_nesting: 0,
            stamped_headers: Value::Null,
            stamps: Value::Object(Map::new()),
            extra: Map::new(),
        };
        let properties = TaskProperties {
            correlation_id: Some(id.into()),
            reply_to: None,
            delivery_mode: Some(2),
            priority: 0,
            exchange: String::new(),
            routing_key: queue.into(),
            redelivered: false,
            delivery_tag: None,
            expiration: None,
            extra: Map::new(),
        };
        Self {
            protocol: Protocol::V2,
            content_type: ContentType::Json,
            compression: None,
            headers,
            properties,
            args,
            kwargs,
            embed: Embed::default(),
        }
    }

    /// The name to show in logs: `shadow` when set, otherwise the task name.
    pub fn display_name(&self) -> &str {
        self.headers.shadow.as_deref().unwrap_or(&self.headers.task)
    }
}

#[cfg(test)]
mod fixtures {
    use super::*;
    use serde_json::json;

    /// Protocol-v2 headers as Celery 5.7 writes them, plus one custom header.
    pub(super) fn v2_headers() -> Map<String, Value> {
        json!({"lang": "py", "task": "tasks.add", "id": "abc", "shadow": null, "eta": null,
               "expires": null, "group": null, "group_index": null, "retries": 0,
               "timelimit": [null, null], "root_id": "abc", "parent_id": null,
               "argsrepr": "[2, 3]", "kwargsrepr": "{}", "origin": "gen1@vm",
               "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null,
               "stamps": {}, "x-tenant": "acme"})
        .as_object()
        .cloned()
        .unwrap_or_default()
    }
}
