//! AMQP messages and our [`Envelope`], both ways, with no I/O.
//!
//! On RabbitMQ a Celery message is a native AMQP message: the task headers are the
//! `application_headers` field table, the properties are basic properties, and the body is the
//! serialized payload itself (no base64). We map it onto the same [`Envelope`] the Redis
//! transport uses, so [`TaskMessage::from_envelope`](crate::TaskMessage::from_envelope) decodes
//! both unchanged:
//!
//! * body bytes: base64-encoded into `body` with `properties.body_encoding = "base64"`, exactly
//!   Kombu's Redis form. It costs one encode per message (a few microseconds for a task), and
//!   keeps [`Envelope`] one type for both transports; a caller that has the raw bytes can skip it
//!   with [`TaskMessage::decode`](crate::TaskMessage::decode) and [`properties_map`].
//! * headers: field table to JSON object and back ([`table_to_json`], [`json_to_table`]), the
//!   types chosen as py-amqp chooses them, so RabbitMQ and Python see what Celery would send.
//! * properties: the basic properties under Kombu's names (`correlation_id`, `reply_to`,
//!   `delivery_mode`, `priority`, `expiration`, `message_id`, `timestamp`, `type`, `user_id`,
//!   `app_id`, `cluster_id`), plus `delivery_info` (`exchange`, `routing_key`, `redelivered`,
//!   `consumer_tag`) and `delivery_tag` (the channel's number, as decimal text) from the delivery.
//!
//! When publishing, `delivery_info`, `delivery_tag` and `body_encoding` are Redis bookkeeping
//! and are not sent; other unknown properties have no AMQP field and are dropped, as py-amqp
//! drops them.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::envelope::{self, Envelope, kind};
use crate::error::DecodeError;

/// Why an envelope cannot be sent as an AMQP message.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum WireError {
    /// A header key or short-string property longer than AMQP's 255 bytes.
    #[error("`{field}` is {len} bytes long; AMQP short strings hold at most 255")]
    TooLong {
        /// The header key or property name.
        field: String,
        /// Its length in bytes.
        len: usize,
    },
    /// An integer outside the signed 64-bit range AMQP tables hold.
    #[error("header `{field}`: the integer {value} does not fit in 64 signed bits")]
    IntegerRange {
        /// The header key.
        field: String,
        /// The number as written.
        value: String,
    },
    /// A property of the wrong type.
    #[error("property `{name}`: {reason}")]
    Property {
        /// The property's name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The envelope's body could not be turned back into bytes.
    #[error("body: {0}")]
    Body(#[from] DecodeError),
}

/// Where a delivery came from: the parts of `basic.deliver` that are not the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""` for Celery's direct sends).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (after a reject-requeue or a lost channel).
    pub redelivered: bool,
    /// The channel's delivery tag.
    pub delivery_tag: u64,
    /// The consumer it was delivered to.
    pub consumer_tag: String,
}

/// An AMQP field value as JSON. Numbers of every width become JSON numbers (a decimal keeps
/// its digits), void becomes `null`, long strings and byte arrays become strings (replacing
/// bytes that are not UTF-8), timestamps become seconds since the epoch, and NaN or infinite
/// floats become `null` (JSON has no such numbers).
pub fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => decimal_to_json(d),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

fn decimal_to_json(d: &DecimalValue) -> Value {
    let digits = d.value.to_string();
    let scale = usize::from(d.scale);
    let text = if scale == 0 {
        digits
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat(scale - digits.len()))
    };
    serde_json::from_str::<Number>(&text)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// An AMQP field table as a JSON object (see [`value_to_json`]).
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect()
}

fn short(field: &str, text: &str) -> Result<ShortString, WireError> {
    ShortString::try_new(text).map_err(|_| WireError::TooLong {
        field: field.to_owned(),
        len: text.len(),
    })
}

/// A JSON value as the AMQP field value py-amqp would write for the same Python value: strings
/// as long strings, integers as 32-bit (`I`) when they fit in ±2147483647 and 64-bit (`L`)
/// otherwise, other numbers as doubles, `null` as void, arrays and objects as field arrays and
/// tables. `field` names the header in errors.
pub fn json_to_value(field: &str, value: &Value) -> Result<AMQPValue, WireError> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) if small != i32::MIN => AMQPValue::LongInt(small),
                    _ => AMQPValue::LongLongInt(i),
                }
            } else {
                let text = n.to_string();
                if !text.contains(['.', 'e', 'E']) {
                    return Err(WireError::IntegerRange {
                        field: field.to_owned(),
                        value: text,
                    });
                }
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(|v| json_to_value(field, v))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)?),
    })
}

/// A JSON object as an AMQP field table (see [`json_to_value`]).
pub fn json_to_table(map: &Map<String, Value>) -> Result<FieldTable, WireError> {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(short(k, k)?, json_to_value(k, v)?);
    }
    Ok(table)
}

/// The envelope properties of a delivery: the basic properties under Kombu's names, with
/// `delivery_info` and `delivery_tag`, but without `body_encoding` (the body is raw bytes here).
/// Pass this with the raw body to [`TaskMessage::decode`](crate::TaskMessage::decode).
pub fn properties_map(props: &BasicProperties, info: &DeliveryInfo) -> Map<String, Value> {
    let mut m = Map::new();
    let mut text = |name: &str, v: &Option<ShortString>| {
        if let Some(s) = v {
            m.insert(name.into(), Value::String(s.as_str().to_owned()));
        }
    };
    text("correlation_id", props.correlation_id());
    text("reply_to", props.reply_to());
    text("expiration", props.expiration());
    text("message_id", props.message_id());
    text("type", props.kind());
    text("user_id", props.user_id());
    text("app_id", props.app_id());
    text("cluster_id", props.cluster_id());
    if let Some(mode) = props.delivery_mode() {
        m.insert("delivery_mode".into(), Value::from(*mode));
    }
    if let Some(ts) = props.timestamp() {
        m.insert("timestamp".into(), Value::from(*ts));
    }
    let mut di = Map::new();
    di.insert("exchange".into(), Value::String(info.exchange.clone()));
    di.insert(
        "routing_key".into(),
        Value::String(info.routing_key.clone()),
    );
    di.insert("redelivered".into(), Value::Bool(info.redelivered));
    di.insert(
        "consumer_tag".into(),
        Value::String(info.consumer_tag.clone()),
    );
    m.insert("delivery_info".into(), Value::Object(di));
    m.insert(
        "priority".into(),
        Value::from(props.priority().unwrap_or(0)),
    );
    m.insert(
        "delivery_tag".into(),
        Value::String(info.delivery_tag.to_string()),
    );
    m
}

/// The headers of a delivery as a JSON object (empty when it has none).
pub fn headers_map(props: &BasicProperties) -> Map<String, Value> {
    props
        .headers()
        .as_ref()
        .map(table_to_json)
        .unwrap_or_default()
}

/// A delivery as the envelope Kombu's Redis transport would hold for the same message.
pub fn delivery_to_envelope(props: &BasicProperties, body: &[u8], info: &DeliveryInfo) -> Envelope {
    let mut properties = properties_map(props, info);
    properties.insert("body_encoding".into(), Value::String("base64".into()));
    Envelope {
        body: envelope::base64_encode(body),
        content_type: props
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        content_encoding: props
            .content_encoding()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        headers: headers_map(props),
        properties,
        extra: Map::new(),
    }
}

fn prop_text(
    props: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<ShortString>, WireError> {
    match props.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => short(name, s).map(Some),
        // Kombu writes `expiration` as text, but a number is what a user may have meant.
        Some(Value::Number(n)) if name == "expiration" => short(name, &n.to_string()).map(Some),
        Some(other) => Err(WireError::Property {
            name,
            reason: format!("expected a string, found {}", kind(other)),
        }),
    }
}

fn prop_int(
    props: &Map<String, Value>,
    name: &'static str,
    max: u64,
) -> Result<Option<u64>, WireError> {
    match props.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .map(|v| Some(v.min(max)))
            .ok_or_else(|| WireError::Property {
                name,
                reason: format!("`{n}` is not an integer"),
            }),
        Some(other) => Err(WireError::Property {
            name,
            reason: format!("expected an integer, found {}", kind(other)),
        }),
    }
}

/// What to send for an envelope: the basic properties (headers included) and the raw body.
///
/// The body is the envelope's body bytes ([`Envelope::body_bytes`]: base64-decoded when
/// `body_encoding` says so). `priority` is sent as written, clamped to `0..=255` (RabbitMQ caps
/// it to the queue's `x-max-priority`); `delivery_mode` is clamped to `1..=2`.
pub fn envelope_to_publish(env: &Envelope) -> Result<(BasicProperties, Vec<u8>), WireError> {
    let body = env.body_bytes()?;
    let p = &env.properties;
    let mut props = BasicProperties::default();
    if !env.content_type.is_empty() {
        props = props.with_content_type(short("content-type", &env.content_type)?);
    }
    if !env.content_encoding.is_empty() {
        props = props.with_content_encoding(short("content-encoding", &env.content_encoding)?);
    }
    props = props.with_headers(json_to_table(&env.headers)?);
    if let Some(mode) = prop_int(p, "delivery_mode", 2)? {
        props = props.with_delivery_mode(mode.max(1) as u8);
    }
    if let Some(priority) = prop_int(p, "priority", 255)? {
        props = props.with_priority(priority as u8);
    }
    if let Some(v) = prop_text(p, "correlation_id")? {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = prop_text(p, "reply_to")? {
        props = props.with_reply_to(v);
    }
    if let Some(v) = prop_text(p, "expiration")? {
        props = props.with_expiration(v);
    }
    if let Some(v) = prop_text(p, "message_id")? {
        props = props.with_message_id(v);
    }
    if let Some(v) = prop_int(p, "timestamp", u64::MAX)? {
        props = props.with_timestamp(v);
    }
    if let Some(v) = prop_text(p, "type")? {
        props = props.with_type(v);
    }
    if let Some(v) = prop_text(p, "user_id")? {
        props = props.with_user_id(v);
    }
    if let Some(v) = prop_text(p, "app_id")? {
        props = props.with_app_id(v);
    }
    if let Some(v) = prop_text(p, "cluster_id")? {
        props = props.with_cluster_id(v);
    }
    Ok((props, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_take_py_amqps_widths() {
        assert_eq!(
            json_to_value("k", &json!(30)).unwrap(),
            AMQPValue::LongInt(30)
        );
        assert_eq!(
            json_to_value("k", &json!(2147483648i64)).unwrap(),
            AMQPValue::LongLongInt(2147483648)
        );
        assert_eq!(
            json_to_value("k", &json!(-2147483648i64)).unwrap(),
            AMQPValue::LongLongInt(-2147483648)
        );
        assert_eq!(
            json_to_value("k", &json!(1.5)).unwrap(),
            AMQPValue::Double(1.5)
        );
        assert_eq!(json_to_value("k", &json!(null)).unwrap(), AMQPValue::Void);
        let huge: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert!(matches!(
            json_to_value("big", &huge),
            Err(WireError::IntegerRange { field, .. }) if field == "big"
        ));
        assert!(matches!(
            json_to_value("k", &json!(u64::MAX)),
            Err(WireError::IntegerRange { .. })
        ));
    }

    #[test]
    fn other_amqp_types_read_as_json() {
        let d =
            |scale, value| value_to_json(&AMQPValue::DecimalValue(DecimalValue { scale, value }));
        assert_eq!(d(2, 12345).to_string(), "123.45");
        assert_eq!(d(3, 5).to_string(), "0.005");
        assert_eq!(d(0, 7).to_string(), "7");
        assert_eq!(
            value_to_json(&AMQPValue::Timestamp(1700000000)),
            json!(1700000000)
        );
        assert_eq!(value_to_json(&AMQPValue::ShortShortUInt(9)), json!(9));
        assert_eq!(value_to_json(&AMQPValue::Float(0.5)), json!(0.5));
        assert_eq!(value_to_json(&AMQPValue::Double(f64::NAN)), Value::Null);
        assert_eq!(
            value_to_json(&AMQPValue::ByteArray(b"ab".to_vec().into())),
            json!("ab")
        );
        assert_eq!(
            value_to_json(&AMQPValue::LongString(LongString::from(&b"\xffok"[..]))),
            json!("\u{fffd}ok")
        );
        assert_eq!(
            value_to_json(&AMQPValue::ShortString(ShortString::from("s"))),
            json!("s")
        );
    }

    #[test]
    fn long_keys_and_bad_properties_are_errors_not_panics() {
        let mut headers = Map::new();
        headers.insert("k".repeat(256), json!(1));
        assert!(matches!(
            json_to_table(&headers),
            Err(WireError::TooLong { len: 256, .. })
        ));
        let env = Envelope {
            body: String::new(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers: Map::new(),
            properties: json!({"correlation_id": 5})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            extra: Map::new(),
        };
        assert!(matches!(
            envelope_to_publish(&env),
            Err(WireError::Property {
                name: "correlation_id",
                ..
            })
        ));
        let env = Envelope {
            properties: json!({"reply_to": "r".repeat(300)})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..env
        };
        assert!(matches!(
            envelope_to_publish(&env),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn raw_bodies_and_base64_bodies_publish_the_same_bytes() {
        let body = b"[[1], {}, {}]";
        let info = DeliveryInfo {
            routing_key: "celery".into(),
            delivery_tag: 7,
            ..DeliveryInfo::default()
        };
        let props = BasicProperties::default().with_content_type("application/json".into());
        let env = delivery_to_envelope(&props, body, &info);
        assert_eq!(env.body_bytes().unwrap(), body);
        assert_eq!(env.delivery_tag(), Some("7"));
        assert_eq!(env.routing_key(), "celery");
        let (_, sent) = envelope_to_publish(&env).unwrap();
        assert_eq!(sent, body);
        let plain = Envelope {
            body: "plain text".into(),
            properties: Map::new(),
            ..env
        };
        assert_eq!(envelope_to_publish(&plain).unwrap().1, b"plain text");
    }
}
