//! django-celery-beat's tables as a source of entries, on MySQL/MariaDB and PostgreSQL through
//! one sqlx code path (the `Any` driver), with the DatabaseScheduler's semantics:
//!
//! * enabled rows only; `interval`, `crontab` (in its own `timezone` column), `clocked` and
//!   `solar` references (the solar row's decimal latitude and longitude read as text, and
//!   validated as Celery does); `start_time`, `expires` (no tick after it, and the row is
//!   disabled as Python does), `expire_seconds`, `one_off` (disabled after its run, keeping its
//!   `total_run_count`, where Python resets it to 0);
//! * message options from `queue`, `exchange`, `routing_key`, `priority`, `expires` /
//!   `expire_seconds` and the JSON `headers`, plus `periodic_task_name`;
//! * a row never sent starts from its `last_run_at`, else its `date_changed`, as Python's
//!   `ModelEntry`;
//! * changes made through Django bump `django_celery_beat_periodictasks.last_update`, which is
//!   read every second; everything is also reloaded every reload interval, for raw SQL edits;
//! * after each send `last_run_at` (the send time, as Python) and `total_run_count` are written
//!   at once, without bumping the change row (as Python's own writes do not).
//!
//! Times: Django with `USE_TZ = True` stores UTC, in `DATETIME(6)` on MySQL and `timestamptz`
//! on PostgreSQL. Both are read and written as microseconds since the epoch computed by the
//! server, so the session time zone never matters.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row as _};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::entry::{CatchUp, Entry, Expires, SendOptions};
use crate::file::{EntryError, Loaded};
use crate::schedule::{Crontab, Schedule, Solar};
use crate::source::{Sent, Source, SourceError};

/// The database cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DjangoDbError {
    /// The URL is not `mysql://…` or `postgres://…`.
    #[error("expected a mysql:// or postgres:// URL, found {0:?}")]
    Scheme(String),
    /// A query or the connection failed.
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

impl From<DjangoDbError> for SourceError {
    fn from(e: DjangoDbError) -> Self {
        Self::Database(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    MySql,
    Postgres,
}

impl Dialect {
    /// An integer expression as a 64-bit integer.
    fn int(self, expr: &str) -> String {
        match self {
            Self::MySql => format!("CAST({expr} AS SIGNED)"),
            Self::Postgres => format!("CAST({expr} AS BIGINT)"),
        }
    }

    /// A boolean column as 0 or 1.
    fn flag(self, col: &str) -> String {
        self.int(&format!("CASE WHEN {col} THEN 1 ELSE 0 END"))
    }

    /// A UTC timestamp column as microseconds since the epoch.
    fn micros(self, col: &str) -> String {
        match self {
            Self::MySql => format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {col})"),
            Self::Postgres => format!("CAST(EXTRACT(EPOCH FROM {col}) * 1000000 AS BIGINT)"),
        }
    }

    /// The timestamp of parameter `n` (microseconds since the epoch).
    fn timestamp_param(self, n: usize) -> String {
        match self {
            Self::MySql => "TIMESTAMPADD(MICROSECOND, ?, '1970-01-01 00:00:00')".into(),
            Self::Postgres => {
                format!(
                    "(TIMESTAMPTZ 'epoch' + (CAST(${n} AS BIGINT) || ' microseconds')::interval)"
                )
            }
        }
    }

    fn param(self, n: usize) -> String {
        match self {
            Self::MySql => "?".into(),
            Self::Postgres => format!("${n}"),
        }
    }

    fn text(self, col: &str) -> String {
        match self {
            Self::MySql => format!("CAST({col} AS CHAR)"),
            Self::Postgres => format!("CAST({col} AS TEXT)"),
        }
    }

    /// Marks the schedule as changed, as django-celery-beat's `PeriodicTasks.changed` does.
    fn bump_changed(self) -> &'static str {
        match self {
            Self::MySql => {
                "INSERT INTO django_celery_beat_periodictasks (ident, last_update) \
                 VALUES (1, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE last_update = UTC_TIMESTAMP(6)"
            }
            Self::Postgres => {
                "INSERT INTO django_celery_beat_periodictasks (ident, last_update) \
                 VALUES (1, now()) ON CONFLICT (ident) DO UPDATE SET last_update = now()"
            }
        }
    }
}

/// The statements, written once per dialect from fixed fragments: no data is ever formatted
/// into them (values are bound), which is what `AssertSqlSafe` asserts where they are used.
#[derive(Debug, Clone)]
struct Statements {
    changed_at: Arc<str>,
    load: Arc<str>,
    record_run: Arc<str>,
    disable: Arc<str>,
    bump_changed: &'static str,
}

impl Statements {
    fn new(d: Dialect) -> Self {
        Self {
            changed_at: format!(
                "SELECT {} FROM django_celery_beat_periodictasks WHERE ident = 1",
                d.micros("last_update")
            )
            .into(),
            load: load_statement(d).into(),
            record_run: format!(
                "UPDATE django_celery_beat_periodictask SET last_run_at = {}, \
                 total_run_count = total_run_count + {} WHERE name = {}",
                d.timestamp_param(1),
                d.param(2),
                d.param(3)
            )
            .into(),
            disable: format!(
                "UPDATE django_celery_beat_periodictask SET enabled = FALSE WHERE name = {}",
                d.param(1)
            )
            .into(),
            bump_changed: d.bump_changed(),
        }
    }
}

fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(statement))
}

fn load_statement(d: Dialect) -> String {
    format!(
        "SELECT t.name, t.task, t.args, t.kwargs, t.queue, t.exchange, t.routing_key, t.headers, \
         {priority}, {expire_seconds}, {expires}, {one_off}, {start_time}, {last_run_at}, \
         {date_changed}, {every}, i.period, c.minute, c.hour, c.day_of_week, c.day_of_month, \
         c.month_of_year, {crontab_tz}, {clocked}, s.event, {latitude}, {longitude} \
         FROM django_celery_beat_periodictask t \
         LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id \
         LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id \
         LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id \
         LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id \
         WHERE t.enabled ORDER BY t.name",
        priority = d.int("t.priority"),
        expire_seconds = d.int("t.expire_seconds"),
        expires = d.micros("t.expires"),
        one_off = d.flag("t.one_off"),
        start_time = d.micros("t.start_time"),
        last_run_at = d.micros("t.last_run_at"),
        date_changed = d.micros("t.date_changed"),
        every = d.int("i.every"),
        crontab_tz = d.text("c.timezone"),
        clocked = d.micros("k.clocked_time"),
        latitude = d.text("s.latitude"),
        longitude = d.text("s.longitude"),
    )
}

/// A connection pool to a Django database holding django-celery-beat's tables.
#[derive(Debug, Clone)]
pub struct DjangoDb {
    pool: AnyPool,
    statements: Statements,
    redacted: String,
}

fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(us).single()
}

impl DjangoDb {
    /// Connects to `mysql://user:pass@host:port/db` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self, DjangoDbError> {
        let dialect = match url.split_once("://").map(|(s, _)| s) {
            Some("mysql" | "mariadb") => Dialect::MySql,
            Some("postgres" | "postgresql") => Dialect::Postgres,
            _ => return Err(DjangoDbError::Scheme(redact(url))),
        };
        let url = if let Some(rest) = url.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else {
            url.to_owned()
        };
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        Ok(Self {
            pool,
            statements: Statements::new(dialect),
            redacted: redact(&url),
        })
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.redacted
    }

    /// `django_celery_beat_periodictasks.last_update` in microseconds, if the row exists.
    pub async fn changed_at(&self) -> Result<Option<i64>, DjangoDbError> {
        let row = sqlx::query(sql(&self.statements.changed_at))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>(0)?,
            None => None,
        })
    }

    /// Every enabled periodic task, as entries (bad rows are reported by name).
    pub async fn load(&self, default_tz: Tz) -> Result<Loaded, DjangoDbError> {
        let rows = sqlx::query(sql(&self.statements.load))
            .fetch_all(&self.pool)
            .await?;
        let mut loaded = Loaded::default();
        for row in rows {
            let name: String = row.try_get(0)?;
            match entry_of(&row, default_tz) {
                Ok(entry) => loaded.entries.push(entry),
                Err(reason) => loaded.errors.push(EntryError { name, reason }),
            }
        }
        Ok(loaded)
    }

    /// Writes `last_run_at` and adds to `total_run_count` after sends, in one transaction,
    /// without bumping the change row. One-off tasks that finished are disabled, and then the
    /// change row is bumped, as a real edit.
    pub async fn record(&self, sent: &[Sent]) -> Result<(), DjangoDbError> {
        let mut tx = self.pool.begin().await?;
        for s in sent {
            sqlx::query(sql(&self.statements.record_run))
                .bind(s.at.timestamp_micros())
                .bind(i64::from(s.count))
                .bind(&s.entry)
                .execute(&mut *tx)
                .await?;
        }
        let finished: Vec<&Sent> = sent.iter().filter(|s| s.finished).collect();
        for s in &finished {
            sqlx::query(sql(&self.statements.disable))
                .bind(&s.entry)
                .execute(&mut *tx)
                .await?;
        }
        if !finished.is_empty() {
            sqlx::query(self.statements.bump_changed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Disables tasks whose `expires` has passed, as Python's `ModelEntry.is_due` does, and
    /// bumps the change row.
    pub async fn disable(&self, names: &[String]) -> Result<(), DjangoDbError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for name in names {
            sqlx::query(sql(&self.statements.disable))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(self.statements.bump_changed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A URL with the password replaced by `***`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

fn text(row: &AnyRow, i: usize) -> Result<Option<String>, String> {
    row.try_get::<Option<String>, _>(i)
        .map(|s| s.filter(|s| !s.is_empty()))
        .map_err(|e| format!("column {i}: {e}"))
}

fn int(row: &AnyRow, i: usize) -> Result<Option<i64>, String> {
    row.try_get::<Option<i64>, _>(i)
        .map_err(|e| format!("column {i}: {e}"))
}

fn instant(row: &AnyRow, i: usize) -> Result<Option<DateTime<Utc>>, String> {
    Ok(int(row, i)?.and_then(from_micros))
}

fn json(row: &AnyRow, i: usize, what: &str, default: Value) -> Result<Value, String> {
    match text(row, i)? {
        None => Ok(default),
        Some(s) => serde_json::from_str(&s).map_err(|e| format!("{what} is not JSON: {e}")),
    }
}

/// One row of the load query as an entry.
fn entry_of(row: &AnyRow, default_tz: Tz) -> Result<Entry, String> {
    let name = text(row, 0)?.unwrap_or_default();
    let task = text(row, 1)?.ok_or("task is empty")?;
    let args = match json(row, 2, "args", Value::Array(Vec::new()))? {
        Value::Array(a) => a,
        _ => return Err("args is not a JSON list".into()),
    };
    let kwargs = match json(row, 3, "kwargs", Value::Object(Map::new()))? {
        Value::Object(m) => m,
        _ => return Err("kwargs is not a JSON object".into()),
    };
    let mut headers = match json(row, 7, "headers", Value::Object(Map::new()))? {
        Value::Object(m) => m,
        _ => return Err("headers is not a JSON object".into()),
    };
    headers.insert("periodic_task_name".into(), Value::String(name.clone()));
    let priority = int(row, 8)?
        .map(|p| u8::try_from(p).map_err(|_| format!("priority {p} is outside 0..=255")))
        .transpose()?;
    let expire_seconds = int(row, 9)?;
    let expires_at = instant(row, 10)?;
    let expires = match (expires_at, expire_seconds) {
        (Some(at), _) => Some(Expires::At(at.fixed_offset())),
        (None, Some(s)) if s > 0 => Some(Expires::After(Duration::from_secs(s as u64))),
        _ => None,
    };
    let one_off = int(row, 11)? == Some(1);
    let start_time = instant(row, 12)?;
    let last_run_at = instant(row, 13)?;
    let date_changed = instant(row, 14)?;
    let mut timezone = default_tz;
    let schedule = if let Some(every) = int(row, 15)? {
        let period = text(row, 16)?.unwrap_or_default();
        let unit = match period.as_str() {
            "days" => 86_400_000_000,
            "hours" => 3_600_000_000,
            "minutes" => 60_000_000,
            "seconds" => 1_000_000,
            "microseconds" => 1,
            other => return Err(format!("interval period {other:?} is unknown")),
        };
        if every <= 0 {
            return Err(format!("interval every = {every} is not positive"));
        }
        Schedule::Interval(Duration::from_micros((every as u64).saturating_mul(unit)))
    } else if let Some(minute) = text(row, 17)? {
        let field = |i| text(row, i).map(|s| s.unwrap_or_else(|| "*".into()));
        let cron = Crontab::parse(&minute, &field(18)?, &field(19)?, &field(20)?, &field(21)?)
            .map_err(|e| e.to_string())?;
        if let Some(tz) = text(row, 22)? {
            timezone = tz
                .parse::<Tz>()
                .map_err(|_| format!("unknown crontab timezone {tz:?}"))?;
        }
        Schedule::Crontab(cron)
    } else if let Some(at) = instant(row, 23)? {
        Schedule::Clocked(at)
    } else if let Some(event) = text(row, 24)? {
        let degrees = |i, what| -> Result<f64, String> {
            let t = text(row, i)?.ok_or(format!("solar {what} is empty"))?;
            t.trim()
                .parse()
                .map_err(|_| format!("solar {what} {t:?} is not a number"))
        };
        let solar = Solar::new(&event, degrees(25, "latitude")?, degrees(26, "longitude")?)
            .map_err(|e| e.to_string())?;
        Schedule::Solar(solar)
    } else {
        return Err(
            "no schedule: the row references no interval, crontab, clocked or solar schedule"
                .into(),
        );
    };
    Ok(Entry {
        name,
        task,
        args,
        kwargs,
        schedule,
        timezone,
        options: SendOptions {
            queue: text(row, 4)?,
            exchange: text(row, 5)?,
            routing_key: text(row, 6)?,
            priority,
            expires,
            headers,
        },
        catch_up: CatchUp::Once,
        start_time,
        until: expires_at,
        one_off,
        seed: last_run_at.or(date_changed),
    })
}

/// The database as a [`Source`]: the change row read every second, a full reload every
/// `reload_every`.
#[derive(Debug)]
pub struct DjangoSource {
    db: DjangoDb,
    timezone: Tz,
    reload_every: Duration,
    changed_at: Option<Option<i64>>,
    loaded_at: Option<Instant>,
    recheck: bool,
    errors: Vec<EntryError>,
}

impl DjangoSource {
    /// A source on `db`; rows without a time zone of their own are read in `timezone`.
    pub fn new(db: DjangoDb, timezone: Tz, reload_every: Duration) -> Self {
        Self {
            db,
            timezone,
            reload_every,
            changed_at: None,
            loaded_at: None,
            recheck: false,
            errors: Vec::new(),
        }
    }
}

impl Source for DjangoSource {
    async fn poll(&mut self) -> Result<Option<Vec<Entry>>, SourceError> {
        let changed_at = self.db.changed_at().await.map_err(SourceError::from)?;
        let due = self
            .loaded_at
            .is_none_or(|at| at.elapsed() >= self.reload_every);
        let changed = self.changed_at.is_some() && self.changed_at != Some(changed_at);
        // Django bumps the change row in a pre_save signal, committed before the row itself:
        // a reload right after the bump can still read the old row, so read once more.
        if !due && !changed && !self.recheck {
            return Ok(None);
        }
        self.recheck = changed;
        let mut loaded = self
            .db
            .load(self.timezone)
            .await
            .map_err(SourceError::from)?;
        if changed {
            info!("django-celery-beat tables changed: reloaded");
        }
        self.changed_at = Some(changed_at);
        self.loaded_at = Some(Instant::now());
        if loaded.errors != self.errors {
            for err in &loaded.errors {
                error!(entry = %err.name, reason = %err.reason, "entry not scheduled");
            }
            self.errors = loaded.errors.clone();
        }
        let now = Utc::now();
        let expired: Vec<String> = loaded
            .entries
            .iter()
            .filter(|e| e.until.is_some_and(|u| u <= now))
            .map(|e| e.name.clone())
            .collect();
        if !expired.is_empty() {
            info!(entries = ?expired, "expired: disabling them, as Python beat does");
            if let Err(e) = self.db.disable(&expired).await {
                warn!(error = %e, "cannot disable expired tasks");
            }
            loaded.entries.retain(|e| !expired.contains(&e.name));
        }
        Ok(Some(loaded.entries))
    }

    async fn record(&mut self, sent: &[Sent]) -> Result<(), SourceError> {
        self.db.record(sent).await.map_err(SourceError::from)
    }

    fn poll_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn describe(&self) -> String {
        self.db.url().to_owned()
    }
}
