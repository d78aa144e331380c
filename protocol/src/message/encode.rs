//! Writing task messages: protocol v2 headers in Celery's order, the body, Kombu's envelope.

use serde_json::{Map, Value};

use super::{Embed, TaskMessage};
use crate::envelope::{self, Envelope};
use crate::error::EncodeError;

impl Embed {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::v2_headers;
    use super::*;
    use crate::compression::Compression;
    use serde_json::json;

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
}
