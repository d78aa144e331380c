//! Sending Celery tasks from a handler, as `app.send_task` does inside a Python task: protocol
//! v2 with Celery's headers, the running task as `parent_id` and its `root_id`, an aware `eta`
//! for a countdown, and `link` signatures in the body, so that a Python worker runs the task and
//! its callbacks.
//!
//! ```no_run
//! # use celeriac_worker::{TaskContext, TaskError, sender::Signature};
//! # use std::time::Duration;
//! async fn resize(ctx: TaskContext, _args: ()) -> Result<String, TaskError> {
//!     let id = ctx
//!         .send_task("media.tasks.notify")
//!         .args(vec![42.into()])
//!         .queue("default")
//!         .countdown(Duration::from_secs(5))
//!         .link(Signature::new("media.tasks.log"))
//!         .send()
//!         .await?;
//!     Ok(id)
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::time::isoformat;
use celeriac_protocol::{Broker, BrokerError, EncodeError, TaskMessage, kombu};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::task_error::{PyError, TaskError};

/// A task could not be sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message could not be encoded.
    #[error("cannot encode the message: {0}")]
    Encode(#[from] EncodeError),
    /// The broker did not take it.
    #[error("cannot publish the message: {0}")]
    Broker(#[from] BrokerError),
}

impl From<SendError> for TaskError {
    /// Stored as Kombu's `OperationalError`, as a Python task whose publish fails.
    fn from(e: SendError) -> Self {
        TaskError::Failed(PyError::new(
            "kombu.exceptions",
            "OperationalError",
            e.to_string(),
        ))
    }
}

/// A task signature, as Celery writes one into `link` (`signature("tasks.echo", args=...)`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Signature {
    task: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: Map<String, Value>,
    immutable: bool,
}

impl Signature {
    /// A signature of `task` with no arguments (the parent's result comes first when it runs
    /// as a link, unless it is [`immutable`](Self::immutable)).
    pub fn new(task: &str) -> Self {
        Self {
            task: task.into(),
            ..Self::default()
        }
    }

    /// Positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// An option of `apply_async` (`queue`, `task_id`, `countdown`, …).
    pub fn option(mut self, name: &str, value: Value) -> Self {
        self.options.insert(name.into(), value);
        self
    }

    /// Celery's `.si()`: the parent's result is not passed.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// The dict Celery sends: `task`, `args`, `kwargs`, `options`, `subtask_type`, `immutable`.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("task".into(), Value::String(self.task.clone()));
        m.insert("args".into(), Value::Array(self.args.clone()));
        m.insert("kwargs".into(), Value::Object(self.kwargs.clone()));
        m.insert("options".into(), Value::Object(self.options.clone()));
        m.insert("subtask_type".into(), Value::Null);
        m.insert("immutable".into(), Value::Bool(self.immutable));
        Value::Object(m)
    }
}

/// What every message this worker sends has in common.
#[derive(Debug)]
pub(crate) struct TaskSender {
    broker: Arc<dyn Broker>,
    origin: String,
    reply_to: String,
    timezone: Tz,
    default_queue: String,
}

impl TaskSender {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        origin: String,
        timezone: Tz,
        default_queue: String,
    ) -> Self {
        Self {
            broker,
            origin,
            reply_to: uuid::Uuid::new_v4().to_string(),
            timezone,
            default_queue,
        }
    }
}

/// A task about to be sent; [`send`](Self::send) publishes it.
#[derive(Debug)]
#[must_use = "nothing is sent until .send().await"]
pub struct SendTask {
    sender: Arc<TaskSender>,
    task: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    queue: Option<String>,
    eta: Option<DateTime<Utc>>,
    countdown: Option<Duration>,
    priority: Option<u8>,
    links: Vec<Signature>,
    parent: Option<(String, String)>,
}

impl SendTask {
    pub(crate) fn new(
        sender: Arc<TaskSender>,
        task: &str,
        parent: Option<(String, String)>,
    ) -> Self {
        Self {
            sender,
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            queue: None,
            eta: None,
            countdown: None,
            priority: None,
            links: Vec::new(),
            parent,
        }
    }

    /// Positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// The queue (default: `CELERY_TASK_DEFAULT_QUEUE`, or `celery`).
    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Run no earlier than this long after the send.
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.countdown = Some(countdown);
        self
    }

    /// Run no earlier than this instant.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Message priority (on Redis, 0 is served first; Kombu keeps steps 0, 3, 6, 9).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// A callback run with the result when the task succeeds (Celery's `link`).
    pub fn link(mut self, signature: Signature) -> Self {
        self.links.push(signature);
        self
    }

    /// The message, as of `now`, with task id `id`.
    fn message(&self, id: &str, now: DateTime<Utc>) -> TaskMessage {
        let s = &self.sender;
        let queue = self.queue.as_deref().unwrap_or(&s.default_queue);
        let mut m = TaskMessage::new(
            &self.task,
            id,
            self.args.clone(),
            self.kwargs.clone(),
            queue,
        );
        if let Some((parent, root)) = &self.parent {
            m.headers.parent_id = Some(parent.clone());
            m.headers.root_id = Some(root.clone());
        }
        m.headers.origin = Some(s.origin.clone());
        if self.args.is_empty() {
            m.headers.argsrepr = Some("()".into());
        }
        let eta = self.eta.or_else(|| {
            self.countdown
                .and_then(|c| TimeDelta::from_std(c).ok())
                .map(|c| now + c)
        });
        m.headers.eta = eta.map(|t| isoformat(t, s.timezone));
        m.properties.reply_to = Some(s.reply_to.clone());
        m.properties.priority = kombu::clamp_priority(self.priority.map_or(0, i64::from));
        if !self.links.is_empty() {
            m.embed.callbacks = Value::Array(self.links.iter().map(Signature::to_value).collect());
        }
        m
    }

    /// Publishes the task; returns its id.
    pub async fn send(self) -> Result<String, SendError> {
        let id = uuid::Uuid::new_v4().to_string();
        let message = self.message(&id, Utc::now());
        let envelope = message.to_envelope(&uuid::Uuid::new_v4().to_string())?;
        let queue = message.properties.routing_key.clone();
        self.sender
            .broker
            .publish_declared(&queue, &envelope)
            .await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_dict_celery_sends_as_a_link() {
        // send_link_and_link_error.json: link=signature('tasks.echo', args=('cb',)).
        let sig = Signature::new("tasks.echo").args(vec![Value::String("cb".into())]);
        assert_eq!(
            sig.to_value().to_string(),
            r#"{"task":"tasks.echo","args":["cb"],"kwargs":{},"options":{},"subtask_type":null,"immutable":false}"#
        );
        let sig = Signature::new("t").option("queue", "q".into()).immutable();
        assert_eq!(sig.to_value()["options"]["queue"], "q");
        assert_eq!(sig.to_value()["immutable"], true);
    }
}
