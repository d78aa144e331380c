//! `celeriac.test.*`: tasks shipped in the binary so users can check a deployment end to end
//! from Python (`app.send_task("celeriac.test.add", args=[2, 3]).get()`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Number, Value, json};

use crate::args::RawArgs;
use crate::context::TaskContext;
use crate::registry::{RegistryBuilder, TaskOptions};
use crate::task_error::{PyError, TaskError};

mod pyops;
mod spawn;

/// Adds the `celeriac.test.*` tasks to a registry.
pub fn register(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .task("celeriac.test.add", add)
        .task("celeriac.test.mul", mul)
        .task("celeriac.test.xsum", xsum)
        .task("celeriac.test.echo", echo)
        .task("celeriac.test.sleep", sleep)
        .task("celeriac.test.fail", fail)
        .task_with(
            "celeriac.test.retry",
            TaskOptions::default().max_retries(None),
            retry,
        )
        .task("celeriac.test.request", request)
        .task("celeriac.test.reject", reject)
        .task("celeriac.test.spawn", spawn::spawn)
}

/// `add(x, y)` and `mul(x, y)`: any JSON values, as Python's `x + y` and `x * y` take them.
#[derive(Debug, Deserialize)]
struct Pair {
    x: Value,
    y: Value,
}

async fn add(_ctx: TaskContext, Pair { x, y }: Pair) -> Result<Value, TaskError> {
    Ok(pyops::add(&x, &y)?)
}

async fn mul(_ctx: TaskContext, Pair { x, y }: Pair) -> Result<Value, TaskError> {
    Ok(pyops::mul(&x, &y)?)
}

/// `xsum(numbers)`: Python's `sum(numbers)`, so any iterable JSON value.
#[derive(Debug, Deserialize)]
struct XSum {
    numbers: Value,
}

async fn xsum(_ctx: TaskContext, XSum { numbers }: XSum) -> Result<Value, TaskError> {
    Ok(pyops::sum(&numbers)?)
}

async fn echo(_ctx: TaskContext, raw: RawArgs) -> Result<Value, TaskError> {
    Ok(json!({"args": raw.args, "kwargs": raw.kwargs}))
}

#[derive(Debug, Deserialize)]
struct Sleep {
    seconds: Number,
}

async fn sleep(_ctx: TaskContext, Sleep { seconds }: Sleep) -> Result<Number, TaskError> {
    let secs = seconds.as_f64().unwrap_or(0.0);
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(PyError::value_error(format!("cannot sleep {secs} seconds")).into());
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    Ok(seconds)
}

#[derive(Debug, Deserialize)]
struct Fail {
    message: Value,
}

async fn fail(_ctx: TaskContext, Fail { message }: Fail) -> Result<(), TaskError> {
    let text = match message {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Err(PyError::value_error(text).into())
}

#[derive(Debug, Deserialize)]
struct RetryArgs {
    times: u32,
    #[serde(default)]
    countdown: Option<f64>,
    #[serde(default)]
    max_retries: Option<u32>,
}

async fn retry(ctx: TaskContext, a: RetryArgs) -> Result<u32, TaskError> {
    if ctx.retries() >= a.times {
        return Ok(ctx.retries());
    }
    let countdown = Duration::from_secs_f64(a.countdown.unwrap_or(0.1).clamp(0.0, 86_400.0));
    let mut r = ctx.retry().countdown(countdown);
    if a.max_retries.is_some() {
        r = r.max_retries(a.max_retries);
    }
    Err(r.into())
}

async fn request(ctx: TaskContext, _none: ()) -> Result<Value, TaskError> {
    let r = ctx.request();
    Ok(json!({
        "id": r.id,
        "retries": r.retries,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "group": r.group,
        "hostname": r.hostname,
        "delivery_info": r.delivery_info,
        "eta": r.eta,
        "expires": r.expires,
    }))
}

#[derive(Debug, Deserialize)]
struct RejectArgs {
    #[serde(default)]
    requeue: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    unless_redelivered: bool,
}

/// Rejects its message like Celery's `raise Reject(reason, requeue)`; with
/// `unless_redelivered`, only the first delivery is rejected (so a requeue test terminates).
async fn reject(ctx: TaskContext, a: RejectArgs) -> Result<bool, TaskError> {
    if a.unless_redelivered && ctx.request().delivery_info.redelivered {
        return Ok(true);
    }
    Err(TaskError::Reject {
        reason: a.reason,
        requeue: a.requeue,
    })
}
