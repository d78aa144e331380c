//! Declaring Celery's queues as Kombu does, without tripping over queues that already exist.
//!
//! For each queue `q` Kombu declares (`kombu/entity.py` `Queue.declare`, with Celery's
//! `app/amqp.py` defaults): the exchange `q` (direct, durable, not auto-delete), the queue `q`
//! (durable, not exclusive, not auto-delete, with `x-max-priority` when
//! `task_queue_max_priority` is set and `x-queue-type: quorum` when `task_default_queue_type`
//! is `quorum`), and the binding of `q` to exchange `q` with routing key `q`.
//!
//! RabbitMQ refuses a declaration whose arguments differ from the existing queue's
//! (`PRECONDITION_FAILED - inequivalent arg ...`), which kills a Python worker at startup. We
//! first declare passively (does the queue exist?), then declare with our arguments; when the
//! broker refuses, its reply names the argument and the current value, and with
//! [`OnMismatch::Reuse`] (the default) we take that value and declare again, so a Django app's
//! existing queue (a quorum queue, a priority queue) is reused as it is. AMQP cannot list a
//! queue's arguments, so this is how we learn them. With [`OnMismatch::Fail`] the mismatch is
//! an [`AmqpError::DeclareConflict`] naming both sides. Every refusal closes the channel; it is
//! replaced before the next step.

use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::client::ChannelSlot;
use super::wire::json_to_table;
use super::{AmqpError, classify, is_soft, protocol_error, short};

/// What to do when a queue exists with other arguments than ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMismatch {
    /// Use the existing queue's arguments (logged at INFO).
    #[default]
    Reuse,
    /// Refuse, as Kombu does, with [`AmqpError::DeclareConflict`].
    Fail,
}

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues (no `x-queue-type`, or `classic`).
    Classic,
    /// Quorum queues: replicated; no global QoS, no priorities before RabbitMQ 4.
    Quorum,
    /// Another type (`stream`, ...), as named.
    Other(String),
}

/// A queue as declared: the arguments it really has (ours, or the existing queue's).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredQueue {
    /// Its name.
    pub name: String,
    /// Whether it is durable.
    pub durable: bool,
    /// Its arguments (`x-max-priority`, `x-queue-type`, ...), as JSON: ours, with the values
    /// the broker said the existing queue has. AMQP cannot list a queue's arguments, so an
    /// argument the broker ignores for this queue type (and so never disputes) is listed too.
    pub arguments: Map<String, Value>,
    /// Whether it existed before this declaration.
    pub existed: bool,
    /// Messages ready in it when declared.
    pub message_count: u32,
    /// Consumers it had when declared.
    pub consumer_count: u32,
}

impl DeclaredQueue {
    /// The queue's type from `x-queue-type`.
    pub fn queue_type(&self) -> QueueType {
        match self.arguments.get("x-queue-type").and_then(Value::as_str) {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => QueueType::Other(other.to_owned()),
        }
    }

    /// `x-max-priority`, when the queue has priorities. Never for a quorum queue: RabbitMQ 3
    /// ignores the argument there (and accepts it as equivalent when declared).
    pub fn max_priority(&self) -> Option<u8> {
        if self.queue_type() == QueueType::Quorum {
            return None;
        }
        self.arguments
            .get("x-max-priority")
            .and_then(Value::as_u64)
            .map(|p| p.min(255) as u8)
    }
}

/// One side of RabbitMQ's `inequivalent arg` message: absent, or a value of an AMQP type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ArgValue {
    /// `none`.
    Absent,
    /// `the value '10' of type 'signedint'`.
    Present(Value),
    /// `'10'` or `'true'`: a value without its type (the flags, and arguments both sides have).
    Untyped(String),
    /// A form we cannot turn back into a value.
    Unreadable(String),
}

/// The argument a `PRECONDITION_FAILED` reply says differs, and both values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inequivalent {
    pub arg: String,
    pub received: ArgValue,
    pub current: ArgValue,
}

fn typed_value(text: &str, ty: &str) -> Option<Value> {
    match ty {
        "longstr" | "shortstr" | "binary" => Some(Value::String(text.to_owned())),
        "signedint" | "long" | "short" | "byte" | "unsignedbyte" | "unsignedshort"
        | "unsignedint" | "timestamp" | "signedbyte" => text.parse::<i64>().ok().map(Value::from),
        "bool" => text.parse::<bool>().ok().map(Value::Bool),
        "double" | "float" => text.parse::<f64>().ok().map(Value::from),
        _ => None,
    }
}

fn arg_value(text: &str) -> ArgValue {
    let text = text.trim();
    if text == "none" {
        return ArgValue::Absent;
    }
    if let Some(rest) = text.strip_prefix("the value '")
        && let Some((value, ty)) = rest.rsplit_once("' of type '")
    {
        let ty = ty.trim_end_matches('\'');
        return typed_value(value, ty)
            .map_or_else(|| ArgValue::Unreadable(text.to_owned()), ArgValue::Present);
    }
    match text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        Some(v) => ArgValue::Untyped(v.to_owned()),
        None => ArgValue::Unreadable(text.to_owned()),
    }
}

/// An untyped value read with the type of `like` (our own value for the argument), or as a
/// boolean, an integer, a float or else a string.
fn untyped(text: &str, like: Option<&Value>) -> Value {
    match like {
        Some(Value::String(_)) => return Value::String(text.to_owned()),
        Some(Value::Bool(_)) => {
            if let Ok(b) = text.parse() {
                return Value::Bool(b);
            }
        }
        _ => {}
    }
    if let Ok(b) = text.parse::<bool>() {
        Value::Bool(b)
    } else if let Ok(i) = text.parse::<i64>() {
        Value::from(i)
    } else if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
        Value::from(f)
    } else {
        Value::String(text.to_owned())
    }
}

/// Reads RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'celery'
/// in vhost '/': received none but current is the value '10' of type 'signedint'`.
pub(crate) fn parse_inequivalent(message: &str) -> Option<Inequivalent> {
    let (_, rest) = message.split_once("inequivalent arg '")?;
    let (arg, rest) = rest.split_once('\'')?;
    let (_, rest) = rest.split_once(": received ")?;
    let (received, current) = rest.split_once(" but current is ")?;
    Some(Inequivalent {
        arg: arg.to_owned(),
        received: arg_value(received),
        current: arg_value(current),
    })
}

/// The queue flags and arguments we declare with.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Map<String, Value>,
}

impl Shape {
    fn describe(&self) -> String {
        format!(
            "durable={} auto_delete={} exclusive={} arguments={}",
            self.durable,
            self.auto_delete,
            self.exclusive,
            Value::Object(self.arguments.clone())
        )
    }

    /// Takes the existing queue's value for `arg`; false when the reply cannot be used.
    fn adopt(&mut self, diff: &Inequivalent) -> bool {
        let flag = |v: &ArgValue| match v {
            ArgValue::Present(Value::Bool(b)) => Some(*b),
            ArgValue::Untyped(t) => t.parse().ok(),
            _ => None,
        };
        match diff.arg.as_str() {
            "durable" | "auto_delete" | "exclusive" => {
                let Some(b) = flag(&diff.current) else {
                    return false;
                };
                match diff.arg.as_str() {
                    "durable" => self.durable = b,
                    "auto_delete" => self.auto_delete = b,
                    _ => self.exclusive = b,
                }
                true
            }
            arg => match &diff.current {
                ArgValue::Absent => self.arguments.remove(arg).is_some(),
                ArgValue::Present(v) => {
                    self.arguments.insert(arg.to_owned(), v.clone());
                    true
                }
                ArgValue::Untyped(t) => {
                    let v = untyped(t, self.arguments.get(arg));
                    self.arguments.insert(arg.to_owned(), v);
                    true
                }
                ArgValue::Unreadable(_) => false,
            },
        }
    }
}

/// The arguments Celery puts on its queues for these settings.
pub(crate) fn celery_arguments(
    max_priority: Option<u8>,
    queue_type: &QueueType,
) -> Map<String, Value> {
    let mut args = Map::new();
    if let Some(p) = max_priority {
        args.insert("x-max-priority".into(), Value::from(p));
    }
    match queue_type {
        QueueType::Classic => {}
        QueueType::Quorum => {
            args.insert("x-queue-type".into(), Value::String("quorum".into()));
        }
        QueueType::Other(t) => {
            args.insert("x-queue-type".into(), Value::String(t.clone()));
        }
    }
    args
}

/// Most declarations tried for one queue (one per argument the broker reports as different).
const MAX_ATTEMPTS: usize = 8;

/// Declares `name`'s exchange, queue and binding as Kombu does (see the module docs).
pub(crate) async fn declare_queue(
    slot: &ChannelSlot,
    name: &str,
    wanted: Map<String, Value>,
    on_mismatch: OnMismatch,
) -> Result<DeclaredQueue, AmqpError> {
    let qname = short(name)?;
    let ch = slot.get().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(
            qname.clone(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => {
            let reason = protocol_error(&e)
                .map(|(_, m)| m.to_owned())
                .unwrap_or_default();
            if on_mismatch == OnMismatch::Fail {
                return Err(AmqpError::ExchangeConflict {
                    exchange: name.to_owned(),
                    reason,
                });
            }
            warn!(exchange = %name, %reason, "exchange exists with other settings; using it as it is");
        }
        Err(e) => return Err(classify("exchange.declare", e)),
    }

    let ch = slot.get().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let existed = match ch
        .queue_declare(qname.clone(), passive, FieldTable::default())
        .await
    {
        Ok(_) => true,
        Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => false,
        Err(e) => return Err(classify("queue.declare (passive)", e)),
    };

    let ours = Shape {
        durable: true,
        auto_delete: false,
        exclusive: false,
        arguments: wanted,
    };
    let mut shape = ours.clone();
    let mut declared = None;
    for _ in 0..MAX_ATTEMPTS {
        let ch = slot.get().await?;
        let options = QueueDeclareOptions {
            durable: shape.durable,
            auto_delete: shape.auto_delete,
            exclusive: shape.exclusive,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(qname.clone(), options, json_to_table(&shape.arguments)?)
            .await
        {
            Ok(q) => {
                declared = Some(q);
                break;
            }
            Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => {
                let message = protocol_error(&e)
                    .map(|(_, m)| m.to_owned())
                    .unwrap_or_default();
                let usable = parse_inequivalent(&message).filter(|d| shape.adopt(d));
                if usable.is_none() {
                    return Err(AmqpError::DeclareConflict {
                        queue: name.to_owned(),
                        ours: ours.describe(),
                        current: message,
                    });
                }
            }
            Err(e) => return Err(classify("queue.declare", e)),
        }
    }
    let Some(q) = declared else {
        return Err(AmqpError::DeclareConflict {
            queue: name.to_owned(),
            ours: ours.describe(),
            current: format!("still different after {MAX_ATTEMPTS} declarations"),
        });
    };
    if shape != ours {
        if on_mismatch == OnMismatch::Fail {
            return Err(AmqpError::DeclareConflict {
                queue: name.to_owned(),
                ours: ours.describe(),
                current: shape.describe(),
            });
        }
        info!(
            queue = %name,
            existing = %shape.describe(),
            configured = %ours.describe(),
            "queue exists with other arguments; using the existing queue's"
        );
    }
    let ch = slot.get().await?;
    ch.queue_bind(
        qname.clone(),
        qname.clone(),
        qname,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| classify("queue.bind", e))?;
    Ok(DeclaredQueue {
        name: name.to_owned(),
        durable: shape.durable,
        arguments: shape.arguments,
        existed,
        message_count: q.message_count(),
        consumer_count: q.consumer_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_rabbitmqs_inequivalent_arg_replies() {
        let d = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'celery' in vhost '/': received none but current is the value '10' of type 'signedint'",
        )
        .unwrap();
        assert_eq!(d.arg, "x-max-priority");
        assert_eq!(d.received, ArgValue::Absent);
        assert_eq!(d.current, ArgValue::Present(json!(10)));
        let d = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost 'v': received the value 'classic' of type 'longstr' but current is the value 'quorum' of type 'longstr'",
        )
        .unwrap();
        assert_eq!(d.current, ArgValue::Present(json!("quorum")));
        let d = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'",
        )
        .unwrap();
        assert_eq!(d.current, ArgValue::Untyped("false".into()));
        let d = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'q' in vhost 'v': received '5' but current is '10'",
        )
        .unwrap();
        assert_eq!(d.current, ArgValue::Untyped("10".into()));
        let mut s = Shape {
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments: celery_arguments(Some(5), &QueueType::Classic),
        };
        assert!(s.adopt(&d));
        assert_eq!(s.arguments["x-max-priority"], json!(10));
        assert_eq!(untyped("123", Some(&json!("dlx"))), json!("123"));
        assert_eq!(untyped("x", None), json!("x"));
        assert_eq!(
            parse_inequivalent("PRECONDITION_FAILED - something else"),
            None
        );
        let d = parse_inequivalent(
            "PRECONDITION_FAILED - inequivalent arg 'x-foo' for queue 'q' in vhost '/': received none but current is the value '[1]' of type 'array'",
        )
        .unwrap();
        assert!(matches!(d.current, ArgValue::Unreadable(_)));
    }

    #[test]
    fn adopting_takes_the_existing_value() {
        let mut s = Shape {
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments: celery_arguments(Some(10), &QueueType::Classic),
        };
        let quorum = Inequivalent {
            arg: "x-queue-type".into(),
            received: ArgValue::Absent,
            current: ArgValue::Present(json!("quorum")),
        };
        assert!(s.adopt(&quorum));
        let no_priority = Inequivalent {
            arg: "x-max-priority".into(),
            received: ArgValue::Present(json!(10)),
            current: ArgValue::Absent,
        };
        assert!(s.adopt(&no_priority));
        assert_eq!(
            Value::Object(s.arguments.clone()),
            json!({"x-queue-type": "quorum"})
        );
        let unreadable = Inequivalent {
            arg: "x-foo".into(),
            received: ArgValue::Absent,
            current: ArgValue::Unreadable("?".into()),
        };
        assert!(!s.adopt(&unreadable));
        let q = DeclaredQueue {
            name: "q".into(),
            durable: true,
            arguments: s.arguments,
            existed: true,
            message_count: 0,
            consumer_count: 0,
        };
        assert_eq!(q.queue_type(), QueueType::Quorum);
        assert_eq!(q.max_priority(), None);
    }
}
