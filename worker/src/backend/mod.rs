//! Result backends: where the outcome of each task goes, behind one trait.
//!
//! The runtime ([`crate::outcome`], [`crate::job`]) describes what a task leaves behind as an
//! [`Entry`], backend-neutral and borrowing the message it came from. The backend turns it into
//! its own record with [`ResultBackend::prepare`], in the job's task, so encoding is spread over
//! the runtime's threads; the result pipeline ([`crate::settle`]) then hands the records to
//! [`ResultBackend::store`] in batches, in the order they were settled, and acks their messages
//! only once `store` returned `Ok`, which means the whole batch is durably stored.
//!
//! * [`redis`]: Celery's Redis backend, one script call per batch.
//! * `django_db`: django-celery-results' `TaskResult` table (feature `mysql`), one upsert
//!   statement per batch.
//! * [`NoResults`]: no backend configured; nothing is stored.
//!
//! Which one runs is decided once, by [`connect`], from the configuration.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::Broker;
use celeriac_protocol::TaskMessage;
use celeriac_protocol::redis::Backoff;
use celeriac_protocol::result::State;
use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{ResultBackendConfig, WorkerConfig};
use crate::inflight::InFlight;
use crate::settle::{self, Pipeline, Settler};

#[cfg(feature = "mysql")]
pub(crate) mod django_db;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod redis;

/// What a task leaves in the result backend at one state, before any backend encodes it.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The message whose task this is: its id, and the request fields backends store.
    pub msg: &'a TaskMessage,
    /// `false` for a message of an unregistered task, whose failure Celery stores without the
    /// task's request (so without the extended fields).
    pub registered: bool,
    /// The state.
    pub state: State,
    /// The return value, an encoded exception, or state metadata (`{pid, hostname}`).
    pub result: Value,
    /// Traceback text, for exceptions.
    pub traceback: Option<String>,
    /// Result tuples of the tasks this one launched.
    pub children: Vec<Value>,
    /// When the state was reached.
    pub at: DateTime<Utc>,
}

/// A place results are stored.
///
/// Implementations are cheap to share: the pipeline holds one in an `Arc` and the jobs call
/// [`prepare`](Self::prepare) through it concurrently.
pub(crate) trait ResultBackend: Send + Sync + 'static {
    /// One entry, encoded as this backend stores it.
    type Record: Send + Sync + 'static;

    /// Encodes an entry. Runs in the job that settles the task, never in the pipeline.
    fn prepare(&self, entry: Entry<'_>) -> Self::Record;

    /// The task a record is for, for logs.
    fn task_id(record: &Self::Record) -> &str;

    /// Stores a batch, in order (a later record of the same task wins). `Ok` means every
    /// record is durably stored; on `Err` the caller retries the batch (transient) or stores
    /// its records one by one (permanent), so storing must be idempotent.
    fn store(
        &self,
        batch: &[Self::Record],
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Where the results go, for the startup line (passwords hidden).
    fn describe(&self) -> String;
}

/// A failed store or connection.
#[derive(Debug, Error)]
#[error("{backend}: {source}")]
pub struct BackendError {
    backend: &'static str,
    transient: bool,
    #[source]
    source: Box<dyn StdError + Send + Sync>,
}

impl BackendError {
    /// A failure that waiting can fix (connection lost, server down or busy, lock timeout).
    pub(crate) fn transient(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            backend,
            transient: true,
            source: source.into(),
        }
    }

    /// A failure that retrying the same records cannot fix (a value the store refuses).
    pub(crate) fn permanent(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            backend,
            transient: false,
            source: source.into(),
        }
    }

    /// Whether retrying later can succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// No result backend: entries are dropped (Celery's `DisabledBackend`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoResults;

impl ResultBackend for NoResults {
    type Record = ();

    fn prepare(&self, _entry: Entry<'_>) {}

    fn task_id((): &()) -> &str {
        ""
    }

    async fn store(&self, _batch: &[()]) -> Result<(), BackendError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "disabled".into()
    }
}

/// What the result pipeline needs besides the backend.
#[derive(Debug)]
pub(crate) struct PipelineDeps {
    pub broker: Arc<dyn Broker>,
    pub inflight: Arc<InFlight>,
    pub backoff: Backoff,
    pub closing: CancellationToken,
    pub give_up: CancellationToken,
}

/// A connected backend, of whichever kind, ready to run the result pipeline.
pub(crate) trait Connected: Send {
    /// Where the results go, for the startup line.
    fn describe(&self) -> String;
    /// Starts the pipeline that stores this backend's records and then acks.
    fn start(self: Box<Self>, deps: PipelineDeps) -> (Settler, Pipeline);
}

impl<B: ResultBackend> Connected for B {
    fn describe(&self) -> String {
        ResultBackend::describe(self)
    }

    fn start(self: Box<Self>, deps: PipelineDeps) -> (Settler, Pipeline) {
        settle::start(Arc::new(*self), deps)
    }
}

/// Connects the configured backend (one attempt; the caller retries transient errors).
/// `response_timeout` bounds each reply from a Redis backend.
pub(crate) async fn connect(
    config: &WorkerConfig,
    response_timeout: Duration,
) -> Result<Box<dyn Connected>, BackendError> {
    Ok(match &config.result_backend {
        None => Box::new(NoResults),
        Some(ResultBackendConfig::Redis(url)) => {
            Box::new(redis::RedisResults::connect(url, config, response_timeout).await?)
        }
        #[cfg(feature = "mysql")]
        Some(ResultBackendConfig::DjangoDb(url)) => {
            Box::new(django_db::DjangoDb::connect(url, config))
        }
    })
}
