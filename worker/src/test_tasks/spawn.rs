//! `celeriac.test.spawn`: sends a task from inside a task, to check that this worker can publish
//! (and that Python workers run what it sends, links included).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::sender::Signature;
use crate::task_error::{PyError, TaskError};

/// `spawn(task, args=(), kwargs={}, queue=None, countdown=None, priority=None, link=None,
/// link_args=(), link_id=None)`: sends `task` and returns its id. `link` names a callback task
/// (given `link_args` after the result, sent to the same queue), `link_id` its task id.
#[derive(Debug, Deserialize)]
pub(super) struct Spawn {
    task: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    countdown: Option<f64>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    link_args: Vec<Value>,
    #[serde(default)]
    link_id: Option<String>,
}

pub(super) async fn spawn(ctx: TaskContext, s: Spawn) -> Result<String, TaskError> {
    let mut send = ctx.send_task(&s.task).args(s.args).kwargs(s.kwargs);
    if let Some(q) = &s.queue {
        send = send.queue(q);
    }
    if let Some(c) = s.countdown {
        if !c.is_finite() || !(0.0..=1e9).contains(&c) {
            return Err(PyError::value_error(format!(
                "countdown {c} is not a usable number of seconds"
            ))
            .into());
        }
        send = send.countdown(Duration::from_secs_f64(c));
    }
    if let Some(p) = s.priority {
        send = send.priority(p);
    }
    if let Some(link) = &s.link {
        let mut sig = Signature::new(link).args(s.link_args);
        if let Some(id) = s.link_id {
            sig = sig.option("task_id", Value::String(id));
        }
        if let Some(q) = &s.queue {
            sig = sig.option("queue", Value::String(q.clone()));
        }
        send = send.link(sig);
    }
    Ok(send.send().await?)
}
