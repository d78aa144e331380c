//! The worker's metrics (names and labels are a public contract: dashboards, alerts and the HPA
//! read them). Labels are task names and queue names, both bounded by configuration; never a
//! task id, and a task name the registry does not know is counted as `unregistered` so that
//! a producer cannot grow the label set.

use std::time::Duration;

/// How a message ended, for the per-outcome counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Succeeded,
    Failed,
    Retried,
    Rejected,
    Expired,
}

/// The task label of a task the registry does not know.
pub(crate) const UNREGISTERED: &str = "unregistered";

/// Gives every metric its help text, once the recorder is installed.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "celeriac_tasks_received_total",
        "Task messages decoded, by task and queue"
    );
    describe_counter!(
        "celeriac_tasks_succeeded_total",
        "Tasks that returned a value"
    );
    describe_counter!(
        "celeriac_tasks_failed_total",
        "Tasks that ended in FAILURE (raised, timed out, retries exhausted, unregistered)"
    );
    describe_counter!(
        "celeriac_tasks_retried_total",
        "Tasks that asked for a retry (the retry message was published)"
    );
    describe_counter!("celeriac_tasks_rejected_total", "Tasks that raised Reject");
    describe_counter!(
        "celeriac_tasks_expired_total",
        "Tasks discarded as REVOKED because their expires had passed"
    );
    describe_counter!(
        "celeriac_messages_set_aside_total",
        "Undecodable messages set aside on the dead-letter list, by queue"
    );
    describe_histogram!(
        "celeriac_task_runtime_seconds",
        Unit::Seconds,
        "Time spent in the handler"
    );
    describe_histogram!(
        "celeriac_result_store_seconds",
        Unit::Seconds,
        "Time to store one batch of results, retries included"
    );
    describe_gauge!("celeriac_tasks_running", "Tasks running now");
    describe_gauge!(
        "celeriac_messages_held",
        "Messages fetched and not yet acked or handed back (running, waiting, prefetched)"
    );
    describe_gauge!(
        "celeriac_queue_length",
        "Messages waiting in each consumed queue (all priority lists), read every few seconds"
    );
    describe_counter!(
        "celeriac_broker_reconnects_total",
        "Times the consumer got the broker back after losing it"
    );
}

/// A task message was decoded.
pub(crate) fn received(task: &str, queue: &str) {
    metrics::counter!("celeriac_tasks_received_total", "task" => task.to_owned(), "queue" => queue.to_owned())
        .increment(1);
}

/// A message ended; `runtime` when its handler ran.
pub(crate) fn finished(task: &str, queue: &str, how: Finish, runtime: Option<Duration>) {
    let name = match how {
        Finish::Succeeded => "celeriac_tasks_succeeded_total",
        Finish::Failed => "celeriac_tasks_failed_total",
        Finish::Retried => "celeriac_tasks_retried_total",
        Finish::Rejected => "celeriac_tasks_rejected_total",
        Finish::Expired => "celeriac_tasks_expired_total",
    };
    metrics::counter!(name, "task" => task.to_owned(), "queue" => queue.to_owned()).increment(1);
    if let Some(runtime) = runtime {
        metrics::histogram!("celeriac_task_runtime_seconds", "task" => task.to_owned(), "queue" => queue.to_owned())
            .record(runtime.as_secs_f64());
    }
}

/// An undecodable message was set aside.
pub(crate) fn set_aside(queue: &str) {
    metrics::counter!("celeriac_messages_set_aside_total", "queue" => queue.to_owned())
        .increment(1);
}

/// The waiting messages of `queue`.
pub(crate) fn queue_length(queue: &str, length: u64) {
    metrics::gauge!("celeriac_queue_length", "queue" => queue.to_owned()).set(length as f64);
}

/// The consumer got the broker back.
pub(crate) fn reconnected() {
    metrics::counter!("celeriac_broker_reconnects_total").increment(1);
}

/// A batch of results took `took` to store.
pub(crate) fn stored(took: Duration) {
    metrics::histogram!("celeriac_result_store_seconds").record(took.as_secs_f64());
}
