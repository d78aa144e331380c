//! The message beat sends for a tick: what Python beat's `send_task` produces, built with the
//! protocol crate's encoder (protocol v2, JSON).

use celeriac_protocol::kombu;
use celeriac_protocol::time::{isoformat, isoformat_fixed};
use celeriac_protocol::{EncodeError, Envelope, TaskMessage};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::entry::{Entry, Expires};

/// What is the same for every message a beat process sends.
#[derive(Debug, Clone)]
pub struct Sender {
    /// `gen<pid>@<host>`, Celery's `origin`.
    pub origin: String,
    /// The process's reply address (Celery's app `oid`): one UUID for the process's life.
    pub reply_to: String,
    /// App time zone: `expires` is written in it.
    pub timezone: Tz,
    /// Queue of entries that name none (Celery's `task_default_queue`).
    pub default_queue: String,
}

impl Sender {
    /// A sender for this process.
    pub fn new(timezone: Tz, default_queue: String) -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Self {
            origin: format!("gen{}@{host}", std::process::id()),
            reply_to: uuid::Uuid::new_v4().to_string(),
            timezone,
            default_queue,
        }
    }

    /// The queue whose list an entry's messages go to (before any exchange lookup).
    pub fn queue_of<'a>(&'a self, entry: &'a Entry) -> &'a str {
        entry
            .options
            .queue
            .as_deref()
            .or(entry
                .options
                .routing_key
                .as_deref()
                .filter(|_| entry.options.exchange.is_none()))
            .unwrap_or(&self.default_queue)
    }

    /// The task message for one send of `entry` at `now`, with a fresh task id.
    pub fn message(&self, entry: &Entry, now: DateTime<Utc>) -> TaskMessage {
        let id = uuid::Uuid::new_v4().to_string();
        let queue = self.queue_of(entry);
        let mut m = TaskMessage::new(
            &entry.task,
            &id,
            entry.args.clone(),
            entry.kwargs.clone(),
            queue,
        );
        let opts = &entry.options;
        m.headers.origin = Some(self.origin.clone());
        // Python beat, which has no task registered, goes through send_task: ignore_result
        // stays null, and empty args are the tuple `()`.
        m.headers.ignore_result = None;
        if entry.args.is_empty() {
            m.headers.argsrepr = Some("()".into());
        }
        if let Some(expires) = opts.expires {
            // A number of seconds is written in the app time zone, an instant as it was given.
            let (at, text) = match expires {
                Expires::After(d) => (now + d, isoformat(now + d, self.timezone)),
                Expires::At(at) => (at.with_timezone(&Utc), isoformat_fixed(at)),
            };
            m.headers.expires = Some(text);
            let ms = (at - now).num_milliseconds().max(0);
            m.properties.expiration = Some(ms.to_string());
        }
        for (k, v) in &opts.headers {
            m.headers.extra.insert(k.clone(), v.clone());
        }
        m.headers
            .extra
            .insert("celery_beat_task".into(), Value::Bool(true));
        m.properties.reply_to = Some(self.reply_to.clone());
        m.properties.priority = kombu::clamp_priority(opts.priority.map_or(0, i64::from));
        if let (Some(exchange), Some(rk)) = (&opts.exchange, &opts.routing_key) {
            m.properties.exchange = exchange.clone();
            m.properties.routing_key = rk.clone();
        }
        m
    }

    /// The Kombu envelope of [`message`](Self::message), with a fresh delivery tag.
    pub fn envelope(&self, entry: &Entry, now: DateTime<Utc>) -> Result<Envelope, EncodeError> {
        self.message(entry, now)
            .to_envelope(&uuid::Uuid::new_v4().to_string())
    }
}
