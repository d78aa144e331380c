//! The README's "Writing your own handlers" example, compiled by `cargo test` so it stays true
//! (and run by the interop suite, `tests/test_resources.py`).

use std::process::ExitCode;
use std::time::Duration;

use celeriac_worker::mysql::MySqlPool;
use celeriac_worker::s3::Storage;
use celeriac_worker::{PyError, Registry, TaskContext, TaskError, TaskOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Thumbnail {
    image_id: u64,
    width: u32,
    #[serde(default)]
    quality: Option<u8>,
}

/// Your own state, built once at startup and shared by every task.
struct Branding {
    prefix: String,
}

async fn thumbnail(ctx: TaskContext, args: Thumbnail) -> Result<String, TaskError> {
    if args.width == 0 {
        // AsyncResult.get() raises ValueError("width must be positive") in Python.
        return Err(PyError::value_error("width must be positive").into());
    }
    if storage_is_busy() {
        // Like self.retry(countdown=5): same id, retries + 1, up to max_retries.
        return Err(ctx.retry().countdown(Duration::from_secs(5)).into());
    }
    let branding = ctx.resource::<Branding>()?;
    let quality = args.quality.unwrap_or(85);
    Ok(format!(
        "{}/{}-{}-q{quality}.jpg",
        branding.prefix, args.image_id, args.width
    ))
}

/// `reports.tasks.count_since(days)`: a query on the pool the worker built from DATABASE_URL.
async fn count_since(ctx: TaskContext, (days,): (u32,)) -> Result<i64, TaskError> {
    let pool = ctx.resource::<MySqlPool>()?;
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.tables WHERE create_time >= NOW() - INTERVAL ? DAY",
    )
    .bind(days)
    .fetch_one(pool)
    .await
    // A database that is down or refuses us: retried like self.retry(exc=e, countdown=5), up to
    // max_retries; the error is logged with the retry and stored with the RETRY state.
    .map_err(|e| {
        ctx.retry()
            .countdown(Duration::from_secs(5))
            .exc(PyError::from_error(&e))
    })?;
    Ok(row.0)
}

/// `media.tasks.store_text(name, text)`: writes an object under the Django storage's prefix
/// (the S3 settings of django-storages) and returns its key and size as S3 reports them.
async fn store_text(
    ctx: TaskContext,
    (name, text): (String, String),
) -> Result<serde_json::Value, TaskError> {
    let storage = ctx.resource::<Storage>()?;
    let key = storage.key(&name);
    let s3_error = |e: String| PyError::new("botocore.exceptions", "ClientError", e);
    storage
        .client
        .put_object()
        .bucket(&storage.bucket)
        .key(&key)
        .content_type("text/plain")
        .body(text.into_bytes().into())
        .send()
        .await
        .map_err(|e| s3_error(format!("put {key}: {e}")))?;
    let head = storage
        .client
        .head_object()
        .bucket(&storage.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| s3_error(format!("head {key}: {e}")))?;
    Ok(serde_json::json!({"key": key, "size": head.content_length()}))
}

fn storage_is_busy() -> bool {
    false
}

fn main() -> ExitCode {
    // Same flags and environment as celeriac-worker; the celeriac.test.* tasks are included.
    celeriac_worker::cli::main(
        Registry::builder()
            .resource(Branding {
                prefix: "thumbs".into(),
            })
            .task("media.tasks.thumbnail", thumbnail)
            .task_with(
                "media.tasks.slow",
                TaskOptions::default().max_retries(Some(10)),
                thumbnail,
            )
            // With DATABASE_URL unset, this task is named at startup and its messages fail
            // with that reason.
            .task_with(
                "media.tasks.store_text",
                TaskOptions::default().requires::<Storage>(),
                store_text,
            )
            .task_with(
                "reports.tasks.count_since",
                TaskOptions::default().requires::<MySqlPool>(),
                count_since,
            ),
    )
}
