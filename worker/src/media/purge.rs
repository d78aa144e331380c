//! `media.purge_expired(days)`: for assets created more than `days` days ago and not purged
//! yet, deletes the original and the thumbnails from S3, then marks the rows `purged`; returns
//! how many rows it newly marked.
//!
//! Per batch of rows: (1) read them; (2) delete their objects (DeleteObjects, up to 1000 keys a
//! call); (3) in one short transaction, lock the rows, read their thumbnails again and mark them
//! `purged`; (4) delete any thumbnail that a concurrent `media.thumbnail` recorded between (1)
//! and (3). A thumbnail run that records after (3) finds the row purged and removes its own
//! uploads. A crash before (3) leaves the rows unpurged, and the next run deletes (again) and
//! marks them; deleting a key that is gone is not an error in S3.

use std::collections::BTreeSet;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use serde::Deserialize;
use serde_json::Value;
// Statements built with format! hold only constants and `?` placeholders; values are bound.
use sqlx::{AssertSqlSafe, MySqlPool};

use super::thumbnail::s3_transient;
use super::{TABLE, mysql_datetime, mysql_failure, now_utc, py_repr, retry_transient};
use crate::TaskContext;
use crate::s3::Storage;
use crate::task_error::{PyError, TaskError};

/// Rows handled per batch.
const BATCH: usize = 200;
/// DeleteObjects takes at most this many keys.
const DELETE_MAX: usize = 1000;

/// `purge_expired(days)`.
#[derive(Debug, Deserialize)]
pub(super) struct Args {
    days: Value,
}

fn check_days(v: &Value) -> Result<f64, TaskError> {
    let days = match v {
        Value::Number(n) => n.as_f64().filter(|d| d.is_finite()),
        _ => None,
    };
    match days {
        Some(d) if d >= 0.0 => Ok(d),
        Some(_) => Err(PyError::value_error(format!(
            "media.purge_expired() argument days must not be negative, not {}",
            py_repr(v)
        ))
        .into()),
        None => Err(PyError::type_error(format!(
            "media.purge_expired() argument days must be a number, not {}",
            py_repr(v)
        ))
        .into()),
    }
}

/// The object keys of one row: its original and its thumbnails, as stored names.
pub(super) fn names_of(original: &str, thumbnails: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    if !original.is_empty() {
        names.push(original.to_owned());
    }
    if let Some(Value::Object(map)) = thumbnails.and_then(|t| serde_json::from_str(t).ok()) {
        for entry in map.values() {
            if let Some(key) = entry.get("key").and_then(Value::as_str) {
                names.push(key.to_owned());
            }
        }
    }
    names
}

type Row = (i64, String, Option<String>);

/// The task.
pub(super) async fn run(ctx: TaskContext, args: Args) -> Result<u64, TaskError> {
    let days = check_days(&args.days)?;
    let pool = ctx.resource::<MySqlPool>()?;
    let storage = ctx.resource::<Storage>()?;
    let db = |e: sqlx::Error| mysql_failure(&ctx, None, &e);
    // Microseconds: `days` may be fractional, as Python's timedelta(days=...) allows.
    #[allow(clippy::cast_possible_truncation)]
    let micros = (days * 86_400_000_000.0).min(i64::MAX as f64) as i64;
    let cutoff = mysql_datetime(
        chrono::Utc::now()
            .checked_sub_signed(chrono::Duration::microseconds(micros))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
    );
    let mut marked = 0u64;
    let mut after = 0i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, original, CAST(thumbnails AS CHAR) FROM {TABLE} \
             WHERE created_at < ? AND status <> 'purged' AND id > ? ORDER BY id LIMIT {BATCH}"
        )))
        .bind(&cutoff)
        .bind(after)
        .fetch_all(pool)
        .await
        .map_err(db)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        let deleted: BTreeSet<String> = rows
            .iter()
            .flat_map(|(_, original, thumbs)| names_of(original, thumbs.as_deref()))
            .collect();
        delete(&ctx, storage, &deleted).await?;

        // Mark them, reading the thumbnails once more under the row locks.
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let list = vec!["?"; ids.len()].join(", ");
        let mut tx = pool.begin().await.map_err(db)?;
        let mut locked = sqlx::query_as::<_, Row>(AssertSqlSafe(format!(
            "SELECT id, original, CAST(thumbnails AS CHAR) FROM {TABLE} \
             WHERE id IN ({list}) AND status <> 'purged' FOR UPDATE"
        )));
        for id in &ids {
            locked = locked.bind(id);
        }
        let locked = locked.fetch_all(&mut *tx).await.map_err(db)?;
        let mut update = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {TABLE} SET status = 'purged', updated_at = ? \
             WHERE id IN ({list}) AND status <> 'purged'"
        )))
        .bind(now_utc());
        for id in &ids {
            update = update.bind(id);
        }
        let done = update.execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        marked += done.rows_affected();

        let late: BTreeSet<String> = locked
            .iter()
            .flat_map(|(_, original, thumbs)| names_of(original, thumbs.as_deref()))
            .filter(|n| !deleted.contains(n))
            .collect();
        if !late.is_empty() {
            // The rows are purged now: a failure here would leave objects behind, so it is a
            // failure the log names, not a retry (which would find nothing left to mark).
            if let Err(e) = delete(&ctx, storage, &late).await {
                tracing::error!(
                    "could not delete {} thumbnails made while their assets were purged: {e}",
                    late.len()
                );
            }
        }
        if rows.len() < BATCH {
            break;
        }
    }
    Ok(marked)
}

/// Deletes the objects of `names` (stored names, joined with the prefix here).
async fn delete(
    ctx: &TaskContext,
    storage: &Storage,
    names: &BTreeSet<String>,
) -> Result<(), TaskError> {
    let keys: Vec<String> = names.iter().map(|n| storage.key(n)).collect();
    for chunk in keys.chunks(DELETE_MAX) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TaskError::Failed(PyError::runtime_error(e.to_string())))?;
        let request = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| TaskError::Failed(PyError::runtime_error(e.to_string())))?;
        let out = storage
            .client
            .delete_objects()
            .bucket(&storage.bucket)
            .delete(request)
            .send()
            .await;
        match out {
            Ok(out) => {
                // Per-key errors (other than a key that is already gone) are failures.
                let errors: Vec<String> = out
                    .errors()
                    .iter()
                    .filter(|e| e.code() != Some("NoSuchKey"))
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.key().unwrap_or("?"),
                            e.message().or(e.code()).unwrap_or("error")
                        )
                    })
                    .collect();
                if !errors.is_empty() {
                    return Err(TaskError::Failed(PyError::builtin(
                        "OSError",
                        format!(
                            "S3 could not delete {} objects: {}",
                            errors.len(),
                            errors.join("; ")
                        ),
                    )));
                }
            }
            Err(e) => {
                let text = format!(
                    "delete {} objects: {}",
                    chunk.len(),
                    DisplayErrorContext(&e)
                );
                let exc = PyError::builtin("ConnectionError", format!("S3: {text}"));
                return Err(if s3_transient(&e) {
                    retry_transient(ctx, exc)
                } else {
                    TaskError::Failed(PyError::builtin("OSError", format!("S3: {text}")))
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_its_original_and_its_thumbnails() {
        let thumbs = r#"{"128": {"key": "thumbnails/4/128.jpg", "width": 128, "height": 96},
                         "512": {"key": "thumbnails/4/512.jpg", "width": 512, "height": 384}}"#;
        assert_eq!(
            names_of("originals/a.jpg", Some(thumbs)),
            vec![
                "originals/a.jpg",
                "thumbnails/4/128.jpg",
                "thumbnails/4/512.jpg"
            ]
        );
        assert_eq!(names_of("", Some("{}")), Vec::<String>::new());
        assert_eq!(names_of("o.png", Some("not json")), vec!["o.png"]);
        assert_eq!(names_of("o.png", None), vec!["o.png"]);
    }

    #[test]
    fn days_are_a_number_of_at_least_zero() {
        assert_eq!(check_days(&serde_json::json!(30)).expect("ok"), 30.0);
        assert_eq!(check_days(&serde_json::json!(0.5)).expect("ok"), 0.5);
        assert!(
            matches!(check_days(&serde_json::json!(-1)), Err(TaskError::Failed(p)) if p.exception.exc_type == "ValueError")
        );
        assert!(
            matches!(check_days(&serde_json::json!("30")), Err(TaskError::Failed(p)) if p.exception.exc_type == "TypeError")
        );
    }
}
