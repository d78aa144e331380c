//! The README's "Writing your own handlers" example, compiled by `cargo test` so it stays true.

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

async fn thumbnail(ctx: TaskContext, args: Thumbnail) -> Result<String, TaskError> {
    if args.width == 0 {
        // AsyncResult.get() raises ValueError("width must be positive") in Python.
        return Err(PyError::value_error("width must be positive").into());
    }
    if storage_is_busy() {
        // Like self.retry(countdown=5): same id, retries + 1, up to max_retries.
        return Err(ctx.retry().countdown(Duration::from_secs(5)).into());
    }
    let quality = args.quality.unwrap_or(85);
    Ok(format!(
        "thumbs/{}-{}-q{quality}.jpg",
        args.image_id, args.width
    ))
}

fn storage_is_busy() -> bool {
    false
}

fn main() -> ExitCode {
    // Same flags and environment as celeriac-worker; the celeriac.test.* tasks are included.
    celeriac_worker::cli::main(
        Registry::builder()
            .task("media.tasks.thumbnail", thumbnail)
            .task_with(
                "media.tasks.slow",
                TaskOptions::default().max_retries(Some(10)),
                thumbnail,
            ),
    )
}
