//! How a run ends, the way Celery ends it: the record to store (SUCCESS, FAILURE, RETRY,
//! REVOKED), the retry message to publish, a rejected message to requeue, and the ack.

use std::sync::Arc;
use std::time::Duration;

use celeriac_ops::logs::OUTCOME_TARGET;
use celeriac_protocol::message::{py_repr, py_tuple_repr};
use celeriac_protocol::result::{PyException, State, result_tuple};
use celeriac_protocol::time::{Timestamp, isoformat};
use celeriac_protocol::{Protocol, Requeue, TaskMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::backend::Entry;
use crate::job::Job;
use crate::registry::RegisteredTask;
use crate::retry::until_ok;
use crate::stats::{self, Finish};
use crate::task_error::{PyError, Retry, TaskError};
use crate::worker::Shared;

/// Celery's `Reject`: requeue behind the waiting messages, or fail with `Reject`.
pub(crate) async fn reject(
    shared: &Shared,
    job: &mut Job,
    msg: &TaskMessage,
    task: &Arc<RegisteredTask>,
    name: &str,
    e: TaskError,
) {
    let TaskError::Reject { reason, requeue } = e else {
        return;
    };
    warn!(
        target: OUTCOME_TARGET,
        task = task.name(), task_id = %msg.headers.id, queue = %job.queue, state = "REJECTED", requeue,
        "Task {name}[{}] reject requeue={}: {}",
        msg.headers.id,
        if requeue { "True" } else { "False" },
        reason.as_deref().unwrap_or("")
    );
    stats::finished(task.name(), &job.queue, Finish::Rejected, None);
    if requeue {
        let moved = until_ok(
            "requeueing a rejected message",
            shared.config.reconnect,
            &shared.abort,
            || {
                shared
                    .broker
                    .requeue(&job.tag, &job.raw, &job.queue, Requeue::Last)
            },
        )
        .await;
        if moved.is_some() {
            shared.inflight.remove(&job.tag);
        }
        return;
    }
    let exc = PyException::new(
        "celery.exceptions",
        "Reject",
        vec![
            reason.map_or(Value::Null, Value::String),
            Value::Bool(false),
        ],
    );
    let store = record(
        msg,
        Some(task),
        State::Failure,
        exc.to_value(),
        None,
        Vec::new(),
    );
    settle(shared, job, store);
}

pub(crate) fn fail(
    shared: &Shared,
    job: &mut Job,
    msg: &TaskMessage,
    task: &Arc<RegisteredTask>,
    name: &str,
    e: PyError,
    runtime: Duration,
) {
    let secs = runtime.as_secs_f64();
    error!(
        target: OUTCOME_TARGET,
        task = task.name(), task_id = %msg.headers.id, queue = %job.queue, state = "FAILURE", runtime = secs,
        exception = %e.exception.exc_type,
        "Task {name}[{}] raised unexpected: {e} (after {secs:.6}s)",
        msg.headers.id,
    );
    stats::finished(task.name(), &job.queue, Finish::Failed, Some(runtime));
    let traceback = e.traceback.clone().or_else(|| {
        (e.exception.exc_module != "billiard.exceptions")
            .then(|| traceback_text(shared, msg, &e.exception))
    });
    let store = record(
        msg,
        Some(task),
        State::Failure,
        e.exception.to_value(),
        traceback,
        Vec::new(),
    );
    settle(shared, job, store);
}

pub(crate) async fn retry(
    shared: &Shared,
    job: &mut Job,
    msg: &TaskMessage,
    task: &Arc<RegisteredTask>,
    name: &str,
    r: Retry,
    runtime: Duration,
) {
    let id = &msg.headers.id;
    let max = r.max_retries.unwrap_or(task.options().max_retries);
    if max.is_some_and(|max| msg.headers.retries >= max) {
        let exc = r.exc.map(|e| *e).unwrap_or_else(|| {
            PyError::celery(
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {}[{id}] args:{} kwargs:{}",
                    msg.headers.task,
                    py_tuple_repr(&msg.args),
                    py_repr(&Value::Object(msg.kwargs.clone()))
                ),
            )
        });
        fail(shared, job, msg, task, name, exc, runtime);
        return;
    }
    let now = Utc::now();
    let eta = r.eta.unwrap_or_else(|| {
        let delay = r.countdown.unwrap_or(task.options().default_retry_delay);
        now + chrono::Duration::from_std(delay).unwrap_or_default()
    });
    let when = r.countdown.map_or_else(
        || isoformat(eta, shared.config.timezone),
        |d| format!("{}s", seconds_text(d)),
    );
    let next = retry_message(shared, msg, &job.queue, eta, now);
    let envelope = match next.to_envelope(&uuid::Uuid::new_v4().to_string()) {
        Ok(env) => env,
        Err(e) => {
            fail(
                shared,
                job,
                msg,
                task,
                name,
                PyError::new("kombu.exceptions", "EncodeError", e.to_string()),
                runtime,
            );
            return;
        }
    };
    let published = until_ok(
        "publishing a retry",
        shared.config.reconnect,
        &shared.abort,
        || shared.broker.publish(&job.queue, &envelope),
    )
    .await;
    if published.is_none() {
        return; // shutting down: the original message is handed back instead
    }
    // Celery's `Retry.__str__`: "Retry in 5s", with ": <repr of exc>" when it carries one.
    let reason = r
        .exc
        .as_ref()
        .map_or_else(String::new, |e| format!(": {}", e.exception.repr()));
    info!(
        target: OUTCOME_TARGET,
        task = task.name(), task_id = %id, queue = %job.queue, state = "RETRY", runtime = runtime.as_secs_f64(),
        "Task {name}[{id}] retry: Retry in {when}{reason}"
    );
    stats::finished(task.name(), &job.queue, Finish::Retried, Some(runtime));
    let traceback = format!(
        "Traceback (most recent call last):\n  Rust handler of {}[{id}] on {}\ncelery.exceptions.Retry: Retry in {when}{reason}\n",
        msg.headers.task, shared.config.hostname
    );
    let result = r.exc.map_or(Value::Null, |e| e.exception.to_value());
    let store = record(
        msg,
        Some(task),
        State::Retry,
        result,
        Some(traceback),
        vec![result_tuple(id)],
    );
    settle(shared, job, store);
}

/// The message Celery's `Task.retry` publishes: same id, args and options, `retries + 1`,
/// an aware `eta`, and the original origin (also as a property).
fn retry_message(
    shared: &Shared,
    msg: &TaskMessage,
    queue: &str,
    eta: DateTime<Utc>,
    now: DateTime<Utc>,
) -> TaskMessage {
    let tz = shared.config.timezone;
    let mut next = msg.clone();
    next.protocol = Protocol::V2;
    let h = &mut next.headers;
    h.retries = h.retries.saturating_add(1);
    h.eta = Some(isoformat(eta, tz));
    h.ignore_result = Some(h.ignore_result.unwrap_or(false));
    if h.root_id.is_none() {
        h.root_id = Some(h.id.clone());
    }
    if h.parent_id.is_none() {
        h.parent_id = Some(h.id.clone());
    }
    h.argsrepr = Some(py_tuple_repr(&msg.args));
    h.kwargsrepr = Some(py_repr(&Value::Object(msg.kwargs.clone())));
    let origin = h.origin.clone();
    if h.origin.is_none() {
        h.origin = Some(shared.origin.clone());
    }
    h.extra.remove("redelivered");
    let p = &mut next.properties;
    p.delivery_tag = None;
    p.redelivered = false;
    p.exchange = String::new();
    if p.routing_key.is_empty() {
        p.routing_key = queue.to_owned();
    }
    p.extra
        .insert("origin".into(), origin.map_or(Value::Null, Value::String));
    p.expiration = msg
        .headers
        .expires
        .as_deref()
        .and_then(|e| Timestamp::parse(e).ok())
        .map(|exp| {
            let ms = (exp.to_utc(tz) - now).num_milliseconds().max(0);
            ms.to_string()
        });
    next
}

pub(crate) fn discard_expired(
    shared: &Shared,
    job: &mut Job,
    msg: &TaskMessage,
    task: &Arc<RegisteredTask>,
    name: &str,
) {
    info!(
        target: OUTCOME_TARGET,
        task = task.name(), task_id = %msg.headers.id, queue = %job.queue, state = "REVOKED",
        "Discarding revoked task: {name}[{}] (expired)",
        msg.headers.id
    );
    stats::finished(task.name(), &job.queue, Finish::Expired, None);
    let exc = PyException::celery("TaskRevokedError", "expired");
    let store = record(
        msg,
        Some(task),
        State::Revoked,
        exc.to_value(),
        None,
        Vec::new(),
    );
    settle(shared, job, store);
}

pub(crate) fn ignores_result(msg: &TaskMessage, task: &RegisteredTask) -> bool {
    msg.headers
        .ignore_result
        .unwrap_or(task.options().ignore_result)
}

/// What to store for this message, or `None` when it ignores results. `task` is `None` for
/// an unregistered task.
pub(crate) fn record<'a>(
    msg: &'a TaskMessage,
    task: Option<&Arc<RegisteredTask>>,
    state: State,
    result: Value,
    traceback: Option<String>,
    children: Vec<Value>,
) -> Option<Entry<'a>> {
    let ignore = match task {
        Some(t) => ignores_result(msg, t),
        None => msg.headers.ignore_result.unwrap_or(false),
    };
    if ignore {
        return None;
    }
    Some(Entry {
        msg,
        registered: task.is_some(),
        state,
        result,
        traceback,
        children,
        at: Utc::now(),
    })
}

pub(crate) fn settle(shared: &Shared, job: &mut Job, entry: Option<Entry<'_>>) {
    shared
        .settler
        .settle(entry, job.tag.clone(), job.prefetch.take());
}

/// Queues an intermediate record (STARTED): stored in order before the final one, acks nothing.
pub(crate) fn store_only(shared: &Shared, entry: Entry<'_>) {
    shared.settler.store_only(entry);
}

fn traceback_text(shared: &Shared, msg: &TaskMessage, exc: &PyException) -> String {
    let module = if exc.exc_module == "builtins" {
        String::new()
    } else {
        format!("{}.", exc.exc_module)
    };
    format!(
        "Traceback (most recent call last):\n  Rust handler of {}[{}] on {}\n{module}{}\n",
        msg.headers.task,
        msg.headers.id,
        shared.config.hostname,
        exc.summary()
    )
}

fn seconds_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}
