//! What a beat scheduler needs from Redis: a leader lease, and ticks that are claimed and
//! published in one atomic step, so that any number of beat processes send each tick once.
//!
//! Keys, under a prefix (`celeriac.beat` by default):
//! * `<prefix>.lease`: the leader's random token, with a short expiry the leader renews;
//! * `<prefix>.ticks`: hash, entry name → nominal time of the last tick sent (Unix ms);
//! * `<prefix>.runs`: hash, entry name → how many ticks were sent;
//! * `<prefix>.skipped`: hash, entry name → how many due ticks were not sent (catch-up policy).
//!
//! The publish script is fenced by the lease: a process that lost it (paused, partitioned)
//! cannot publish, and a tick not later than the recorded one is never sent again.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use super::RedisClientError;
use super::broker::{bound_queue, declare_bindings, manager};
use super::scripts::{LEASE, PUBLISH_TICKS, RELEASE_LOCK, SEED_TICKS};
use super::url::RedisUrl;
use crate::envelope::Envelope;
use crate::kombu;

/// Default prefix of the beat keys.
pub const DEFAULT_PREFIX: &str = "celeriac.beat";

/// Most ticks sent per script call, so that one call never blocks Redis for long.
const PUBLISH_CHUNK: usize = 500;

/// Where the lease stands after [`RedisBeat::hold_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// We held it and renewed it.
    Renewed,
    /// It was free and we took it.
    Acquired,
    /// Another process holds it.
    HeldElsewhere,
}

/// A tick to publish: the entry, its nominal fire time, and the message.
#[derive(Debug, Clone)]
pub struct Tick {
    /// Entry name.
    pub entry: String,
    /// Nominal fire time, Unix milliseconds (identifies the tick).
    pub nominal_ms: i64,
    /// Queue whose list receives the message (at the envelope's priority).
    pub queue: String,
    /// The message.
    pub envelope: Envelope,
}

/// What happened to one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// Claimed and pushed onto its queue.
    Sent,
    /// Not later than the tick already recorded for the entry: nothing sent.
    AlreadySent,
    /// Not sent: the lease is held by another process (fenced).
    NotLeader,
}

/// A Redis client for beat.
#[derive(Clone)]
pub struct RedisBeat {
    conn: ConnectionManager,
    url: RedisUrl,
    lease_key: String,
    ticks_key: String,
    runs_key: String,
    skipped_key: String,
}

impl std::fmt::Debug for RedisBeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBeat")
            .field("url", &self.url)
            .field("lease_key", &self.lease_key)
            .finish()
    }
}

impl RedisBeat {
    /// Connects (one attempt: callers retry with their backoff). Keys go under `prefix`.
    pub async fn connect(url: &RedisUrl, prefix: &str) -> Result<Self, RedisClientError> {
        Ok(Self {
            conn: manager(url, Duration::from_secs(10)).await?,
            url: url.clone(),
            lease_key: format!("{prefix}.lease"),
            ticks_key: format!("{prefix}.ticks"),
            runs_key: format!("{prefix}.runs"),
            skipped_key: format!("{prefix}.skipped"),
        })
    }

    /// The broker URL (its `Display` hides the password).
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Takes the lease if it is free, renews it if `token` holds it.
    pub async fn hold_lease(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseState, RedisClientError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let state: i64 = LEASE
            .key(&self.lease_key)
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match state {
            1 => LeaseState::Renewed,
            2 => LeaseState::Acquired,
            _ => LeaseState::HeldElsewhere,
        })
    }

    /// Gives the lease up if `token` still holds it. Returns whether it did.
    pub async fn release_lease(&self, token: &str) -> Result<bool, RedisClientError> {
        let deleted: i64 = RELEASE_LOCK
            .key(&self.lease_key)
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(deleted == 1)
    }

    /// The last tick sent per entry (Unix ms), as recorded by any beat process.
    pub async fn last_ticks(&self) -> Result<HashMap<String, i64>, RedisClientError> {
        Ok(self.conn.clone().hgetall(&self.ticks_key).await?)
    }

    /// How many ticks were sent per entry.
    pub async fn run_counts(&self) -> Result<HashMap<String, u64>, RedisClientError> {
        Ok(self.conn.clone().hgetall(&self.runs_key).await?)
    }

    /// Records `(entry, unix_ms)` as the last tick of entries that have no record yet (what
    /// Celery calls the default `last_run_at`), while `token` holds the lease. Returns the
    /// record of each entry afterwards, or `None` when the lease is held elsewhere. Times are
    /// positive (a recorded `-1` would read as that).
    pub async fn seed_ticks(
        &self,
        token: &str,
        seeds: &[(String, i64)],
    ) -> Result<Option<Vec<i64>>, RedisClientError> {
        let mut recorded = Vec::with_capacity(seeds.len());
        for chunk in seeds.chunks(PUBLISH_CHUNK * 4) {
            let mut inv = SEED_TICKS.prepare_invoke();
            inv.key(&self.lease_key).key(&self.ticks_key).arg(token);
            for (name, ms) in chunk {
                inv.arg(name).arg(*ms);
            }
            let reply: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
            if reply.first() == Some(&-1) {
                return Ok(None);
            }
            if reply.len() != chunk.len() {
                return Err(RedisClientError::Reply(format!(
                    "seed script answered {} values for {} entries",
                    reply.len(),
                    chunk.len()
                )));
            }
            recorded.extend(reply);
        }
        Ok(Some(recorded))
    }

    /// Adds `count` to the number of ticks of `entry` that were due but not sent.
    pub async fn count_skipped(&self, entry: &str, count: u64) -> Result<(), RedisClientError> {
        let _: i64 = self
            .conn
            .clone()
            .hincr(&self.skipped_key, entry, count)
            .await?;
        Ok(())
    }

    /// How many due ticks were not sent per entry (catch-up policy).
    pub async fn skipped_counts(&self) -> Result<HashMap<String, u64>, RedisClientError> {
        Ok(self.conn.clone().hgetall(&self.skipped_key).await?)
    }

    /// The queue a message sent to a direct `exchange` with `routing_key` goes to, from Kombu's
    /// binding set; `None` when no queue is bound.
    pub async fn lookup_queue(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Option<String>, RedisClientError> {
        bound_queue(&mut self.conn.clone(), exchange, routing_key).await
    }

    /// Writes the binding sets a Kombu sender declares for `queues` on first publish.
    pub async fn declare_queues(&self, queues: &[String]) -> Result<(), RedisClientError> {
        declare_bindings(&mut self.conn.clone(), queues).await
    }

    /// Claims and publishes `ticks` while `token` holds the lease. Returns one outcome per tick,
    /// in order; from the first chunk that finds the lease held elsewhere on, every tick is
    /// [`TickOutcome::NotLeader`]. Ticks of one entry must come in ascending order.
    ///
    /// Not cancel-safe in the sense that a dropped call may or may not have sent a chunk; the
    /// tick record makes a retry harmless (a sent tick answers [`TickOutcome::AlreadySent`]).
    pub async fn publish_ticks(
        &self,
        token: &str,
        ticks: &[Tick],
    ) -> Result<Vec<TickOutcome>, RedisClientError> {
        let mut outcomes = Vec::with_capacity(ticks.len());
        for chunk in ticks.chunks(PUBLISH_CHUNK) {
            let mut inv = PUBLISH_TICKS.prepare_invoke();
            inv.key(&self.lease_key)
                .key(&self.ticks_key)
                .key(&self.runs_key)
                .arg(token);
            for t in chunk {
                inv.key(kombu::queue_key(&t.queue, t.envelope.priority()))
                    .arg(&t.entry)
                    .arg(t.nominal_ms)
                    .arg(t.envelope.to_json());
            }
            let reply: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
            if reply.first() == Some(&-1) {
                outcomes.resize(ticks.len(), TickOutcome::NotLeader);
                return Ok(outcomes);
            }
            if reply.len() != chunk.len() {
                return Err(RedisClientError::Reply(format!(
                    "publish script answered {} outcomes for {} ticks",
                    reply.len(),
                    chunk.len()
                )));
            }
            outcomes.extend(reply.into_iter().map(|r| {
                if r == 1 {
                    TickOutcome::Sent
                } else {
                    TickOutcome::AlreadySent
                }
            }));
        }
        Ok(outcomes)
    }
}
