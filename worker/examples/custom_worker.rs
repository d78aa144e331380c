//! The README's "Writing your own handlers" example, compiled by `cargo test` so it stays true
//! (and run by the interop suite, `tests/test_resources.py`).

use std::process::ExitCode;
use std::time::Duration;

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

/// Stands for a resource this worker was not given (say, a database pool).
struct Database;

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

async fn nightly_report(ctx: TaskContext, _args: ()) -> Result<u64, TaskError> {
    let _db = ctx.resource::<Database>()?;
    Ok(0)
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
            .unavailable::<Database>("DATABASE_URL is not set")
            .task("media.tasks.thumbnail", thumbnail)
            .task_with(
                "media.tasks.slow",
                TaskOptions::default().max_retries(Some(10)),
                thumbnail,
            )
            .task_with(
                "reports.tasks.nightly",
                TaskOptions::default().requires::<Database>(),
                nightly_report,
            ),
    )
}
