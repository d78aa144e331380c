//! Every golden vector captured from real Celery 5.7 decodes, and what we re-encode from it is
//! the same message. The vectors are copied from `../shared/celery-wire/vectors/` into
//! `tests/vectors/` so that a fresh clone is self-contained; `copies_match_the_shared_reference`
//! checks the copies whenever the shared reference sits beside the checkout.

use std::path::{Path, PathBuf};

use celeriac_protocol::envelope::{self, Envelope};
use celeriac_protocol::result::{PyException, ResultRecord, State};
use celeriac_protocol::{ContentType, DecodeError, Protocol, TaskMessage};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(vectors_dir().join(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn send_vectors() -> Vec<(String, Value)> {
    let mut out: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("vectors dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("send_") && n.ends_with(".json"))
        .map(|n| {
            let v = load(&n);
            (n, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_send_vector_decodes_and_re_encodes_to_the_same_message() {
    let vectors = send_vectors();
    assert_eq!(vectors.len(), 29, "the reference has 29 send_* captures");
    let mut messages = 0;
    for (name, vector) in &vectors {
        let list = vector["messages"].as_array().expect("messages");
        assert!(!list.is_empty(), "{name} holds no message");
        for m in list {
            let raw = m["raw_list_entry"].as_str().expect("raw entry");
            let env = Envelope::from_json(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            let msg = TaskMessage::from_envelope(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
            messages += 1;

            // The decoded body matches what Python decoded (msgpack captures hold a repr).
            if msg.content_type == ContentType::Json {
                let decoded = &m["decoded_body"];
                match msg.protocol {
                    Protocol::V2 => {
                        assert_eq!(Value::Array(msg.args.clone()), decoded[0], "{name}: args");
                        assert_eq!(
                            Value::Object(msg.kwargs.clone()),
                            decoded[1],
                            "{name}: kwargs"
                        );
                        assert_eq!(msg.embed.chain, decoded[2]["chain"], "{name}: chain");
                        assert_eq!(msg.embed.chord, decoded[2]["chord"], "{name}: chord");
                        assert_eq!(
                            msg.embed.callbacks, decoded[2]["callbacks"],
                            "{name}: links"
                        );
                    }
                    Protocol::V1 => {
                        assert_eq!(Value::Array(msg.args.clone()), decoded["args"], "{name}");
                        assert_eq!(
                            Value::String(msg.headers.task.clone()),
                            decoded["task"],
                            "{name}"
                        );
                    }
                }
            } else {
                assert_eq!(
                    msg.args,
                    vec![Value::from(1), Value::from("x")],
                    "{name}: msgpack args"
                );
            }

            if msg.protocol == Protocol::V2 {
                assert_eq!(
                    msg.headers.task,
                    env.headers["task"].as_str().unwrap_or_default()
                );
                // Headers re-encode to the same map, in the same order.
                let again = msg.header_map();
                assert_eq!(
                    Value::Object(again.clone()),
                    Value::Object(env.headers.clone()),
                    "{name}: headers"
                );
                assert!(again.keys().eq(env.headers.keys()), "{name}: header order");
            }
            assert_eq!(msg.properties.priority, env.priority(), "{name}: priority");
            assert_eq!(
                msg.properties.routing_key,
                env.routing_key(),
                "{name}: routing key"
            );

            // A full re-encode (always protocol v2) decodes back to the same task.
            let tag = msg.properties.delivery_tag.clone().unwrap_or_default();
            let back = TaskMessage::from_envelope(&msg.to_envelope(&tag).expect("encode"))
                .expect("decode again");
            assert_eq!(back.headers.task, msg.headers.task, "{name}");
            assert_eq!(back.headers.id, msg.headers.id, "{name}");
            assert_eq!(back.headers.eta, msg.headers.eta, "{name}");
            assert_eq!(back.headers.expires, msg.headers.expires, "{name}");
            assert_eq!(back.args, msg.args, "{name}");
            assert_eq!(back.kwargs, msg.kwargs, "{name}");
            assert_eq!(back.embed, msg.embed, "{name}");
            assert_eq!(back.properties.priority, msg.properties.priority, "{name}");
            assert_eq!(back.compression, msg.compression, "{name}");
            assert_eq!(back.content_type, msg.content_type, "{name}");
        }
    }
    assert_eq!(messages, 33, "the 29 captures hold 33 messages");
}

#[test]
fn specific_vectors_carry_what_celery_sent() {
    let first = |name: &str| {
        let v = load(name);
        let raw = v["messages"][0]["raw_list_entry"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        TaskMessage::from_envelope(&Envelope::from_json(&raw).expect("envelope")).expect("message")
    };
    let naive = first("send_eta_naive.json");
    assert_eq!(naive.headers.eta.as_deref(), Some("2030-01-02T03:04:05"));
    let zlib = first("send_compression_zlib.json");
    assert_eq!(zlib.compression, Some(celeriac_protocol::Compression::Zlib));
    assert_eq!(zlib.args, vec![Value::from(1), Value::from(1)]);
    let v1 = first("send_protocol_v1.json");
    assert_eq!(v1.protocol, Protocol::V1);
    assert_eq!(v1.kwargs["z"], Value::from(1));
    assert!(v1.headers.eta.is_some() && v1.headers.expires.is_some());
    let custom = first("send_custom_headers.json");
    assert!(!custom.headers.extra.is_empty(), "custom headers are kept");
    let limits = first("send_time_limits.json");
    assert!(limits.headers.timelimit.iter().all(Option::is_some));
    let msgpack = first("send_serializer_msgpack.json");
    assert_eq!(msgpack.content_type, ContentType::Msgpack);
    for (file, key) in [
        ("send_priority_9.json", "celery\u{6}\u{16}9"),
        ("send_priority_5.json", "celery\u{6}\u{16}3"),
    ] {
        let v = load(file);
        assert_eq!(v["messages"][0]["redis_key"], Value::from(key), "{file}");
        let m = first(file);
        assert_eq!(
            celeriac_protocol::kombu::queue_key("celery", m.properties.priority),
            key,
            "{file}"
        );
    }
}

#[test]
fn result_records_decode_and_re_encode_in_celerys_layout() {
    let v = load("result_backend_redis_entries.json");
    let mut seen = 0;
    for (name, entry) in v["entries"].as_object().expect("entries") {
        let Some(raw) = entry.get("raw").and_then(Value::as_str) else {
            continue;
        };
        if !entry["key"]
            .as_str()
            .unwrap_or_default()
            .starts_with("celery-task-meta-")
        {
            continue;
        }
        let rec = ResultRecord::from_json(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let original: Value = serde_json::from_str(raw).expect("json");
        let again = rec.to_value();
        assert_eq!(again, original, "{name}");
        assert!(
            again
                .as_object()
                .map(|o| o
                    .keys()
                    .eq(original.as_object().map(|m| m.keys()).into_iter().flatten()))
                .unwrap_or(false),
            "{name}: key order"
        );
        if matches!(rec.status, State::Failure | State::Revoked) {
            let exc = PyException::from_value(&rec.result).expect("exception");
            assert_eq!(exc.to_value(), rec.result, "{name}");
        }
        seen += 1;
    }
    assert!(seen >= 10, "{seen}");
}

#[test]
fn unacked_and_restore_captures_match_our_encoding() {
    let v = load("redis_unacked_while_task_runs.json");
    for (tag, entry) in v["snapshot"]["unacked"]["value"].as_object().expect("hash") {
        let (env, ex, rk) =
            envelope::parse_unacked_entry(entry.as_str().unwrap_or_default()).expect("entry");
        assert_eq!(env.delivery_tag(), Some(tag.as_str()));
        assert_eq!((ex.as_str(), rk.as_str()), ("", "celery"));
        // Our entry built from the same envelope text parses to the same triple.
        let ours = envelope::unacked_entry(&env.to_json(), &ex, &rk);
        let a: Value = serde_json::from_str(&ours).expect("ours");
        let b: Value = serde_json::from_str(entry.as_str().unwrap_or_default()).expect("theirs");
        assert_eq!(a, b);
    }

    let restore = load("redis_visibility_timeout_restore.json");
    let rpush = restore["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .find(|c| c["cmd"][0] == "RPUSH")
        .expect("an RPUSH");
    let restored =
        Envelope::from_json(rpush["cmd"][2].as_str().unwrap_or_default()).expect("envelope");
    assert!(restored.redelivered());
    // Take the flags off, put them back our way: the same JSON, key order included.
    let mut original = restored.clone();
    original.headers.remove("redelivered");
    if let Some(Value::Object(info)) = original.properties.get_mut("delivery_info") {
        info.remove("redelivered");
    }
    original.mark_redelivered();
    assert_eq!(original.to_value(), restored.to_value());
    assert!(original.headers.keys().eq(restored.headers.keys()));
}

#[test]
fn follow_ups_published_by_a_python_worker_decode() {
    let v = load("worker_published_followups.json");
    let mut n = 0;
    for (_name, list) in v["messages"].as_object().expect("messages") {
        for m in list.as_array().expect("list") {
            let headers = m["headers"].as_object().cloned().unwrap_or_default();
            let props = m["properties"].as_object().cloned().unwrap_or_default();
            let body = serde_json::to_vec(&m["decoded_body"]).expect("body");
            let msg =
                TaskMessage::decode(&headers, &props, "application/json", &body).expect("decode");
            assert_eq!(msg.headers.ignore_result, Some(false));
            assert!(msg.headers.parent_id.is_some());
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn decode_errors_name_the_problem() {
    let v = load("send_plain_args.json");
    let raw = v["messages"][0]["raw_list_entry"]
        .as_str()
        .unwrap_or_default();
    let mut env = Envelope::from_json(raw).expect("envelope");
    env.content_type = "application/x-python-serialize".into();
    assert!(matches!(
        TaskMessage::from_envelope(&env),
        Err(DecodeError::Pickle(_))
    ));
    env.content_type = "application/json".into();
    env.body = "%%%".into();
    assert!(matches!(
        TaskMessage::from_envelope(&env),
        Err(DecodeError::Base64(_))
    ));
    env.body = envelope::base64_encode(b"{not json");
    assert!(matches!(
        TaskMessage::from_envelope(&env),
        Err(DecodeError::Body { .. })
    ));
    env.body = envelope::base64_encode(b"[[], {}, {}]");
    env.headers
        .insert("compression".into(), Value::from("application/x-lz4"));
    assert!(matches!(
        TaskMessage::from_envelope(&env),
        Err(DecodeError::Compression(_))
    ));
}

#[test]
fn copies_match_the_shared_reference() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/celery-wire/vectors");
    if !shared.is_dir() {
        eprintln!(
            "no shared reference beside this checkout ({}); the copies are the reference",
            shared.display()
        );
        return;
    }
    for entry in std::fs::read_dir(&shared)
        .expect("shared dir")
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let ours = std::fs::read(vectors_dir().join(&name))
            .unwrap_or_else(|_| panic!("{name} is not copied"));
        let theirs = std::fs::read(entry.path()).expect("shared vector");
        assert!(ours == theirs, "{name} differs from the shared reference");
    }
}

/// Every Kombu envelope anywhere in the vectors (queue entries, unacked entries, MONITOR
/// arguments, pub/sub payloads of events and remote control, beat's messages, full dumps)
/// parses, its body decodes, and every task message among them decodes as one.
#[test]
fn every_envelope_in_every_vector_decodes() {
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::String(s) if s.starts_with("{\"body\"") || s.starts_with("[{\"body\"") => {
                found.push(s.clone())
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            Value::Object(map) => map.values().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    let (mut envelopes, mut tasks) = (0, 0);
    let mut names: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("vectors")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let mut found = Vec::new();
        walk(&load(&name), &mut found);
        for text in found {
            let env = if text.starts_with('[') {
                envelope::parse_unacked_entry(&text).map(|(env, _, _)| env)
            } else {
                Envelope::from_json(&text)
            };
            // MONITOR captures are cut at 200 characters in a few places: skip what is cut.
            let Ok(env) = env else {
                assert!(
                    serde_json::from_str::<Value>(&text).is_err(),
                    "{name}: a whole envelope failed to parse"
                );
                continue;
            };
            envelopes += 1;
            let body = env.body_bytes().unwrap_or_else(|e| panic!("{name}: {e}"));
            let is_task = env.headers.contains_key("task")
                || serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|b| b.get("task").is_some() && b.get("args").is_some());
            if is_task {
                TaskMessage::from_envelope(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
                tasks += 1;
            } else {
                let ct =
                    ContentType::parse(&env.content_type).unwrap_or_else(|e| panic!("{name}: {e}"));
                ct.decode(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    assert!(
        envelopes > 100 && tasks > 50,
        "{envelopes} envelopes, {tasks} task messages"
    );
    eprintln!("{envelopes} envelopes decoded, {tasks} of them task messages");
}
