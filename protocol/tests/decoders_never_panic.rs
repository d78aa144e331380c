//! Property tests: the decoders return an error, never panic, on arbitrary bytes, on random
//! byte mutations of the golden vectors, and on vectors whose fields are swapped for random JSON.

use std::path::Path;
use std::sync::LazyLock;

use celeriac_protocol::envelope::{self, Envelope};
use celeriac_protocol::result::ResultRecord;
use celeriac_protocol::time::Timestamp;
use celeriac_protocol::{Compression, TaskMessage};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Every raw list entry of the send_* vectors.
static RAW_ENTRIES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("vectors")
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("send_") {
            continue;
        }
        let v: Value =
            serde_json::from_slice(&std::fs::read(entry.path()).expect("read")).expect("json");
        for m in v["messages"].as_array().into_iter().flatten() {
            if let Some(raw) = m["raw_list_entry"].as_str() {
                out.push(raw.to_owned());
            }
        }
    }
    out.sort();
    out
});

/// Runs every decoder on one list element; only a panic can fail this.
fn decode_all(raw: &str) {
    if let Ok(env) = Envelope::from_json(raw) {
        let _ = env.delivery_tag();
        let _ = env.priority();
        let _ = env.body_bytes();
        let _ = TaskMessage::from_envelope(&env);
        let mut flagged = env.clone();
        flagged.mark_redelivered();
        let _ = Envelope::from_json(&flagged.to_json());
    }
    let _ = envelope::parse_unacked_entry(raw);
    let _ = ResultRecord::from_json(raw.as_bytes());
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,12}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match *m {
        Mutation::Flip(i, b) => {
            let i = i % bytes.len();
            bytes[i] ^= b.max(1);
        }
        Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
        Mutation::Delete(i) => {
            bytes.remove(i % bytes.len());
        }
        Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        decode_all(&text);
        for ct in ["application/json", "application/x-msgpack"] {
            let _ = TaskMessage::decode(&Map::new(), &Map::new(), ct, &bytes);
        }
        let _ = Compression::Zlib.decompress(&bytes);
        let _ = Compression::Bzip2.decompress(&bytes);
        let _ = Timestamp::parse(&text);
    }

    #[test]
    fn byte_mutations_of_the_vectors_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = pick.get(RAW_ENTRIES.as_slice()).as_bytes().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_all(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn body_mutations_of_the_vectors_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        // Mutate the decoded body bytes (the base64 text would mostly just fail to decode).
        let mut env = Envelope::from_json(pick.get(RAW_ENTRIES.as_slice()).as_str()).expect("vector");
        let mut body = env.body_bytes().expect("body");
        for m in &mutations {
            apply(&mut body, m);
        }
        env.body = envelope::base64_encode(&body);
        let _ = TaskMessage::from_envelope(&env);
    }

    #[test]
    fn field_swaps_in_the_vectors_never_panic(
        pick in any::<prop::sample::Index>(),
        part in 0usize..3,
        key in any::<prop::sample::Index>(),
        value in json_value(),
    ) {
        let mut v: Value = serde_json::from_str(pick.get(RAW_ENTRIES.as_slice()).as_str()).expect("vector");
        let target = match part {
            0 => v.get_mut("headers"),
            1 => v.get_mut("properties"),
            _ => Some(&mut v),
        };
        if let Some(Value::Object(map)) = target {
            let keys: Vec<String> = map.keys().cloned().collect();
            if !keys.is_empty() {
                map.insert(key.get(&keys).clone(), value);
            }
        }
        decode_all(&v.to_string());
    }

    #[test]
    fn random_bodies_of_the_right_envelope_never_panic(body in json_value(), msgpack in any::<bool>()) {
        let mut env = Envelope::from_json(&RAW_ENTRIES[0]).expect("vector");
        let ct = if msgpack { celeriac_protocol::ContentType::Msgpack } else { celeriac_protocol::ContentType::Json };
        env.content_type = ct.mime().into();
        env.body = envelope::base64_encode(&ct.encode(&body).expect("encode"));
        let _ = TaskMessage::from_envelope(&env);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(
        TaskMessage::decode(
            &Map::new(),
            &Map::new(),
            "application/json",
            deep.as_bytes()
        )
        .is_err()
    );
    // msgpack: 100k nested one-element arrays (0x91) around a nil.
    let mut mp = vec![0x91u8; 100_000];
    mp.push(0xc0);
    assert!(TaskMessage::decode(&Map::new(), &Map::new(), "application/x-msgpack", &mp).is_err());
    decode_all(&deep);
}
