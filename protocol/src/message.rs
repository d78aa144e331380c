//! Celery task messages: protocol v2 (headers + `[args, kwargs, embed]`) and v1 (all in a body
//! dict), decoded into one shape.
//!
//! Decoding happens before any task lookup: `args` and `kwargs` stay raw JSON values until a
//! handler says what types it wants, so an unknown task is a clean rejection rather than a
//! decode error. Encoding always writes protocol v2, Celery's default.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::compression::Compression;
use crate::content::ContentType;
use crate::envelope::{self, Envelope, kind};
use crate::error::{DecodeError, EncodeError};
use crate::kombu;
use crate::time::Timestamp;

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

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn opt_string(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            key,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

fn req_string(map: &Map<String, Value>, key: &'static str) -> Result<String, DecodeError> {
    opt_string(map, key)?.ok_or(DecodeError::MissingField(key))
}

fn opt_int(map: &Map<String, Value>, key: &'static str) -> Result<Option<i64>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("expected an integer, found {n}"))),
        Some(other) => Err(invalid(
            key,
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

fn opt_bool(map: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(
            key,
            format!("expected a boolean, found {}", kind(other)),
        )),
    }
}

fn opt_time(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, DecodeError> {
    let raw = opt_string(map, key)?;
    if let Some(s) = &raw {
        Timestamp::parse(s).map_err(|e| invalid(key, e))?;
    }
    Ok(raw)
}

fn retries(map: &Map<String, Value>) -> Result<u32, DecodeError> {
    match opt_int(map, "retries")? {
        None => Ok(0),
        Some(n) => u32::try_from(n).map_err(|_| invalid("retries", format!("out of range: {n}"))),
    }
}

fn timelimit(map: &Map<String, Value>) -> Result<[Option<f64>; 2], DecodeError> {
    let limit = |v: &Value| match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(Some)
            .ok_or_else(|| invalid("timelimit", format!("not a usable number of seconds: {n}"))),
        other => Err(invalid(
            "timelimit",
            format!("expected a number, found {}", kind(other)),
        )),
    };
    match map.get("timelimit") {
        None | Some(Value::Null) => Ok([None, None]),
        Some(Value::Array(items)) if items.len() == 2 => Ok([limit(&items[0])?, limit(&items[1])?]),
        Some(other) => Err(invalid(
            "timelimit",
            format!("expected [hard, soft], found {other}"),
        )),
    }
}

impl TaskProperties {
    /// Reads the properties of a message.
    pub fn from_map(props: &Map<String, Value>) -> Result<Self, DecodeError> {
        let info = match props.get("delivery_info") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(invalid(
                    "delivery_info",
                    format!("expected an object, found {}", kind(other)),
                ));
            }
        };
        let priority = match props.get("priority") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => kombu::clamp_priority(
                n.as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .unwrap_or(0),
            ),
            Some(other) => {
                return Err(invalid(
                    "priority",
                    format!("expected an integer, found {}", kind(other)),
                ));
            }
        };
        let expiration = match props.get("expiration") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(invalid(
                    "expiration",
                    format!("expected a string, found {}", kind(other)),
                ));
            }
        };
        let known = [
            "correlation_id",
            "reply_to",
            "delivery_mode",
            "priority",
            "delivery_info",
            "body_encoding",
            "delivery_tag",
            "expiration",
        ];
        let extra = props
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            correlation_id: opt_string(props, "correlation_id")?,
            reply_to: opt_string(props, "reply_to")?,
            delivery_mode: opt_int(props, "delivery_mode")?,
            priority,
            exchange: opt_string(&info, "exchange")?.unwrap_or_default(),
            routing_key: opt_string(&info, "routing_key")?.unwrap_or_default(),
            redelivered: opt_bool(&info, "redelivered")?.unwrap_or(false),
            delivery_tag: opt_string(props, "delivery_tag")?,
            expiration,
            extra,
        })
    }
}

impl Embed {
    fn from_value(value: Value) -> Result<Self, DecodeError> {
        match value {
            Value::Null => Ok(Self::default()),
            Value::Object(mut m) => Ok(Self {
                callbacks: m.remove("callbacks").unwrap_or(Value::Null),
                errbacks: m.remove("errbacks").unwrap_or(Value::Null),
                chain: m.remove("chain").unwrap_or(Value::Null),
                chord: m.remove("chord").unwrap_or(Value::Null),
                extra: m,
            }),
            other => Err(DecodeError::BodyShape(format!(
                "embed must be an object, found {}",
                kind(&other)
            ))),
        }
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("callbacks".into(), self.callbacks.clone());
        m.insert("errbacks".into(), self.errbacks.clone());
        m.insert("chain".into(), self.chain.clone());
        m.insert("chord".into(), self.chord.clone());
        m.extend(self.extra.clone());
        Value::Object(m)
    }
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
                return Err(invalid(
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
                let (headers, args, kwargs, embed) = decode_v2(headers, parts)?;
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
                let (headers, args, kwargs, embed) = decode_v1(headers, body)?;
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
            argsrepr: Some(truncate(py_repr(&Value::Array(args.clone())), REPR_MAX)),
            kwargsrepr: Some(truncate(py_repr(&Value::Object(kwargs.clone())), REPR_MAX)),
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

    /// The v2 header map in Celery's order, custom headers last.
    pub fn header_map(&self) -> Map<String, Value> {
        let h = &self.headers;
        let s = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let limit = |v: Option<f64>| {
            v.map_or(Value::Null, |f| {
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    Value::from(f as i64)
                } else {
                    Value::from(f)
                }
            })
        };
        let mut m = Map::new();
        m.insert(
            "lang".into(),
            Value::String(h.lang.clone().unwrap_or_else(|| "py".into())),
        );
        m.insert("task".into(), Value::String(h.task.clone()));
        m.insert("id".into(), Value::String(h.id.clone()));
        m.insert("shadow".into(), s(&h.shadow));
        m.insert("eta".into(), s(&h.eta));
        m.insert("expires".into(), s(&h.expires));
        m.insert("group".into(), s(&h.group));
        m.insert(
            "group_index".into(),
            h.group_index.map_or(Value::Null, Value::from),
        );
        m.insert("retries".into(), Value::from(h.retries));
        m.insert(
            "timelimit".into(),
            Value::Array(vec![limit(h.timelimit[0]), limit(h.timelimit[1])]),
        );
        m.insert("root_id".into(), s(&h.root_id));
        m.insert("parent_id".into(), s(&h.parent_id));
        m.insert("argsrepr".into(), s(&h.argsrepr));
        m.insert("kwargsrepr".into(), s(&h.kwargsrepr));
        m.insert("origin".into(), s(&h.origin));
        m.insert(
            "ignore_result".into(),
            h.ignore_result.map_or(Value::Null, Value::Bool),
        );
        m.insert(
            "replaced_task_nesting".into(),
            Value::from(h.replaced_task_nesting),
        );
        m.insert("stamped_headers".into(), h.stamped_headers.clone());
        m.insert("stamps".into(), h.stamps.clone());
        for (k, v) in &h.extra {
            m.insert(k.clone(), v.clone());
        }
        if let Some(c) = self.compression {
            m.insert("compression".into(), Value::String(c.header_value().into()));
        }
        m
    }

    /// The serialized (and compressed) v2 body `[args, kwargs, embed]`.
    pub fn encode_body(&self) -> Result<Vec<u8>, EncodeError> {
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            self.embed.to_value(),
        ]);
        let bytes = self.content_type.encode(&body)?;
        match self.compression {
            Some(c) => c.compress(&bytes),
            None => Ok(bytes),
        }
    }

    /// The Kombu Redis envelope for this message, as protocol v2, with `delivery_tag`.
    pub fn to_envelope(&self, delivery_tag: &str) -> Result<Envelope, EncodeError> {
        let p = &self.properties;
        let mut props = Map::new();
        props.insert(
            "correlation_id".into(),
            Value::String(
                p.correlation_id
                    .clone()
                    .unwrap_or_else(|| self.headers.id.clone()),
            ),
        );
        if let Some(r) = &p.reply_to {
            props.insert("reply_to".into(), Value::String(r.clone()));
        }
        for (k, v) in &p.extra {
            props.insert(k.clone(), v.clone());
        }
        props.insert(
            "delivery_mode".into(),
            Value::from(p.delivery_mode.unwrap_or(2)),
        );
        if let Some(e) = &p.expiration {
            props.insert("expiration".into(), Value::String(e.clone()));
        }
        let mut info = Map::new();
        info.insert("exchange".into(), Value::String(p.exchange.clone()));
        info.insert("routing_key".into(), Value::String(p.routing_key.clone()));
        props.insert("delivery_info".into(), Value::Object(info));
        props.insert("priority".into(), Value::from(p.priority));
        props.insert("body_encoding".into(), Value::String("base64".into()));
        props.insert("delivery_tag".into(), Value::String(delivery_tag.into()));
        Ok(Envelope {
            body: envelope::base64_encode(&self.encode_body()?),
            content_type: self.content_type.mime().into(),
            content_encoding: self.content_type.encoding().into(),
            headers: self.header_map(),
            properties: props,
            extra: Map::new(),
        })
    }
}

type Decoded = (TaskHeaders, Vec<Value>, Map<String, Value>, Embed);

fn decode_v2(headers: &Map<String, Value>, parts: Vec<Value>) -> Result<Decoded, DecodeError> {
    if !(2..=3).contains(&parts.len()) {
        return Err(DecodeError::BodyShape(format!(
            "expected [args, kwargs, embed], found an array of {} elements",
            parts.len()
        )));
    }
    let mut parts = parts.into_iter();
    let args = match parts.next() {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "args must be an array, found {}",
                kind(&other)
            )));
        }
        None => Vec::new(),
    };
    let kwargs = match parts.next() {
        Some(Value::Object(k)) => k,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "kwargs must be an object, found {}",
                kind(&other)
            )));
        }
    };
    let embed = Embed::from_value(parts.next().unwrap_or(Value::Null))?;
    let extra = headers
        .iter()
        .filter(|(k, _)| !KNOWN_HEADERS.contains(&k.as_str()) && k.as_str() != "compression")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let h = TaskHeaders {
        lang: opt_string(headers, "lang")?,
        task: req_string(headers, "task")?,
        id: req_string(headers, "id")?,
        shadow: opt_string(headers, "shadow")?,
        eta: opt_time(headers, "eta")?,
        expires: opt_time(headers, "expires")?,
        group: opt_string(headers, "group")?,
        group_index: opt_int(headers, "group_index")?,
        retries: retries(headers)?,
        timelimit: timelimit(headers)?,
        root_id: opt_string(headers, "root_id")?,
        parent_id: opt_string(headers, "parent_id")?,
        argsrepr: opt_string(headers, "argsrepr")?,
        kwargsrepr: opt_string(headers, "kwargsrepr")?,
        origin: opt_string(headers, "origin")?,
        ignore_result: opt_bool(headers, "ignore_result")?,
        replaced_task_nesting: opt_int(headers, "replaced_task_nesting")?.unwrap_or(0),
        stamped_headers: headers
            .get("stamped_headers")
            .cloned()
            .unwrap_or(Value::Null),
        stamps: headers
            .get("stamps")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
        extra,
    };
    Ok((h, args, kwargs, embed))
}

/// Protocol v1: everything in the body dict (Celery's `proto1_to_proto2`). Headers, if any, are
/// kept as custom headers; a "hybrid" message may carry the task name there instead.
fn decode_v1(
    headers: &Map<String, Value>,
    body: Map<String, Value>,
) -> Result<Decoded, DecodeError> {
    let task = match opt_string(&body, "task")? {
        Some(t) => t,
        None => req_string(headers, "task")?,
    };
    let id = match opt_string(&body, "id")? {
        Some(i) => i,
        None => req_string(headers, "id")?,
    };
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "args must be an array, found {}",
                kind(other)
            )));
        }
    };
    let kwargs = match body.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(k)) => k.clone(),
        Some(other) => {
            return Err(DecodeError::BodyShape(format!(
                "kwargs must be an object, found {}",
                kind(other)
            )));
        }
    };
    let group = match opt_string(&body, "group")? {
        Some(g) => Some(g),
        None => opt_string(&body, "taskset")?,
    };
    let get = |k: &str| body.get(k).cloned().unwrap_or(Value::Null);
    let embed = Embed {
        callbacks: get("callbacks"),
        errbacks: get("errbacks"),
        chain: Value::Null,
        chord: get("chord"),
        extra: Map::new(),
    };
    let h = TaskHeaders {
        lang: Some("py".into()),
        task,
        id,
        shadow: None,
        eta: opt_time(&body, "eta")?,
        expires: opt_time(&body, "expires")?,
        group,
        group_index: opt_int(&body, "group_index")?,
        retries: retries(&body)?,
        timelimit: timelimit(&body)?,
        root_id: None,
        parent_id: None,
        argsrepr: None,
        kwargsrepr: None,
        origin: None,
        ignore_result: None,
        replaced_task_nesting: 0,
        stamped_headers: Value::Null,
        stamps: Value::Object(Map::new()),
        extra: headers
            .iter()
            .filter(|(k, _)| k.as_str() != "compression")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    Ok((h, args, kwargs, embed))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A Python-style `repr` of positional args as the tuple Celery prints: `(1, 2)`, `(1,)`, `()`.
pub fn py_tuple_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(v, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

/// A Python-style `repr` of a JSON value, for `argsrepr`/`kwargsrepr` (display only).
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str_repr(k, out);
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
    }
}

fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2_headers() -> Map<String, Value> {
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

    #[test]
    fn v2_decodes_and_keeps_custom_headers() {
        let body = br#"[[2, 3], {"z": 1}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        let props =
            json!({"delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 5});
        let m = TaskMessage::decode(
            &v2_headers(),
            props.as_object().unwrap(),
            "application/json",
            body,
        )
        .unwrap();
        assert_eq!(m.protocol, Protocol::V2);
        assert_eq!(m.headers.task, "tasks.add");
        assert_eq!(m.args, vec![json!(2), json!(3)]);
        assert_eq!(m.kwargs["z"], json!(1));
        assert_eq!(m.headers.extra["x-tenant"], json!("acme"));
        assert_eq!(m.properties.priority, 5);
        assert_eq!(m.properties.routing_key, "celery");
    }

    #[test]
    fn header_map_round_trips_in_celery_order() {
        let body =
            br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        let h = v2_headers();
        let m = TaskMessage::decode(&h, &Map::new(), "application/json", body).unwrap();
        let again = m.header_map();
        assert_eq!(Value::Object(again.clone()), Value::Object(h.clone()));
        assert!(again.keys().eq(h.keys()));
    }

    #[test]
    fn missing_task_and_bad_fields_are_reported() {
        let body = b"[[], {}, {}]";
        let mut h = v2_headers();
        h.remove("task");
        assert_eq!(
            TaskMessage::decode(&h, &Map::new(), "application/json", body).unwrap_err(),
            DecodeError::MissingField("task")
        );
        let mut h = v2_headers();
        h.insert("eta".into(), json!("soon"));
        assert!(matches!(
            TaskMessage::decode(&h, &Map::new(), "application/json", body),
            Err(DecodeError::InvalidField { field: "eta", .. })
        ));
        let mut h = v2_headers();
        h.insert("retries".into(), json!(-1));
        assert!(TaskMessage::decode(&h, &Map::new(), "application/json", body).is_err());
    }

    #[test]
    fn v1_body_becomes_the_same_shape() {
        let body = br#"{"task": "tasks.add", "id": "i1", "args": [2, 3], "kwargs": {"z": 1}, "retries": 2, "eta": "2026-11-26T10:23:08.062984+00:00", "expires": null, "utc": true, "callbacks": null, "errbacks": null, "timelimit": [30, null], "taskset": "g1", "chord": null}"#;
        let m = TaskMessage::decode(&Map::new(), &Map::new(), "application/json", body).unwrap();
        assert_eq!(m.protocol, Protocol::V1);
        assert_eq!(
            (m.headers.task.as_str(), m.headers.id.as_str()),
            ("tasks.add", "i1")
        );
        assert_eq!(m.headers.retries, 2);
        assert_eq!(m.headers.group.as_deref(), Some("g1"));
        assert_eq!(m.headers.timelimit, [Some(30.0), None]);
    }

    #[test]
    fn encoded_envelope_decodes_to_the_same_message() {
        let mut m = TaskMessage::new(
            "celeriac.test.add",
            "id-1",
            vec![json!(2), json!(3)],
            Map::new(),
            "default",
        );
        m.compression = Some(Compression::Zlib);
        m.headers.eta = Some("2026-11-26T10:23:08.062984+00:00".into());
        m.properties.priority = 6;
        let env = m.to_envelope("tag-1").unwrap();
        assert_eq!(env.delivery_tag(), Some("tag-1"));
        let back =
            TaskMessage::from_envelope(&Envelope::from_json(&env.to_json()).unwrap()).unwrap();
        assert_eq!(back.headers.argsrepr.as_deref(), Some("[2, 3]"));
        assert_eq!(back.compression, Some(Compression::Zlib));
        assert_eq!(back.properties.delivery_tag.as_deref(), Some("tag-1"));
        let mut expected = m.clone();
        expected.properties.delivery_tag = Some("tag-1".into());
        assert_eq!(back, expected);
    }

    #[test]
    fn repr_looks_like_python() {
        assert_eq!(
            py_repr(&json!([1, "x", null, true, {"k": [1.5]}])),
            "[1, 'x', None, True, {'k': [1.5]}]"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_tuple_repr(&[json!(1)]), "(1,)");
        assert_eq!(py_tuple_repr(&[json!(1), json!("a")]), "(1, 'a')");
        assert_eq!(py_tuple_repr(&[]), "()");
    }
}
