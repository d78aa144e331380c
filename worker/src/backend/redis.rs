//! Celery's Redis result backend: `celery-task-meta-<id>` records in Celery's JSON layout,
//! stored (and published to `AsyncResult.get()` waiters) by one script call per batch.

use std::sync::Once;
use std::time::Duration;

use celeriac_protocol::redis::{RedisBackend, RedisClientError, RedisUrl, StoreRequest};
use celeriac_protocol::result::ResultRecord;
use chrono_tz::Tz;
use tracing::warn;

use super::{BackendError, Entry, ResultBackend};
use crate::config::WorkerConfig;

const NAME: &str = "redis result backend";

/// The Redis backend, with the expiry and time zone its records are written with.
#[derive(Debug)]
pub(crate) struct RedisResults {
    client: RedisBackend,
    ttl: Option<Duration>,
    timezone: Tz,
}

impl RedisResults {
    /// Connects to `url` (one attempt).
    pub(crate) async fn connect(
        url: &RedisUrl,
        config: &WorkerConfig,
        response_timeout: Duration,
    ) -> Result<Self, BackendError> {
        if config.result_extended {
            // Once, though connecting may be retried.
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                warn!(
                    "result_extended is applied by the django-db backend only: Redis records keep Celery's basic layout"
                );
            });
        }
        Ok(Self {
            client: RedisBackend::connect(url, response_timeout)
                .await
                .map_err(error)?,
            ttl: config.result_expires,
            timezone: config.timezone,
        })
    }
}

fn error(e: RedisClientError) -> BackendError {
    if e.is_transient() {
        BackendError::transient(NAME, e)
    } else {
        BackendError::permanent(NAME, e)
    }
}

impl ResultBackend for RedisResults {
    type Record = StoreRequest;

    fn prepare(&self, entry: Entry<'_>) -> StoreRequest {
        let h = &entry.msg.headers;
        let mut rec = ResultRecord::new(&h.id, entry.state, entry.result, entry.at, self.timezone);
        rec.traceback = entry.traceback;
        rec.children = entry.children;
        if entry.registered {
            // Celery stores an unregistered task's failure without its request, so without
            // these.
            rec.group_id = h.group.clone();
            rec.parent_id = h.parent_id.clone();
        }
        StoreRequest {
            task_id: h.id.clone(),
            record: rec.to_json(),
            ttl: self.ttl,
        }
    }

    fn task_id(record: &StoreRequest) -> &str {
        &record.task_id
    }

    async fn store(&self, batch: &[StoreRequest]) -> Result<(), BackendError> {
        self.client.store(batch).await.map(drop).map_err(error)
    }

    fn describe(&self) -> String {
        format!("in {}", self.client.url())
    }
}
