//! The life of one message after it is fetched: decode, route to its handler, wait for its ETA,
//! run it within its limits; [`crate::outcome`] then settles what happened the way Celery does.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_ops::logs::OUTCOME_TARGET;
use celeriac_protocol::result::{PyException, State};
use celeriac_protocol::time::Timestamp;
use celeriac_protocol::{Envelope, Requeue, TaskMessage};
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use crate::context::{DeliveryInfo, Request, TaskContext};
use crate::outcome::{
    discard_expired, fail, ignores_result, record, reject, retry, settle, store_only,
};
use crate::registry::RegisteredTask;
use crate::retry::until_ok;
use crate::stats::{self, Finish};
use crate::task_error::{PyError, TaskError};
use crate::worker::Shared;

/// Counts a message held outside the prefetch window while it lives.
struct OutsideWindow(Arc<AtomicUsize>);

impl OutsideWindow {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for OutsideWindow {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fetched, tracked message.
pub(crate) struct Job {
    pub tag: String,
    pub raw: Arc<str>,
    pub queue: Arc<str>,
    pub prefetch: Option<OwnedSemaphorePermit>,
}

/// Processes one message to its end (settled, set aside, or handed back on shutdown).
pub(crate) async fn process(shared: Arc<Shared>, mut job: Job) {
    let msg = match Envelope::from_json(&job.raw).and_then(|env| TaskMessage::from_envelope(&env)) {
        Ok(msg) => msg,
        Err(e) => {
            set_aside(
                &shared,
                &job.tag,
                job.raw.as_bytes(),
                &job.queue,
                &e.to_string(),
            )
            .await;
            return;
        }
    };
    let name = msg.display_name().to_owned();
    let id = msg.headers.id.clone();
    info!("Task {name}[{id}] received");

    let Some(task) = shared.registry.get(&msg.headers.task).cloned() else {
        error!(
            target: OUTCOME_TARGET,
            task = %msg.headers.task, task_id = %id, queue = %job.queue, state = "FAILURE",
            "Received unregistered task of type '{}' (id {id}, queue {}): stored NotRegistered and discarded",
            msg.headers.task, job.queue
        );
        let exc = PyException::celery("NotRegistered", msg.headers.task.clone());
        let store = record(&msg, None, State::Failure, exc.to_value(), None, Vec::new());
        stats::received(stats::UNREGISTERED, &job.queue);
        stats::finished(stats::UNREGISTERED, &job.queue, Finish::Failed, None);
        settle(&shared, &mut job, store);
        return;
    };

    stats::received(task.name(), &job.queue);
    if expired(&shared, &msg) {
        discard_expired(&shared, &mut job, &msg, &task, &name);
        return;
    }
    warn_unsupported_canvas(&msg, &name);
    let mut _outside = None;
    if let Some(eta) = eta(&shared, &msg) {
        let wait = (eta - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            // Like Celery, a message waiting for its ETA does not use up the prefetch window
            // (and a transport with a window of its own is told to widen it, as Celery raises
            // the QoS, until this message is done).
            job.prefetch = None;
            _outside = Some(OutsideWindow::enter(&shared.outside_window));
            debug!("Task {name}[{id}] waits {wait:?} for its ETA");
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => {
                    hand_back(&shared, &job).await;
                    return;
                }
                () = tokio::time::sleep(wait) => {}
            }
            if expired(&shared, &msg) {
                discard_expired(&shared, &mut job, &msg, &task, &name);
                return;
            }
        }
    }

    let slot = tokio::select! {
        biased;
        () = shared.stop.cancelled() => {
            hand_back(&shared, &job).await;
            return;
        }
        slot = shared.concurrency.clone().acquire_owned() => slot,
    };
    let Ok(_slot) = slot else { return }; // the semaphore is never closed

    let request = Arc::new(request_of(&shared, &msg, &job));
    let ignore = ignores_result(&msg, &task);
    if (shared.config.track_started || task.options().track_started) && !ignore {
        // Through the result pipeline: no round trip of its own, and always stored before the
        // final state of the same task, which goes the same way later.
        let started = json!({"pid": std::process::id(), "hostname": shared.config.hostname});
        if let Some(store) = record(&msg, Some(&task), State::Started, started, None, Vec::new()) {
            store_only(&shared, store);
        }
    }

    debug!("Task {name}[{id}] started");
    let started_at = Instant::now();
    let outcome = tokio::select! {
        biased;
        () = shared.abort.cancelled() => {
            warn!("Task {name}[{id}] stopped by shutdown; its message goes back to the queue");
            return; // still in flight: the shutdown hands it back
        }
        r = execute(&msg, &task, request, &shared) => r,
    };
    let runtime = started_at.elapsed();
    drop(_slot);

    match outcome {
        Ok(value) => {
            let secs = runtime.as_secs_f64();
            info!(
                target: OUTCOME_TARGET,
                task = task.name(), task_id = %id, queue = %job.queue, state = "SUCCESS", runtime = secs,
                "Task {name}[{id}] succeeded in {secs:.6}s: {value}"
            );
            stats::finished(task.name(), &job.queue, Finish::Succeeded, Some(runtime));
            let store = record(&msg, Some(&task), State::Success, value, None, Vec::new());
            settle(&shared, &mut job, store);
        }
        Err(TaskError::Failed(e)) => fail(&shared, &mut job, &msg, &task, &name, e, runtime),
        Err(TaskError::Retry(r)) => retry(&shared, &mut job, &msg, &task, &name, r, runtime).await,
        Err(e @ TaskError::Reject { .. }) => reject(&shared, &mut job, &msg, &task, &name, e).await,
    }
}

async fn execute(
    msg: &TaskMessage,
    task: &Arc<RegisteredTask>,
    request: Arc<Request>,
    shared: &Shared,
) -> Result<Value, TaskError> {
    let registry = &shared.registry;
    if let Some(missing) = registry.unavailable_reason(task) {
        // Named at startup too; the message fails with the reason rather than being dropped.
        return Err(missing.into());
    }
    let call = task.call(
        TaskContext::new(request, registry.resources().clone(), shared.sender.clone()),
        msg.args.clone(),
        msg.kwargs.clone(),
    );
    let guarded = AssertUnwindSafe(call).catch_unwind();
    let limit = msg.headers.timelimit[0]
        .map(Duration::from_secs_f64)
        .or(task.options().time_limit);
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(r) => r,
            Err(_) => {
                // Celery's hard limit: billiard's TimeLimitExceeded with the limit in seconds.
                let secs = limit.as_secs_f64();
                let arg = if secs.fract() == 0.0 {
                    json!(secs as u64)
                } else {
                    json!(secs)
                };
                let exc = PyException::new("billiard.exceptions", "TimeLimitExceeded", vec![arg]);
                error!(
                    "Hard time limit ({secs}s) exceeded for {}[{}]",
                    msg.headers.task, msg.headers.id
                );
                return Err(TaskError::Failed(PyError {
                    exception: exc,
                    traceback: None,
                }));
            }
        },
        None => guarded.await,
    };
    result.unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(TaskError::Failed(PyError::runtime_error(format!(
            "handler panicked: {text}"
        ))))
    })
}

fn expired(shared: &Shared, msg: &TaskMessage) -> bool {
    msg.headers
        .expires
        .as_deref()
        .and_then(|e| Timestamp::parse(e).ok())
        .is_some_and(|exp| exp.to_utc(shared.config.timezone) < Utc::now())
}

fn eta(shared: &Shared, msg: &TaskMessage) -> Option<DateTime<Utc>> {
    msg.headers
        .eta
        .as_deref()
        .and_then(|e| Timestamp::parse(e).ok())
        .map(|t| t.to_utc(shared.config.timezone))
}

/// Canvas (link, link_error, chain, chord) is not implemented yet: say so instead of silently
/// dropping the follow-up work.
fn warn_unsupported_canvas(msg: &TaskMessage, name: &str) {
    let e = &msg.embed;
    let parts: Vec<&str> = [
        ("link", &e.callbacks),
        ("link_error", &e.errbacks),
        ("chain", &e.chain),
        ("chord", &e.chord),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    .map(|(k, _)| k)
    .collect();
    if !parts.is_empty() {
        warn!(
            "Task {name}[{}] carries {} which celeriac does not run yet; the task itself runs",
            msg.headers.id,
            parts.join(", ")
        );
    }
}

fn request_of(shared: &Shared, msg: &TaskMessage, job: &Job) -> Request {
    let h = &msg.headers;
    Request {
        id: h.id.clone(),
        task: h.task.clone(),
        retries: h.retries,
        root_id: h.root_id.clone(),
        parent_id: h.parent_id.clone(),
        group: h.group.clone(),
        group_index: h.group_index,
        hostname: shared.config.hostname.clone(),
        delivery_info: DeliveryInfo {
            exchange: msg.properties.exchange.clone(),
            routing_key: if msg.properties.routing_key.is_empty() {
                job.queue.to_string()
            } else {
                msg.properties.routing_key.clone()
            },
            priority: msg.properties.priority,
            redelivered: msg.properties.redelivered
                || h.extra
                    .get("redelivered")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
        },
        eta: h.eta.clone(),
        expires: h.expires.clone(),
        origin: h.origin.clone(),
        reply_to: msg.properties.reply_to.clone(),
        args: msg.args.clone(),
        kwargs: msg.kwargs.clone(),
        headers: h.extra.clone(),
    }
}

/// Sets an undecodable message aside on the dead-letter list; it is never executed.
pub(crate) async fn set_aside(shared: &Shared, tag: &str, raw: &[u8], queue: &str, reason: &str) {
    error!(
        queue = %queue,
        tag = %tag,
        "Received an invalid message, set aside on the list '{}' and not executed: {reason}",
        shared.config.dead_letter_key
    );
    stats::set_aside(queue);
    let done = until_ok(
        "setting a message aside",
        shared.config.reconnect,
        &shared.abort,
        || shared.broker.dead_letter(Some(tag), raw, queue, reason),
    )
    .await;
    if done.is_some() {
        shared.inflight.remove(tag);
    }
}

/// Puts a message we will not run back at the front of its queue (shutdown), retrying until
/// `give_up` fires.
pub(crate) async fn hand_back_until(
    shared: &Shared,
    job: &Job,
    give_up: &tokio_util::sync::CancellationToken,
) -> bool {
    let moved = until_ok(
        "handing a message back",
        shared.config.reconnect,
        give_up,
        || {
            shared
                .broker
                .requeue(&job.tag, &job.raw, &job.queue, Requeue::Next)
        },
    )
    .await;
    if moved.is_some() {
        shared.inflight.remove(&job.tag);
        debug!(tag = %job.tag, queue = %job.queue, "handed back");
    }
    moved.is_some()
}

async fn hand_back(shared: &Shared, job: &Job) {
    hand_back_until(shared, job, &shared.abort).await;
}
