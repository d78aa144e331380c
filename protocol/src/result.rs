//! Result records as Celery's Redis backend writes them (`celery-task-meta-<id>`), and the
//! JSON encoding of exceptions that lets `AsyncResult.get()` raise the right Python type.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::envelope::kind;
use crate::error::DecodeError;
use crate::time;

/// Celery's task states (`celery/states.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Unknown: never stored; a missing key reads as PENDING.
    Pending,
    /// Received by a worker.
    Received,
    /// Started (only stored when tracking is on).
    Started,
    /// Returned a value.
    Success,
    /// Raised an exception.
    Failure,
    /// Revoked or expired.
    Revoked,
    /// Rejected.
    Rejected,
    /// Waiting to be retried.
    Retry,
    /// Result ignored.
    Ignored,
}

impl State {
    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Revoked => "REVOKED",
            Self::Rejected => "REJECTED",
            Self::Retry => "RETRY",
            Self::Ignored => "IGNORED",
        }
    }

    /// Reads a state name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "RECEIVED" => Self::Received,
            "STARTED" => Self::Started,
            "SUCCESS" => Self::Success,
            "FAILURE" => Self::Failure,
            "REVOKED" => Self::Revoked,
            "REJECTED" => Self::Rejected,
            "RETRY" => Self::Retry,
            "IGNORED" => Self::Ignored,
            _ => return None,
        })
    }

    /// SUCCESS, FAILURE and REVOKED: the states whose records carry `date_done`.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }
}

/// A Python exception as Celery's JSON result serializer writes it.
///
/// Python rebuilds it without importing anything: it looks `exc_module` up among the modules
/// already loaded and calls the class with `*exc_message`. `builtins` and `celery.exceptions`
/// are always loaded in a Celery client, so those types come back as themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct PyException {
    /// Class `__qualname__`, e.g. `ValueError`.
    pub exc_type: String,
    /// Module, e.g. `builtins`.
    pub exc_module: String,
    /// The exception's `args`.
    pub exc_message: Vec<Value>,
}

impl PyException {
    /// An exception of any module and type with the given args.
    pub fn new(module: &str, exc_type: &str, args: Vec<Value>) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_module: module.into(),
            exc_message: args,
        }
    }

    /// A builtin exception (`ValueError`, `TypeError`, …) with one message.
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new("builtins", exc_type, vec![Value::String(message.into())])
    }

    /// A `celery.exceptions` exception with one message.
    pub fn celery(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new(
            "celery.exceptions",
            exc_type,
            vec![Value::String(message.into())],
        )
    }

    /// `{"exc_type", "exc_message", "exc_module"}` in Celery's order.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        m.insert("exc_message".into(), Value::Array(self.exc_message.clone()));
        m.insert("exc_module".into(), Value::String(self.exc_module.clone()));
        Value::Object(m)
    }

    /// Reads an encoded exception; `None` when `v` is not one.
    pub fn from_value(v: &Value) -> Option<Self> {
        let m = v.as_object()?;
        let exc_type = m.get("exc_type")?.as_str()?.to_owned();
        let exc_module = m
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins")
            .to_owned();
        let exc_message = match m.get("exc_message") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other.clone()],
        };
        Some(Self {
            exc_type,
            exc_module,
            exc_message,
        })
    }

    /// Python's `repr` of the exception, `LookupError('no such row')`, as Celery's `Retry`
    /// shows the exception it carries.
    pub fn repr(&self) -> String {
        let args: Vec<String> = self
            .exc_message
            .iter()
            .map(crate::message::py_repr)
            .collect();
        format!("{}({})", self.exc_type, args.join(", "))
    }

    /// `ValueError: bad value`, like the last line of a Python traceback.
    pub fn summary(&self) -> String {
        let args: Vec<String> = self
            .exc_message
            .iter()
            .map(|a| match a {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if args.is_empty() {
            self.exc_type.clone()
        } else {
            format!("{}: {}", self.exc_type, args.join(", "))
        }
    }
}

/// The result-backend key of a task.
pub fn task_meta_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// An `AsyncResult` as a result tuple: `[[task_id, null], null]` (`celery/result.py` as_tuple).
pub fn result_tuple(task_id: &str) -> Value {
    Value::Array(vec![
        Value::Array(vec![Value::String(task_id.into()), Value::Null]),
        Value::Null,
    ])
}

/// One `celery-task-meta-*` record.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// The state.
    pub status: State,
    /// The return value, an encoded exception, or state metadata (`{pid, hostname}` for STARTED).
    pub result: Value,
    /// Traceback text for exceptions.
    pub traceback: Option<String>,
    /// Result tuples of the tasks this one launched.
    pub children: Vec<Value>,
    /// `isoformat()` completion time; only for ready states.
    pub date_done: Option<String>,
    /// The request's group, when it had one.
    pub group_id: Option<String>,
    /// The request's parent, when it had one.
    pub parent_id: Option<String>,
    /// The task id.
    pub task_id: String,
}

impl ResultRecord {
    /// A record of `status` for `task_id`, stamped `now` in `tz` when the state is ready.
    pub fn new(task_id: &str, status: State, result: Value, now: DateTime<Utc>, tz: Tz) -> Self {
        Self {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done: status.is_ready().then(|| time::isoformat(now, tz)),
            group_id: None,
            parent_id: None,
            task_id: task_id.into(),
        }
    }

    /// The JSON object, keys in Celery's order.
    pub fn to_value(&self) -> Value {
        let s = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let mut m = Map::new();
        m.insert("status".into(), Value::String(self.status.as_str().into()));
        m.insert("result".into(), self.result.clone());
        m.insert("traceback".into(), s(&self.traceback));
        m.insert("children".into(), Value::Array(self.children.clone()));
        m.insert("date_done".into(), s(&self.date_done));
        if let Some(g) = &self.group_id {
            m.insert("group_id".into(), Value::String(g.clone()));
        }
        if let Some(p) = &self.parent_id {
            m.insert("parent_id".into(), Value::String(p.clone()));
        }
        m.insert("task_id".into(), Value::String(self.task_id.clone()));
        Value::Object(m)
    }

    /// The JSON text stored under [`task_meta_key`].
    pub fn to_json(&self) -> Vec<u8> {
        self.to_value().to_string().into_bytes()
    }

    /// Reads a stored record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::Body {
            content_type: "application/json",
            reason: e.to_string(),
        })?;
        let Value::Object(mut m) = v else {
            return Err(DecodeError::BodyShape(format!(
                "a result record must be an object, found {}",
                kind(&v)
            )));
        };
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let status = text(m.remove("status")).ok_or(DecodeError::MissingField("status"))?;
        let status = State::parse(&status).ok_or_else(|| DecodeError::InvalidField {
            field: "status",
            reason: format!("unknown state {status}"),
        })?;
        Ok(Self {
            status,
            result: m.remove("result").unwrap_or(Value::Null),
            traceback: text(m.remove("traceback")),
            children: match m.remove("children") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            },
            date_done: text(m.remove("date_done")),
            group_id: text(m.remove("group_id")),
            parent_id: text(m.remove("parent_id")),
            task_id: text(m.remove("task_id")).ok_or(DecodeError::MissingField("task_id"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn success_record_matches_celerys_layout() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 10, 23, 12).unwrap();
        let rec = ResultRecord::new("t1", State::Success, json!(5), now, Tz::UTC);
        assert_eq!(
            String::from_utf8(rec.to_json()).unwrap(),
            r#"{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-26T10:23:12+00:00","task_id":"t1"}"#
        );
        assert_eq!(ResultRecord::from_json(&rec.to_json()).unwrap(), rec);
    }

    #[test]
    fn exceptions_encode_as_celery_does() {
        let e = PyException::builtin("ValueError", "bad value");
        assert_eq!(
            e.to_value(),
            json!({"exc_type": "ValueError", "exc_message": ["bad value"], "exc_module": "builtins"})
        );
        assert_eq!(PyException::from_value(&e.to_value()), Some(e.clone()));
        assert_eq!(e.summary(), "ValueError: bad value");
        let started =
            ResultRecord::new("t", State::Started, json!({"pid": 1}), Utc::now(), Tz::UTC);
        assert_eq!(started.date_done, None);
    }
}
