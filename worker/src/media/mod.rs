//! The media tasks of `celeriac-worker`: `media.thumbnail(asset_id, sizes=None)` and
//! `media.purge_expired(days)`, on a Django project's `media_mediaasset` table (through the
//! MySQL pool of `DATABASE_URL`) and its django-storages bucket (the [`Storage`] resource). The
//! contract, the model included, is `docs/media-tasks.md`.
//!
//! Failures follow Celery's conventions: what waiting can fix (a row not committed yet, S3 or
//! MySQL unreachable) is a Celery retry, stored as RETRY; what it cannot (no such object, not an
//! image, a damaged one, one too large) is a FAILURE at once, with the reason in the row's
//! `error` column.

use std::time::Duration;

use serde_json::Value;
use sqlx::MySqlPool;

use crate::cli::ConfigError;
use crate::registry::{RegistryBuilder, TaskOptions};
use crate::s3::Storage;
use crate::task_error::{PyError, TaskError};
use crate::{Retry, TaskContext};

mod picture;
mod purge;
mod thumbnail;

/// The table of the Django model `media.MediaAsset`.
pub const TABLE: &str = "media_mediaasset";
/// Default sizes of `media.thumbnail`, comma-separated.
pub const THUMBNAIL_SIZES: &str = "CELERIAC_THUMBNAIL_SIZES";
/// Largest original accepted, in pixels.
pub const MAX_IMAGE_PIXELS: &str = "CELERIAC_MAX_IMAGE_PIXELS";

/// Largest thumbnail size accepted (JPEG's limit is 65535 a side).
const MAX_SIZE: u64 = 10_000;
/// Transient failures (S3 or MySQL unreachable) are retried this many times...
const TRANSIENT_RETRIES: u32 = 10;
/// ... after 1, 2, 4, ... seconds, at most this long.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A row that is not there yet (its transaction not committed) is looked for this many times...
const MISSING_ROW_RETRIES: u32 = 5;
/// ... this far apart.
const MISSING_ROW_COUNTDOWN: Duration = Duration::from_secs(1);

/// The settings of the media tasks, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// Sizes made when a call gives none.
    pub sizes: Vec<u32>,
    /// Largest original accepted, in pixels; more is refused before decoding.
    pub max_pixels: u64,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            sizes: vec![128, 512],
            max_pixels: 50_000_000,
        }
    }
}

impl MediaSettings {
    /// Reads [`THUMBNAIL_SIZES`] and [`MAX_IMAGE_PIXELS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut settings = Self::default();
        if let Some(text) = std::env::var(THUMBNAIL_SIZES)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            settings.sizes = parse_sizes(&text).ok_or(ConfigError::Invalid {
                setting: THUMBNAIL_SIZES,
                reason: format!(
                    "{text:?} is not a comma-separated list of sizes in 1..={MAX_SIZE}"
                ),
            })?;
        }
        if let Some(text) = std::env::var(MAX_IMAGE_PIXELS)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            settings.max_pixels =
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(ConfigError::Invalid {
                        setting: MAX_IMAGE_PIXELS,
                        reason: format!("{text:?} is not a positive number of pixels"),
                    })?;
        }
        Ok(settings)
    }
}

fn parse_sizes(text: &str) -> Option<Vec<u32>> {
    let mut sizes = Vec::new();
    for part in text.split(',') {
        let n = part.trim().parse::<u64>().ok()?;
        if !(1..=MAX_SIZE).contains(&n) {
            return None;
        }
        let n = u32::try_from(n).ok()?;
        if !sizes.contains(&n) {
            sizes.push(n);
        }
    }
    (!sizes.is_empty()).then_some(sizes)
}

/// Adds `media.thumbnail` and `media.purge_expired` with their settings from the environment.
/// They need the MySQL pool and the S3 storage (added by the CLI from the environment).
pub fn register(builder: RegistryBuilder) -> Result<RegistryBuilder, ConfigError> {
    let settings = MediaSettings::from_env()?;
    // Retries are decided per failure (see `retry_transient`), so the task's own limit is
    // the larger of the two.
    let options = || {
        TaskOptions::default()
            .max_retries(Some(TRANSIENT_RETRIES))
            .requires::<MySqlPool>()
            .requires::<Storage>()
    };
    Ok(builder
        .resource(settings)
        .task_with("media.thumbnail", options(), thumbnail::run)
        .task_with("media.purge_expired", options(), purge::run))
}

/// Python's `repr` of a JSON value, shortened, for `TypeError` texts.
fn py_repr(v: &Value) -> String {
    let out = celeriac_protocol::message::py_repr(v);
    if out.chars().count() > 80 {
        out.chars().take(77).collect::<String>() + "..."
    } else {
        out
    }
}

/// A JSON integer that fits `u64` (not a bool, float or string).
fn as_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// A Celery retry after a failure that waiting can fix, with exponential backoff, stored as
/// RETRY with `exc`; once the retries are spent the task fails with `exc`.
fn retry_transient(ctx: &TaskContext, exc: PyError) -> TaskError {
    let shift = ctx.retries().min(16);
    let delay = Duration::from_secs(1u64 << shift).min(MAX_BACKOFF);
    tracing::warn!(task_id = %ctx.id(), "{}; retrying in {delay:?}", exc.exception.exc_message.first().and_then(serde_json::Value::as_str).unwrap_or(""));
    TaskError::Retry(
        Retry::default()
            .countdown(delay)
            .max_retries(Some(TRANSIENT_RETRIES))
            .exc(exc),
    )
}

/// Whether a MySQL error can go away by waiting (connection lost, pool exhausted, a lock
/// timeout or deadlock, the server shutting down or full).
fn mysql_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(sqlx::mysql::MySqlDatabaseError::number);
            matches!(code, Some(1040 | 1053 | 1205 | 1213 | 2006 | 2013))
        }
        _ => false,
    }
}

/// A MySQL error as the task's outcome: a Celery retry when waiting can fix it, else a failure.
fn mysql_failure(ctx: &TaskContext, asset: Option<u64>, e: &sqlx::Error) -> TaskError {
    if mysql_transient(e) {
        retry_transient(ctx, mysql_error(asset, e))
    } else {
        TaskError::Failed(mysql_error(asset, e))
    }
}

/// `t` in UTC as MySQL's `DATETIME(6)` reads it (Django's `USE_TZ = True` stores UTC).
fn mysql_datetime(t: chrono::DateTime<chrono::Utc>) -> String {
    t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Now, as [`mysql_datetime`] writes it.
fn now_utc() -> String {
    mysql_datetime(chrono::Utc::now())
}

/// The Python exception for a MySQL error (`OperationalError` as Django's MySQL driver names
/// connection failures).
fn mysql_error(asset: Option<u64>, e: &sqlx::Error) -> PyError {
    let what = asset.map_or_else(String::new, |id| format!("media asset {id}: "));
    PyError::new(
        "django.db.utils",
        "OperationalError",
        format!("{what}MySQL: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_from_the_environment_form() {
        assert_eq!(parse_sizes("128,512"), Some(vec![128, 512]));
        assert_eq!(parse_sizes(" 64 , 64, 32"), Some(vec![64, 32]));
        assert_eq!(parse_sizes("0"), None);
        assert_eq!(parse_sizes("128,"), None);
        assert_eq!(parse_sizes("big"), None);
        assert_eq!(parse_sizes("20000"), None);
    }

    #[test]
    fn reprs_read_like_pythons() {
        assert_eq!(py_repr(&serde_json::json!("abc")), "'abc'");
        assert_eq!(py_repr(&serde_json::json!(null)), "None");
        assert_eq!(
            py_repr(&serde_json::json!([1, "it's", true])),
            "[1, \"it's\", True]"
        );
        assert_eq!(
            py_repr(&serde_json::json!("say \"it's\"")),
            "'say \"it\\'s\"'"
        );
        assert_eq!(py_repr(&serde_json::json!({"a": 1.5})), "{'a': 1.5}");
    }
}
