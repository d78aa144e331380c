//! `django-db`: results in django-celery-results' `TaskResult` table
//! (`django_celery_results_taskresult`), on MySQL/MariaDB, written as its `DatabaseBackend`
//! writes them, so a Django app with `CELERY_RESULT_BACKEND = "django-db"` reads them with
//! `AsyncResult(id).get()` and its admin lists them.
//!
//! What a row holds (django-celery-results 2.6, `DatabaseBackend._store_result` and
//! `TaskResultManager.store_result`):
//!
//! * `result`: the value (or Celery's exception dict) as Kombu's JSON serializer writes it,
//!   which is Python's `json.dumps` (see [`celeriac_protocol::pyjson`]); `content_type`
//!   `application/json`, `content_encoding` `utf-8`;
//! * `meta`: `{"children": [...]}` in the same JSON;
//! * with `result_extended` only: `task_name`, `task_args` / `task_kwargs` (the JSON of the
//!   message's `argsrepr` / `kwargsrepr` strings, or of the raw arguments when the message has
//!   none, as for protocol 1), `worker` (the node name), `periodic_task_name` (the header
//!   django-celery-beat sets) and `traceback`; without it these are NULL, the traceback included;
//! * `date_created` when the row is first written, `date_done` at every write (Django's
//!   `auto_now`), `date_started` when STARTED is stored, kept by later states; all in UTC, as
//!   Django stores them with `USE_TZ = True`.
//!
//! A row per task id, updated through its states: one `INSERT … ON DUPLICATE KEY UPDATE` per
//! batch (rows are applied in order, so a STARTED and a SUCCESS of the same task in one batch
//! end as SUCCESS with `date_started`). A batch too large for one statement is split, and the
//! parts are committed in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use celeriac_protocol::pyjson;
use celeriac_protocol::result::State;
use serde_json::Value;
use sqlx::Connection as _;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};
use tracing::{error, info, warn};

use super::{BackendError, Entry, ResultBackend};
use crate::config::WorkerConfig;
use crate::mysql::DatabaseUrl;

const NAME: &str = "django-db result backend";
const TABLE: &str = "django_celery_results_taskresult";
/// Kombu's JSON serializer, as django-celery-results records it.
const CONTENT_TYPE: &str = "application/json";
const CONTENT_ENCODING: &str = "utf-8";
/// Parameters bound per row.
const PARAMS_PER_ROW: usize = 13;
/// Most bytes of values in one statement (well under any `max_allowed_packet`).
const STATEMENT_BYTES: usize = 4 << 20;
/// The pipeline writes one batch at a time; a second connection covers a reconnect.
const POOL_SIZE: u32 = 2;
/// How long a store waits for a connection before it fails (and is retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// One row as it is written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    task_id: String,
    status: &'static str,
    result: String,
    traceback: Option<String>,
    meta: String,
    task_name: Option<String>,
    task_args: Option<String>,
    task_kwargs: Option<String>,
    worker: Option<String>,
    periodic_task_name: Option<String>,
    /// When the state was reached, in microseconds since the epoch (UTC).
    at: i64,
    /// Whether this is STARTED, which sets `date_started`.
    started: bool,
}

impl Row {
    /// Bytes of values, for splitting statements.
    fn size(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.task_id.len()
            + self.result.len()
            + self.meta.len()
            + opt(&self.traceback)
            + opt(&self.task_name)
            + opt(&self.task_args)
            + opt(&self.task_kwargs)
            + opt(&self.worker)
            + opt(&self.periodic_task_name)
            + 64
    }
}

/// django-celery-results' table in the database of `DATABASE_URL`.
#[derive(Debug)]
pub(crate) struct DjangoDb {
    pool: MySqlPool,
    extended: bool,
    hostname: String,
    /// The URL (its `Debug` shows it with the password hidden).
    url: DatabaseUrl,
    /// The server's `max_allowed_packet`, once read (0: not yet).
    max_packet: Arc<AtomicU64>,
}

impl DjangoDb {
    /// A backend on `url`. The pool connects lazily, so the worker starts while the database
    /// is down (stores then wait for it); a background check says at once if the table is
    /// missing.
    pub(crate) fn connect(url: &DatabaseUrl, config: &WorkerConfig) -> Self {
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(url.options().clone());
        let db = Self {
            pool,
            extended: config.result_extended,
            hostname: config.hostname.clone(),
            url: url.clone(),
            max_packet: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(check_table(
            db.pool.clone(),
            db.max_packet.clone(),
            db.url.redacted().to_owned(),
        ));
        db
    }

    async fn max_packet(&self) -> Result<u64, sqlx::Error> {
        let known = self.max_packet.load(Ordering::Relaxed);
        if known > 0 {
            return Ok(known);
        }
        let read = read_max_packet(&self.pool).await?;
        self.max_packet.store(read, Ordering::Relaxed);
        Ok(read)
    }

    /// Maps an error to a backend error; when the pool gave up waiting for a connection,
    /// which sqlx reports without the cause, one direct connection finds out why.
    async fn explain(&self, e: sqlx::Error) -> BackendError {
        if !matches!(e, sqlx::Error::PoolTimedOut) {
            return classify(e);
        }
        let attempt = tokio::time::timeout(
            ACQUIRE_TIMEOUT,
            MySqlConnection::connect_with(self.url.options()),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                classify(e)
            }
            Ok(Err(cause)) => BackendError::transient(NAME, CannotConnect(cause)),
            Err(_) => classify(e),
        }
    }

    /// Writes the rows: one statement, or several in one transaction.
    async fn write(&self, batch: &[Row], max_packet: u64) -> Result<(), sqlx::Error> {
        let limit = usize::try_from(max_packet / 2)
            .unwrap_or(usize::MAX)
            .min(STATEMENT_BYTES);
        let chunks = chunks(batch, limit);
        if let [only] = chunks.as_slice() {
            // One statement is atomic on its own.
            upsert(only).execute(&self.pool).await?;
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in &chunks {
            upsert(chunk).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

async fn read_max_packet(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    let row = sqlx::query("SELECT CAST(@@max_allowed_packet AS UNSIGNED)")
        .fetch_one(pool)
        .await?;
    row.try_get::<u64, _>(0)
}

/// Says at startup whether the table is there with the columns written (a missing migration
/// would otherwise show only when the first result waits for it).
async fn check_table(pool: MySqlPool, max_packet: Arc<AtomicU64>, url: String) {
    let columns = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ? \
         AND column_name IN ('task_id', 'status', 'content_type', 'content_encoding', 'result', \
         'traceback', 'meta', 'task_name', 'task_args', 'task_kwargs', 'worker', \
         'periodic_task_name', 'date_created', 'date_done', 'date_started')",
    )
    .bind(TABLE)
    .fetch_one(&pool)
    .await
    .and_then(|row| row.try_get::<i64, _>(0));
    match columns {
        Ok(15) => info!("django-db results: table {TABLE} found in {url}"),
        Ok(n) => error!(
            "django-db results: {TABLE} in {url} lacks {} of the columns django-celery-results 2.6 has; \
             run `manage.py migrate django_celery_results`. Results wait (unacked) until it is there",
            15 - n
        ),
        Err(e) => {
            warn!(error = %e, "django-db results: cannot reach {url} yet; results wait until it answers")
        }
    }
    if let Ok(n) = read_max_packet(&pool).await {
        max_packet.store(n, Ordering::Relaxed);
    }
}

/// Sorts database errors: the ones about the records themselves are permanent; everything else
/// (connection, server down or read-only, locks, a table not migrated yet, privileges) may pass,
/// and the results wait, unacked, rather than being dropped.
fn classify(e: sqlx::Error) -> BackendError {
    let permanent = match &e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => refuses_the_data(my.number(), my.code()),
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => false,
        _ => true,
    };
    if permanent {
        BackendError::permanent(NAME, e)
    } else {
        BackendError::transient(NAME, e)
    }
}

/// MySQL/MariaDB errors that refuse a value, so retrying the same row cannot help.
fn refuses_the_data(number: u16, sqlstate: Option<&str>) -> bool {
    // 1048 column cannot be null, 1153 packet too large, 1264 out of range, 1292 bad datetime,
    // 1300 invalid character string, 1366 incorrect string value, 1406 data too long.
    matches!(number, 1048 | 1153 | 1264 | 1292 | 1300 | 1366 | 1406)
        || sqlstate.is_some_and(|s| s.starts_with("22") || s.starts_with("23"))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot connect: {0}")]
struct CannotConnect(sqlx::Error);

#[derive(Debug, thiserror::Error)]
#[error(
    "the row of task {task_id} has {size} bytes, more than the server's max_allowed_packet ({max})"
)]
struct TooLarge {
    task_id: String,
    size: usize,
    max: u64,
}

impl ResultBackend for DjangoDb {
    type Record = Row;

    fn prepare(&self, entry: Entry<'_>) -> Row {
        row(entry, self.extended, &self.hostname)
    }

    fn task_id(record: &Row) -> &str {
        &record.task_id
    }

    async fn store(&self, batch: &[Row]) -> Result<(), BackendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let max = match self.max_packet().await {
            Ok(max) => max,
            Err(e) => return Err(self.explain(e).await),
        };
        if let Some(big) = batch.iter().find(|r| r.size() as u64 + 1024 > max) {
            return Err(BackendError::permanent(
                NAME,
                TooLarge {
                    task_id: big.task_id.clone(),
                    size: big.size(),
                    max,
                },
            ));
        }
        match self.write(batch, max).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(e).await),
        }
    }

    fn describe(&self) -> String {
        format!(
            "in {TABLE} (django-celery-results) at {}{}",
            self.url.redacted(),
            if self.extended { ", extended" } else { "" }
        )
    }
}

/// The row django-celery-results writes for `entry`, by a worker named `hostname`.
fn row(entry: Entry<'_>, extended: bool, hostname: &str) -> Row {
    let msg = entry.msg;
    let h = &msg.headers;
    let mut meta = serde_json::Map::with_capacity(1);
    meta.insert("children".into(), Value::Array(entry.children));
    // Celery passes the request only for registered tasks; without one the extended columns
    // stay NULL.
    let extended = extended && entry.registered;
    let args = || match &h.argsrepr {
        Some(repr) => pyjson::dumps(repr),
        None => pyjson::dumps(&msg.args),
    };
    let kwargs = || match &h.kwargsrepr {
        Some(repr) => pyjson::dumps(repr),
        None => pyjson::dumps(&msg.kwargs),
    };
    let periodic = || match h.extra.get("periodic_task_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    Row {
        task_id: h.id.clone(),
        status: entry.state.as_str(),
        result: pyjson::dumps(&entry.result),
        traceback: entry.traceback.filter(|_| extended),
        meta: pyjson::dumps(&meta),
        task_name: extended.then(|| h.task.clone()),
        task_args: extended.then(args),
        task_kwargs: extended.then(kwargs),
        worker: extended.then(|| hostname.to_owned()),
        periodic_task_name: if extended { periodic() } else { None },
        at: entry.at.timestamp_micros(),
        started: entry.state == State::Started,
    }
}

/// Splits a batch, in order, into runs of at most `max_bytes` (a row alone may exceed it).
fn chunks(batch: &[Row], max_bytes: usize) -> Vec<&[Row]> {
    let max_rows = (u16::MAX as usize) / PARAMS_PER_ROW;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in batch.iter().enumerate() {
        let size = row.size();
        if i > start && (bytes + size > max_bytes || i - start >= max_rows) {
            out.push(&batch[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    out.push(&batch[start..]);
    out
}

/// `INSERT … ON DUPLICATE KEY UPDATE` of `rows`: Django's `get_or_create` then `save`, which
/// writes every field but `date_created` (and `date_started`, unless this is STARTED).
fn upsert(rows: &[Row]) -> sqlx::query::Query<'static, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    const EPOCH: &str = "'1970-01-01 00:00:00'";
    let mut sql = format!(
        "INSERT INTO {TABLE} (task_id, status, content_type, content_encoding, result, traceback, \
         meta, task_name, task_args, task_kwargs, worker, periodic_task_name, date_created, \
         date_done, date_started) VALUES "
    );
    for i in 0..rows.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?, ?, '{CONTENT_TYPE}', '{CONTENT_ENCODING}', ?, ?, ?, ?, ?, ?, ?, ?, \
             TIMESTAMPADD(MICROSECOND, ?, {EPOCH}), TIMESTAMPADD(MICROSECOND, ?, {EPOCH}), \
             TIMESTAMPADD(MICROSECOND, ?, {EPOCH}))"
        ));
    }
    sql.push_str(
        " ON DUPLICATE KEY UPDATE status = VALUES(status), content_type = VALUES(content_type), \
         content_encoding = VALUES(content_encoding), result = VALUES(result), \
         traceback = VALUES(traceback), meta = VALUES(meta), task_name = VALUES(task_name), \
         task_args = VALUES(task_args), task_kwargs = VALUES(task_kwargs), \
         worker = VALUES(worker), periodic_task_name = VALUES(periodic_task_name), \
         date_done = VALUES(date_done), \
         date_started = COALESCE(VALUES(date_started), date_started)",
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(r.task_id.as_str())
            .bind(r.status)
            .bind(r.result.as_str())
            .bind(r.traceback.as_deref())
            .bind(r.meta.as_str())
            .bind(r.task_name.as_deref())
            .bind(r.task_args.as_deref())
            .bind(r.task_kwargs.as_deref())
            .bind(r.worker.as_deref())
            .bind(r.periodic_task_name.as_deref())
            .bind(r.at)
            .bind(r.at)
            .bind(r.started.then_some(r.at));
    }
    q
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::TaskMessage;
    use celeriac_protocol::result::PyException;
    use chrono::{TimeZone as _, Utc};
    use serde_json::json;

    use super::*;

    fn message(args: Vec<Value>, kwargs: Value) -> TaskMessage {
        let kwargs = kwargs.as_object().cloned().unwrap_or_default();
        TaskMessage::new("celeriac.test.add", "t1", args, kwargs, "celery")
    }

    fn entry(msg: &TaskMessage, state: State, result: Value) -> Entry<'_> {
        Entry {
            msg,
            registered: true,
            state,
            result,
            traceback: Some("Traceback ...".into()),
            children: Vec::new(),
            at: Utc
                .with_ymd_and_hms(2026, 12, 1, 10, 0, 0)
                .single()
                .expect("a valid time"),
        }
    }

    #[test]
    fn without_extended_the_request_columns_and_traceback_stay_null() {
        let msg = message(vec![json!(2), json!(3)], json!({}));
        let exc = PyException::builtin("ValueError", "bad \u{e9}").to_value();
        let r = row(entry(&msg, State::Failure, exc), false, "w1@host");
        assert_eq!(r.status, "FAILURE");
        assert_eq!(
            r.result,
            r#"{"exc_type": "ValueError", "exc_message": ["bad \u00e9"], "exc_module": "builtins"}"#
        );
        assert_eq!(r.meta, r#"{"children": []}"#);
        assert_eq!(
            (
                r.traceback,
                r.task_name,
                r.task_args,
                r.task_kwargs,
                r.worker
            ),
            (None, None, None, None, None)
        );
        assert!(!r.started);
        assert_eq!(r.at, 1_796_119_200_000_000);
    }

    #[test]
    fn extended_columns_hold_the_json_of_the_reprs() {
        let mut msg = message(vec![json!(2), json!("x")], json!({"k": null}));
        msg.headers
            .extra
            .insert("periodic_task_name".into(), json!("nightly"));
        let mut e = entry(&msg, State::Retry, Value::Null);
        e.children = vec![json!([["t1", null], null])];
        let r = row(e, true, "w1@host");
        assert_eq!(r.task_name.as_deref(), Some("celeriac.test.add"));
        assert_eq!(r.task_args.as_deref(), Some(r#""[2, 'x']""#));
        assert_eq!(r.task_kwargs.as_deref(), Some(r#""{'k': None}""#));
        assert_eq!(r.worker.as_deref(), Some("w1@host"));
        assert_eq!(r.periodic_task_name.as_deref(), Some("nightly"));
        assert_eq!(r.traceback.as_deref(), Some("Traceback ..."));
        assert_eq!(r.meta, r#"{"children": [[["t1", null], null]]}"#);
        assert_eq!(r.result, "null");
    }

    #[test]
    fn without_reprs_the_arguments_themselves_are_stored() {
        // Protocol 1 messages carry no argsrepr: Celery stores the arguments' JSON.
        let mut msg = message(vec![json!(2), json!("\u{e9}")], json!({"a": [1.5]}));
        msg.headers.argsrepr = None;
        msg.headers.kwargsrepr = None;
        let r = row(entry(&msg, State::Started, json!({"pid": 7})), true, "w");
        assert_eq!(r.task_args.as_deref(), Some(r#"[2, "\u00e9"]"#));
        assert_eq!(r.task_kwargs.as_deref(), Some(r#"{"a": [1.5]}"#));
        assert!(r.started);
        assert_eq!(r.result, r#"{"pid": 7}"#);
    }

    #[test]
    fn an_unregistered_task_is_stored_without_its_request() {
        let msg = message(vec![], json!({}));
        let mut e = entry(&msg, State::Failure, Value::Null);
        e.registered = false;
        let r = row(e, true, "w");
        assert_eq!((r.task_name, r.worker, r.task_args), (None, None, None));
    }

    #[test]
    fn batches_split_by_size_in_order() {
        let msg = message(vec![], json!({}));
        let rows: Vec<Row> = (0..5)
            .map(|i| {
                let big = "x".repeat(if i == 2 { 1000 } else { 10 });
                row(entry(&msg, State::Success, json!(big)), false, "w")
            })
            .collect();
        let sizes = |chunks: Vec<&[Row]>| chunks.iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(sizes(chunks(&rows, 1 << 20)), [5]);
        // The large row goes alone; the others fill up to the limit.
        assert_eq!(sizes(chunks(&rows, 400)), [2, 1, 2]);
        assert_eq!(sizes(chunks(&rows[..1], 1)), [1]);
    }

    #[test]
    fn only_refused_values_are_permanent() {
        assert!(refuses_the_data(1406, Some("22001"))); // data too long
        assert!(refuses_the_data(1048, Some("23000"))); // NULL in a NOT NULL column
        assert!(!refuses_the_data(1213, Some("40001"))); // deadlock
        assert!(!refuses_the_data(1146, Some("42S02"))); // table not migrated yet
        assert!(!refuses_the_data(1045, Some("28000"))); // access denied
        assert!(!refuses_the_data(1290, Some("HY000"))); // read-only server
    }
}
