//! Restoring unacked messages to their queues, as Kombu's `QoS.restore_visible` does: those
//! that outlived the visibility timeout (any worker's, Python's included), and those a fetch
//! took when its reply was lost.

use redis::AsyncCommands as _;
use tracing::warn;

use super::RedisClientError;
use super::broker::{RedisBroker, bound_queue, now_unix};
use super::scripts::RELEASE_LOCK;
use crate::{envelope, kombu};

impl RedisBroker {
    /// Restores messages unacked for longer than the visibility timeout to their queues, as
    /// Kombu's `restore_visible` does (same lock, same flags, RPUSH). Returns how many moved.
    pub async fn restore_timed_out(&self) -> Result<usize, RedisClientError> {
        let mut conn = self.cmd.clone();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&self.opts.unacked_mutex_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(kombu::UNACKED_MUTEX_EXPIRE_MS)
            .query_async(&mut conn)
            .await?;
        if locked.is_none() {
            return Ok(0);
        }
        let result = self.restore_locked().await;
        let released: Result<i64, _> = RELEASE_LOCK
            .key(&self.opts.unacked_mutex_key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = released {
            warn!(error = %e, "could not release the restore lock; it expires by itself");
        }
        result
    }

    async fn restore_locked(&self) -> Result<usize, RedisClientError> {
        let mut conn = self.cmd.clone();
        let mut restored = 0;
        for _round in 0..16 {
            let cutoff = now_unix() - self.opts.visibility_timeout.as_secs_f64();
            let due: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&self.opts.unacked_index_key)
                .arg("-inf")
                .arg(cutoff)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(self.opts.restore_batch)
                .query_async(&mut conn)
                .await?;
            let mut moved_this_round = 0;
            for (tag, _score) in &due {
                if self.restore_one(tag, Some(cutoff)).await? {
                    restored += 1;
                    moved_this_round += 1;
                }
            }
            if due.len() < self.opts.restore_batch || moved_this_round == 0 {
                break;
            }
        }
        Ok(restored)
    }

    /// Moves one unacked message back to its queue with the `redelivered` flags, as Kombu's
    /// `restore_by_tag` does. With a `cutoff`, only if it is still that stale. Returns whether
    /// it moved; an entry that cannot be parsed is dead-lettered instead.
    async fn restore_one(&self, tag: &str, cutoff: Option<f64>) -> Result<bool, RedisClientError> {
        let mut conn = self.cmd.clone();
        let entry: Option<String> = conn.hget(&self.opts.unacked_key, tag).await?;
        let Some(entry) = entry else {
            if cutoff.is_some() {
                // Index entry without a message: nothing to restore, drop the stale index.
                let _: i64 = conn.zrem(&self.opts.unacked_index_key, tag).await?;
            }
            return Ok(false);
        };
        let (mut env, exchange, routing_key) = match envelope::parse_unacked_entry(&entry) {
            Ok(parts) => parts,
            Err(e) => {
                let reason = format!("unacked entry cannot be restored: {e}");
                self.dead_letter(Some(tag), entry.as_bytes(), "", &reason)
                    .await?;
                return Ok(false);
            }
        };
        env.mark_redelivered();
        let queue = self.lookup(&exchange, &routing_key).await?;
        let key = kombu::queue_key(&queue, env.priority());
        self.move_back(tag, &env.to_json(), &key, "RPUSH", cutoff)
            .await
    }

    /// Hands back what a fetch whose reply was lost (the connection died after the script ran)
    /// took: every tag recorded under `transit_key` by that fetch that is still unacked and not
    /// `held` by us. Without this they would wait out the visibility timeout.
    pub async fn recover_in_transit(
        &self,
        transit_key: &str,
        held: impl Fn(&str) -> bool,
    ) -> Result<usize, RedisClientError> {
        let tags: Vec<String> = self.cmd.clone().smembers(transit_key).await?;
        let mut recovered = 0;
        for tag in tags.iter().filter(|t| !held(t)) {
            if self.restore_one(tag, None).await? {
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// The queue a message published with `exchange`/`routing_key` lands in (Kombu's `_lookup`
    /// for the anonymous and direct exchanges Celery uses); the routing key when none is bound.
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<String, RedisClientError> {
        let queue = bound_queue(&mut self.cmd.clone(), exchange, routing_key).await?;
        Ok(queue.unwrap_or_else(|| routing_key.to_owned()))
    }
}
