//! Reading task messages: field checks with precise errors, and the v2/v1 body layouts.

use serde_json::{Map, Value};

use super::{Embed, KNOWN_HEADERS, TaskHeaders, TaskProperties};
use crate::envelope::kind;
use crate::error::DecodeError;
use crate::kombu;
use crate::time::Timestamp;

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
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
}

/// Positional arguments: an array, or nothing.
fn args_of(v: Option<Value>) -> Result<Vec<Value>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(DecodeError::BodyShape(format!(
            "args must be an array, found {}",
            kind(&other)
        ))),
    }
}

/// Keyword arguments: an object, or nothing.
fn kwargs_of(v: Option<Value>) -> Result<Map<String, Value>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(k)) => Ok(k),
        Some(other) => Err(DecodeError::BodyShape(format!(
            "kwargs must be an object, found {}",
            kind(&other)
        ))),
    }
}

pub(super) type Decoded = (TaskHeaders, Vec<Value>, Map<String, Value>, Embed);

pub(super) fn decode_v2(
    headers: &Map<String, Value>,
    parts: Vec<Value>,
) -> Result<Decoded, DecodeError> {
    if !(2..=3).contains(&parts.len()) {
        return Err(DecodeError::BodyShape(format!(
            "expected [args, kwargs, embed], found an array of {} elements",
            parts.len()
        )));
    }
    let mut parts = parts.into_iter();
    let args = args_of(parts.next())?;
    let kwargs = kwargs_of(parts.next())?;
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
pub(super) fn decode_v1(
    headers: &Map<String, Value>,
    mut body: Map<String, Value>,
) -> Result<Decoded, DecodeError> {
    let task = match opt_string(&body, "task")? {
        Some(t) => t,
        None => req_string(headers, "task")?,
    };
    let id = match opt_string(&body, "id")? {
        Some(i) => i,
        None => req_string(headers, "id")?,
    };
    let args = args_of(body.remove("args"))?;
    let kwargs = kwargs_of(body.remove("kwargs"))?;
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::v2_headers;
    use super::super::{Protocol, TaskMessage};
    use super::*;
    use serde_json::json;

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
}
