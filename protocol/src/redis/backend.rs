//! Celery's Redis result backend: `celery-task-meta-<id>` records, written with SETEX and
//! PUBLISHed on the same name for clients waiting in `AsyncResult.get()`.

use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use super::RedisClientError;
use super::broker::manager;
use super::scripts::STORE_RESULTS;
use super::url::RedisUrl;
use crate::result::{ResultRecord, task_meta_key};

/// One record to store.
#[derive(Debug, Clone)]
pub struct StoreRequest {
    /// The task id.
    pub task_id: String,
    /// The encoded record ([`ResultRecord::to_json`]).
    pub record: Vec<u8>,
    /// Expiry; `None` keeps it forever.
    pub ttl: Option<Duration>,
}

/// A Redis result backend client.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    url: RedisUrl,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .finish()
    }
}

impl RedisBackend {
    /// Connects (one attempt: callers retry with their backoff).
    pub async fn connect(
        url: &RedisUrl,
        response_timeout: Duration,
    ) -> Result<Self, RedisClientError> {
        Ok(Self {
            conn: manager(url, response_timeout).await?,
            url: url.clone(),
        })
    }

    /// The backend URL (its `Display` hides the password).
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Stores records in one round trip; a key that already holds SUCCESS is left alone, as
    /// Celery does. Returns how many were written.
    pub async fn store(&self, batch: &[StoreRequest]) -> Result<usize, RedisClientError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut inv = STORE_RESULTS.prepare_invoke();
        for req in batch {
            inv.key(task_meta_key(&req.task_id));
        }
        for req in batch {
            let ttl = req.ttl.map(|t| t.as_secs().max(1)).unwrap_or(0);
            inv.arg(ttl).arg(req.record.as_slice());
        }
        let written: usize = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(written)
    }

    /// Reads a task's record; `None` when there is none (PENDING).
    pub async fn get(&self, task_id: &str) -> Result<Option<ResultRecord>, RedisClientError> {
        let raw: Option<Vec<u8>> = self.conn.clone().get(task_meta_key(task_id)).await?;
        raw.map(|r| ResultRecord::from_json(&r).map_err(|e| RedisClientError::Reply(e.to_string())))
            .transpose()
    }
}
