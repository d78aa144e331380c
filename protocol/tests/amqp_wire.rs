//! The AMQP mapping against what Celery 5.7 really sent to RabbitMQ
//! (`vectors/amqp_rabbitmq_messages.json`, captured with py-amqp's `basic_get`), and a property
//! test that JSON header values survive a trip through an AMQP field table.
#![cfg(feature = "amqp")]

use std::path::Path;

use celeriac_protocol::amqp::wire::{
    self, DeliveryInfo, json_to_table, table_to_json, value_to_json,
};
use celeriac_protocol::{Envelope, TaskMessage};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn capture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/amqp_rabbitmq_messages.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector")).expect("JSON")
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// The basic properties of a captured message, rebuilt as Celery sent them: py-amqp encodes
/// header values with the same type rules as `json_to_table`.
fn captured_properties(p: &Map<String, Value>) -> BasicProperties {
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(|s| s.into());
    let mut props = BasicProperties::default()
        .with_headers(json_to_table(&obj(&p["application_headers"])).expect("table"));
    if let Some(v) = text("content_type") {
        props = props.with_content_type(v);
    }
    if let Some(v) = text("content_encoding") {
        props = props.with_content_encoding(v);
    }
    if let Some(v) = text("correlation_id") {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = text("reply_to") {
        props = props.with_reply_to(v);
    }
    if let Some(v) = text("expiration") {
        props = props.with_expiration(v);
    }
    if let Some(v) = p.get("delivery_mode").and_then(Value::as_u64) {
        props = props.with_delivery_mode(v as u8);
    }
    if let Some(v) = p.get("priority").and_then(Value::as_u64) {
        props = props.with_priority(v as u8);
    }
    props
}

/// The basic properties as py-amqp reported them: `{name: value}` with headers as JSON.
fn as_captured(props: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<lapin::types::ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.as_str().into()));
        }
    };
    text("content_type", props.content_type());
    text("content_encoding", props.content_encoding());
    text("correlation_id", props.correlation_id());
    text("reply_to", props.reply_to());
    text("expiration", props.expiration());
    if let Some(h) = props.headers() {
        m.insert(
            "application_headers".into(),
            Value::Object(table_to_json(h)),
        );
    }
    if let Some(v) = props.delivery_mode() {
        m.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = props.priority() {
        m.insert("priority".into(), json!(v));
    }
    m
}

fn delivery_info(d: &Value) -> DeliveryInfo {
    DeliveryInfo {
        exchange: d["exchange"].as_str().unwrap_or_default().into(),
        routing_key: d["routing_key"].as_str().unwrap_or_default().into(),
        redelivered: d["redelivered"].as_bool().unwrap_or_default(),
        delivery_tag: d["delivery_tag"].as_u64().unwrap_or_default(),
        consumer_tag: String::new(),
    }
}

#[test]
fn every_captured_delivery_decodes_into_a_task_message() {
    let cap = capture();
    let messages = cap["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 4);
    for m in messages {
        let props = captured_properties(&obj(&m["properties"]));
        let body = m["body"].as_str().expect("body").as_bytes();
        let info = delivery_info(&m["delivery_info"]);
        let env = wire::delivery_to_envelope(&props, body, &info);
        // Through the envelope, as a Redis message would be decoded...
        let again = Envelope::from_json(&env.to_json()).expect("envelope");
        let task = TaskMessage::from_envelope(&again).expect("decodes");
        // ...and straight from the raw body: the same message.
        let headers = wire::headers_map(&props);
        let raw = TaskMessage::decode(
            &headers,
            &wire::properties_map(&props, &info),
            "application/json",
            body,
        )
        .expect("decodes raw");
        assert_eq!(task, raw);
        let h = &m["properties"]["application_headers"];
        assert_eq!(task.headers.task, "tasks.add");
        assert_eq!(task.headers.id, h["id"].as_str().expect("id"));
        assert_eq!(task.headers.eta.as_deref(), h["eta"].as_str());
        assert_eq!(task.headers.expires.as_deref(), h["expires"].as_str());
        assert_eq!(task.headers.timelimit, [None, None]);
        assert_eq!(task.headers.argsrepr.as_deref(), h["argsrepr"].as_str());
        assert_eq!(
            task.properties.correlation_id.as_deref(),
            m["properties"]["correlation_id"].as_str()
        );
        assert_eq!(
            task.properties.routing_key,
            m["queue"].as_str().expect("queue")
        );
        assert_eq!(task.properties.exchange, "");
        assert_eq!(
            u64::from(task.properties.priority),
            m["properties"]["priority"]
                .as_u64()
                .expect("priority")
                .min(9)
        );
        assert_eq!(
            task.properties.delivery_tag,
            Some(info.delivery_tag.to_string())
        );
        let expected_args: Vec<Value> =
            serde_json::from_str::<Value>(m["body"].as_str().expect("body")).expect("body JSON")[0]
                .as_array()
                .cloned()
                .expect("args");
        assert_eq!(task.args, expected_args);
        assert!(task.kwargs.is_empty());
        if h.get("x-tenant").is_some() {
            assert_eq!(task.headers.extra["x-tenant"], "acme");
        }
    }
}

#[test]
fn re_encoding_a_captured_message_gives_the_captured_properties() {
    let cap = capture();
    for m in cap["messages"].as_array().expect("messages") {
        let captured = obj(&m["properties"]);
        let props = captured_properties(&captured);
        let info = delivery_info(&m["delivery_info"]);
        let body = m["body"].as_str().expect("body").as_bytes();
        let task = TaskMessage::from_envelope(&wire::delivery_to_envelope(&props, body, &info))
            .expect("decodes");
        let env = task.to_envelope("any-tag").expect("encodes");
        let (sent, sent_body) = wire::envelope_to_publish(&env).expect("publishable");
        assert_eq!(
            Value::Object(as_captured(&sent)),
            Value::Object(captured.clone())
        );
        // The same JSON (our encoder writes it without Python's spaces).
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("JSON body");
        assert_eq!(json(&sent_body), json(body));
    }
}

#[test]
fn a_fresh_message_has_the_shape_celery_sends() {
    let cap = capture();
    // The plain `send_task('tasks.add', args=[2, 3])` capture (no eta, no expires).
    let plain = cap["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["properties"]["application_headers"]["argsrepr"] == "[2, 3]")
        .expect("plain capture");
    let mut ours = TaskMessage::new(
        "tasks.add",
        "id-1",
        vec![json!(2), json!(3)],
        Map::new(),
        "celery",
    );
    ours.headers.origin = Some("gen1@host".into());
    ours.properties.reply_to = Some("reply-1".into());
    let (props, body) =
        wire::envelope_to_publish(&ours.to_envelope("t").expect("env")).expect("wire");
    let ours = as_captured(&props);
    let theirs = obj(&plain["properties"]);
    assert!(
        ours.keys().eq(theirs.keys()) || {
            let mut a: Vec<_> = ours.keys().collect();
            let mut b: Vec<_> = theirs.keys().collect();
            a.sort();
            b.sort();
            a == b
        }
    );
    let (oh, th) = (
        ours["application_headers"].as_object().expect("headers"),
        theirs["application_headers"].as_object().expect("headers"),
    );
    let mut ok: Vec<_> = oh.keys().collect();
    let mut tk: Vec<_> = th.keys().collect();
    ok.sort();
    tk.sort();
    assert_eq!(ok, tk, "same header keys");
    for (k, v) in th {
        if ["id", "root_id", "origin"].contains(&k.as_str()) {
            continue;
        }
        assert_eq!(&oh[k], v, "header {k}");
    }
    for k in [
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
    ] {
        assert_eq!(ours[k], theirs[k], "property {k}");
    }
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("JSON body");
    assert_eq!(
        json(&body),
        json(plain["body"].as_str().expect("body").as_bytes())
    );
    // The same AMQP types py-amqp wrote: retries and nesting as 32-bit ints, nulls as void.
    let h = props.headers().as_ref().expect("headers");
    assert_eq!(h.inner().get("retries"), Some(&AMQPValue::LongInt(0)));
    assert_eq!(h.inner().get("eta"), Some(&AMQPValue::Void));
    assert!(
        matches!(h.inner().get("timelimit"), Some(AMQPValue::FieldArray(a)) if a.as_slice() == [AMQPValue::Void, AMQPValue::Void])
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1e12f64..1e12f64).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_\\-]{1,20}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn json_headers_survive_a_field_table(headers in prop::collection::btree_map("[a-zA-Z_\\-]{1,30}", json_value(), 0..10)) {
        let map: Map<String, Value> = headers.into_iter().collect();
        let table = json_to_table(&map).expect("encodable");
        prop_assert_eq!(Value::Object(table_to_json(&table)), Value::Object(map));
    }

    #[test]
    fn any_field_value_reads_as_json(n in any::<i64>(), f in any::<f32>(), b in any::<u8>()) {
        for v in [AMQPValue::LongLongInt(n), AMQPValue::Float(f), AMQPValue::ShortShortUInt(b), AMQPValue::Timestamp(n.unsigned_abs())] {
            let _ = value_to_json(&v).to_string();
        }
    }
}

#[test]
fn celery_headers_round_trip_exactly() {
    let cap = capture();
    for m in cap["messages"].as_array().expect("messages") {
        let h = obj(&m["properties"]["application_headers"]);
        let t = json_to_table(&h).expect("table");
        assert_eq!(Value::Object(table_to_json(&t)), Value::Object(h));
    }
    let limits =
        json!({"timelimit": [30, 20.5], "stamps": {"a": [1, null]}, "ignore_result": false});
    let t = json_to_table(&obj(&limits)).expect("table");
    assert_eq!(Value::Object(table_to_json(&t)), limits);
}
