//! Where entries come from: a schedule file, or django-celery-beat's tables. The scheduler polls
//! its source for changes and tells it what was sent, so a database source can write
//! `last_run_at` and `total_run_count` back.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use thiserror::Error;
use tracing::{error, info};

use crate::entry::Entry;
use crate::file::{self, FileError};

/// Ticks of one entry sent in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Entry name.
    pub entry: String,
    /// When they were sent (Celery's `last_run_at` is the send time).
    pub at: DateTime<Utc>,
    /// How many ticks.
    pub count: u32,
    /// The entry was one-off: it is done.
    pub finished: bool,
}

/// A source failed; the scheduler keeps the entries it has and tries again.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The schedule file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The database.
    #[error("django-celery-beat database: {0}")]
    Database(String),
}

/// A source of entries.
pub trait Source: Send {
    /// The entries, when they changed since the previous call (the first call returns them).
    fn poll(&mut self) -> impl Future<Output = Result<Option<Vec<Entry>>, SourceError>> + Send;
    /// Records what was sent.
    fn record(&mut self, sent: &[Sent]) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// How often [`poll`](Self::poll) is worth calling.
    fn poll_every(&self) -> Duration;
    /// What to call it in logs.
    fn describe(&self) -> String;
}

/// A schedule file, read again when its modification time changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    timezone: Tz,
    seen: Option<SystemTime>,
}

impl FileSource {
    /// A source reading `path`, entries without a time zone in `timezone`.
    pub fn new(path: PathBuf, timezone: Tz) -> Self {
        Self {
            path,
            timezone,
            seen: None,
        }
    }
}

impl Source for FileSource {
    async fn poll(&mut self) -> Result<Option<Vec<Entry>>, SourceError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if self.seen.is_some() && modified == self.seen {
            return Ok(None);
        }
        let loaded = file::load(&self.path, self.timezone)?;
        if self.seen.is_some() {
            info!(schedule = %self.path.display(), "schedule file changed: reloaded");
        }
        self.seen = modified;
        for err in &loaded.errors {
            error!(entry = %err.name, reason = %err.reason, "entry not scheduled");
        }
        Ok(Some(loaded.entries))
    }

    async fn record(&mut self, _sent: &[Sent]) -> Result<(), SourceError> {
        Ok(())
    }

    fn poll_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
