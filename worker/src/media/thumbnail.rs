//! `media.thumbnail(asset_id, sizes=None)`: reads the asset's row, fetches its original from
//! S3, makes one JPEG per size on the CPU pool, uploads them, and records them in the row in one
//! statement. Each step holds what it needs only for itself: no database connection is held
//! while S3 is called or pixels are worked on.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::MySqlPool;

use super::picture::{self, PictureError, Rendered};
use super::{
    MAX_SIZE, MISSING_ROW_COUNTDOWN, MISSING_ROW_RETRIES, MediaSettings, as_id, mysql_error,
    mysql_failure, now_utc, py_repr, retry_transient,
};
use crate::s3::Storage;
use crate::task_error::{PyError, TaskError};
use crate::{Retry, TaskContext};

const TASK: &str = "media.thumbnail";

/// The call's arguments as sent; their types are checked here, for Python's `TypeError` texts.
#[derive(Debug, Deserialize)]
pub(super) struct Args {
    asset_id: Value,
    #[serde(default)]
    sizes: Option<Value>,
}

fn type_error(arg: &str, want: &str, got: &Value) -> TaskError {
    PyError::type_error(format!(
        "{TASK}() argument {arg} must be {want}, not {}",
        py_repr(got)
    ))
    .into()
}

fn check_args(args: &Args, settings: &MediaSettings) -> Result<(u64, Vec<u32>), TaskError> {
    let id = as_id(&args.asset_id)
        .ok_or_else(|| type_error("asset_id", "an integer", &args.asset_id))?;
    let sizes = match &args.sizes {
        None | Some(Value::Null) => settings.sizes.clone(),
        Some(v @ Value::Array(items)) => {
            let bad = || type_error("sizes", "a list of positive integers", v);
            if items.is_empty() {
                return Err(bad());
            }
            let mut sizes = Vec::with_capacity(items.len());
            for item in items {
                let n = as_id(item).filter(|n| *n > 0).ok_or_else(bad)?;
                if n > MAX_SIZE {
                    return Err(PyError::value_error(format!(
                        "{TASK}() argument sizes: {n} is larger than {MAX_SIZE}"
                    ))
                    .into());
                }
                let n = u32::try_from(n).map_err(|_| bad())?;
                if !sizes.contains(&n) {
                    sizes.push(n);
                }
            }
            sizes
        }
        Some(other) => return Err(type_error("sizes", "a list of positive integers", other)),
    };
    Ok((id, sizes))
}

/// The task.
pub(super) async fn run(ctx: TaskContext, args: Args) -> Result<Value, TaskError> {
    let settings = ctx.resource::<MediaSettings>()?;
    let (id, sizes) = check_args(&args, settings)?;
    let pool = ctx.resource::<MySqlPool>()?;
    let storage = ctx.resource::<Storage>()?;
    let transient = |e: &sqlx::Error| retry_transient(&ctx, mysql_error(Some(id), e));

    // 1. The row.
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT original, status, CAST(thumbnails AS CHAR) FROM media_mediaasset WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| mysql_failure(&ctx, Some(id), &e))?;
    let Some((original, status, before)) = row else {
        // Maybe not committed yet: look again shortly, a few times.
        return Err(Retry::default()
            .countdown(MISSING_ROW_COUNTDOWN)
            .max_retries(Some(MISSING_ROW_RETRIES))
            .exc(missing_row(id))
            .into());
    };
    if status == "purged" {
        return Err(purged(id).into());
    }
    if original.is_empty() {
        return fail(
            &ctx,
            pool,
            id,
            PyError::builtin(
                "FileNotFoundError",
                format!("media asset {id} has no original"),
            ),
        )
        .await;
    }

    // 2. The original.
    let key = storage.key(&original);
    let bytes = match storage
        .client
        .get_object()
        .bucket(&storage.bucket)
        .key(&key)
        .send()
        .await
    {
        Ok(out) => match out.body.collect().await {
            Ok(data) => data.into_bytes(),
            Err(e) => {
                return Err(retry_transient(
                    &ctx,
                    s3_io(id, &format!("reading {key}: {e}")),
                ));
            }
        },
        Err(e) if is_missing(&e) => {
            let msg = format!(
                "media asset {id}: original {key} is not in bucket {}",
                storage.bucket
            );
            return fail(&ctx, pool, id, PyError::builtin("FileNotFoundError", msg)).await;
        }
        Err(e) => return Err(s3_failure(&ctx, id, &format!("get {key}"), &e)),
    };

    // 3. The thumbnails, on the CPU pool.
    let max_pixels = settings.max_pixels;
    let job_sizes = sizes.clone();
    let rendered = ctx
        .cpu()
        .run(move || picture::render(&bytes, &job_sizes, max_pixels))
        .await;
    let rendered: Rendered = match rendered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let exc = PyError::value_error(format!("media asset {id}: {original} {e}"));
            return fail(&ctx, pool, id, exc).await;
        }
        Err(crate::CpuError::Panicked(why)) => {
            let e = PictureError::Corrupt(format!("the decoder gave up ({why})"));
            let exc = PyError::value_error(format!("media asset {id}: {original} {e}"));
            return fail(&ctx, pool, id, exc).await;
        }
        Err(e) => return Err(TaskError::Failed(PyError::runtime_error(e.to_string()))),
    };

    // 4. Uploads, all at once.
    let names: Vec<String> = rendered
        .thumbs
        .iter()
        .map(|t| format!("thumbnails/{id}/{}.jpg", t.size))
        .collect();
    let uploads = rendered.thumbs.iter().zip(&names).map(|(t, name)| {
        storage
            .client
            .put_object()
            .bucket(&storage.bucket)
            .key(storage.key(name))
            .content_type("image/jpeg")
            .body(ByteStream::from(t.jpeg.clone()))
            .send()
    });
    if let Err(e) = futures::future::try_join_all(uploads).await {
        return Err(s3_failure(&ctx, id, "put a thumbnail", &e));
    }

    // 5. The row, in one statement; a row purged meanwhile stays purged.
    let mut thumbnails = Map::new();
    for (t, name) in rendered.thumbs.iter().zip(&names) {
        thumbnails.insert(
            t.size.to_string(),
            json!({"key": name, "width": t.width, "height": t.height}),
        );
    }
    let thumbnails = Value::Object(thumbnails);
    let updated = sqlx::query("UPDATE media_mediaasset SET status = 'ready', width = ?, height = ?, thumbnails = ?, error = '', \
         updated_at = ? WHERE id = ? AND status <> 'purged'"
    )
    .bind(rendered.width)
    .bind(rendered.height)
    .bind(thumbnails.to_string())
    .bind(now_utc())
    .bind(id)
    .execute(pool)
    .await
    .map_err(|e| mysql_failure(&ctx, Some(id), &e))?;
    if updated.rows_affected() == 0 {
        let status: Option<(String,)> =
            sqlx::query_as("SELECT status FROM media_mediaasset WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(|e| transient(&e))?;
        match status {
            Some((s,)) if s != "purged" => {} // unchanged: nothing to do
            gone => {
                // Purged (or deleted) while we worked: what we uploaded goes too.
                remove_uploads(storage, &names).await;
                return Err(match gone {
                    None => missing_row(id).into(),
                    Some(_) => purged(id).into(),
                });
            }
        }
    }
    // Thumbnails of an earlier run with other sizes are no longer recorded: they go.
    let stale: Vec<String> = super::purge::names_of("", before.as_deref())
        .into_iter()
        .filter(|n| !names.contains(n))
        .collect();
    remove_uploads(storage, &stale).await;
    Ok(thumbnails)
}

fn missing_row(id: u64) -> PyError {
    PyError::builtin("LookupError", format!("media asset {id} does not exist"))
}

fn purged(id: u64) -> PyError {
    PyError::value_error(format!("media asset {id} was purged"))
}

fn s3_io(id: u64, what: &str) -> PyError {
    PyError::builtin("ConnectionError", format!("media asset {id}: S3: {what}"))
}

/// A permanent failure of the asset: the row becomes `failed` with the message (unless it was
/// purged), and the task fails with `exc`. A database that is down makes it a retry.
async fn fail(
    ctx: &TaskContext,
    pool: &MySqlPool,
    id: u64,
    exc: PyError,
) -> Result<Value, TaskError> {
    let message = exc
        .exception
        .exc_message
        .first()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let marked = sqlx::query(
        "UPDATE media_mediaasset SET status = 'failed', error = ?, updated_at = ? \
         WHERE id = ? AND status <> 'purged'",
    )
    .bind(&message)
    .bind(now_utc())
    .bind(id)
    .execute(pool)
    .await;
    match marked {
        Ok(_) => Err(exc.into()),
        Err(e) => Err(mysql_failure(ctx, Some(id), &e)),
    }
}

fn is_missing<E: aws_sdk_s3::error::ProvideErrorMetadata, R: HasStatus>(
    e: &SdkError<E, R>,
) -> bool {
    match e {
        SdkError::ServiceError(se) => {
            se.err().code() == Some("NoSuchKey") || se.raw().status_code() == 404
        }
        _ => false,
    }
}

/// The HTTP status of a raw response.
pub(super) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Whether an S3 error can go away by waiting: no answer, a timeout, a broken response, a
/// server error or throttling.
pub(super) fn s3_transient<E, R: HasStatus>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            status >= 500 || status == 429 || status == 408
        }
        _ => false,
    }
}

/// A retry for an S3 error that waiting can fix, a failure (`PermissionError` or `OSError`)
/// for one it cannot.
fn s3_failure<E, R>(ctx: &TaskContext, id: u64, what: &str, e: &SdkError<E, R>) -> TaskError
where
    E: std::error::Error + 'static,
    R: HasStatus + std::fmt::Debug,
{
    let text = DisplayErrorContext(e).to_string();
    if s3_transient(e) {
        return retry_transient(ctx, s3_io(id, &format!("{what}: {text}")));
    }
    let denied = matches!(e, SdkError::ServiceError(se) if se.raw().status_code() == 403);
    let exc_type = if denied { "PermissionError" } else { "OSError" };
    TaskError::Failed(PyError::builtin(
        exc_type,
        format!("media asset {id}: S3: {what}: {text}"),
    ))
}

/// Best-effort removal of thumbnails: those uploaded for a row purged meanwhile, or those of an
/// earlier run that this run's sizes replaced.
async fn remove_uploads(storage: &Storage, names: &[String]) {
    for name in names {
        let key = storage.key(name);
        if let Err(e) = storage
            .client
            .delete_object()
            .bucket(&storage.bucket)
            .key(&key)
            .send()
            .await
        {
            tracing::warn!(%key, "could not remove a thumbnail of a purged asset: {}", DisplayErrorContext(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Args {
        serde_json::from_value(v).expect("args")
    }

    #[test]
    fn argument_types_are_checked_with_pythons_words() {
        let s = MediaSettings::default();
        assert_eq!(
            check_args(&args(json!({"asset_id": 7})), &s).expect("ok"),
            (7, vec![128, 512])
        );
        assert_eq!(
            check_args(&args(json!({"asset_id": 7, "sizes": [64, 64, 32]})), &s).expect("ok"),
            (7, vec![64, 32])
        );
        let err = |v: Value| match check_args(&args(v), &s) {
            Err(TaskError::Failed(py)) => format!(
                "{}: {}",
                py.exception.exc_type,
                py.exception.exc_message[0].as_str().unwrap_or_default()
            ),
            other => panic!("a failure, got {other:?}"),
        };
        assert_eq!(
            err(json!({"asset_id": "abc"})),
            "TypeError: media.thumbnail() argument asset_id must be an integer, not 'abc'"
        );
        assert_eq!(
            err(json!({"asset_id": 1.5})),
            "TypeError: media.thumbnail() argument asset_id must be an integer, not 1.5"
        );
        assert_eq!(
            err(json!({"asset_id": 3, "sizes": "128"})),
            "TypeError: media.thumbnail() argument sizes must be a list of positive integers, not '128'"
        );
        assert_eq!(
            err(json!({"asset_id": 3, "sizes": [128, 0]})),
            "TypeError: media.thumbnail() argument sizes must be a list of positive integers, not [128, 0]"
        );
        assert!(err(json!({"asset_id": 3, "sizes": [99999]})).starts_with("ValueError"));
    }
}
