//! The broker side of Kombu's Redis transport, as a worker needs it.
//!
//! Same keys and values as Kombu (queue lists per priority step, the `unacked` hash and
//! `unacked_index` zset, the `unacked_mutex` lock), so that Python workers and ours can share
//! queues and restore each other's timed-out messages. Where Kombu takes several round trips
//! for one message, we batch: one script call fetches and tracks up to a prefetch window, one
//! pipeline acks many.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Value as RValue};
use serde_json::{Map, Value};
use tracing::warn;

use super::RedisClientError;
use super::scripts::{FETCH, RESTORE};
use super::url::{RedisUrl, UrlError};
pub use crate::broker::{Delivery, DeliveryState};
use crate::envelope::{self, Envelope};
use crate::kombu;

/// Broker settings (Kombu's `broker_transport_options` plus our additions).
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// How long a delivered message may stay unacked before any worker restores it (3600 s).
    pub visibility_timeout: Duration,
    /// Name of the unacked hash (`unacked`).
    pub unacked_key: String,
    /// Name of the unacked index zset (`unacked_index`).
    pub unacked_index_key: String,
    /// Name of the restore lock (`unacked_mutex`).
    pub unacked_mutex_key: String,
    /// List where undecodable messages are set aside, never to be executed.
    pub dead_letter_key: String,
    /// Name written into dead-letter records.
    pub worker_name: String,
    /// How long to wait for a reply before treating the connection as lost.
    pub response_timeout: Duration,
    /// How long one blocking poll waits for a message (Kombu's `brpop_timeout`, 1 s).
    pub poll_timeout: Duration,
    /// Most timed-out messages restored per scan round.
    pub restore_batch: usize,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(3600),
            unacked_key: kombu::UNACKED.into(),
            unacked_index_key: kombu::UNACKED_INDEX.into(),
            unacked_mutex_key: kombu::UNACKED_MUTEX.into(),
            dead_letter_key: "celeriac.rejected".into(),
            worker_name: "celeriac".into(),
            response_timeout: Duration::from_secs(30),
            poll_timeout: Duration::from_secs(1),
            restore_batch: 1000,
        }
    }
}

/// A dead-letter record: JSON `{"reason", "queue", "worker", "received_at", "payload"}`, with
/// `payload_base64` instead of `payload` when the message is not valid UTF-8, so the exact
/// bytes can always be recovered.
pub fn dead_letter_record(reason: &str, queue: &str, worker: &str, at: f64, raw: &[u8]) -> String {
    let mut record = Map::new();
    record.insert("reason".into(), Value::String(reason.into()));
    record.insert("queue".into(), Value::String(queue.into()));
    record.insert("worker".into(), Value::String(worker.into()));
    record.insert("received_at".into(), Value::String(format!("{at:.6}")));
    match std::str::from_utf8(raw) {
        Ok(text) => record.insert("payload".into(), Value::String(text.into())),
        Err(_) => record.insert(
            "payload_base64".into(),
            Value::String(envelope::base64_encode(raw)),
        ),
    };
    Value::Object(record).to_string()
}

/// A Kombu-compatible Redis broker client.
#[derive(Clone)]
pub struct RedisBroker {
    pub(super) cmd: ConnectionManager,
    blocking: ConnectionManager,
    pub(super) opts: BrokerOptions,
    url: RedisUrl,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish()
    }
}

/// The current time as Kombu writes it into `unacked_index` (`time.time()`).
pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes the binding of each queue to its direct exchange (named after it), in the 5.7 and the
/// older layout, as Kombu's consumers and senders declare them.
pub(super) async fn declare_bindings(
    conn: &mut ConnectionManager,
    queues: &[String],
) -> Result<(), RedisClientError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for q in queues {
        let member = kombu::binding_member(q, "", q);
        pipe.sadd(kombu::binding_key(q), &member).ignore();
        pipe.sadd(kombu::binding_permanent_key(q), &member).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// The queue bound to a direct `exchange` with `routing_key` in Kombu's binding set (the first,
/// by name, when several are); the routing key itself for the anonymous exchange `""`, and
/// `None` when nothing is bound (Kombu then drops the message).
pub(super) async fn bound_queue(
    conn: &mut ConnectionManager,
    exchange: &str,
    routing_key: &str,
) -> Result<Option<String>, RedisClientError> {
    if exchange.is_empty() {
        return Ok(Some(routing_key.to_owned()));
    }
    let members: Vec<String> = conn.smembers(kombu::binding_key(exchange)).await?;
    Ok(members
        .iter()
        .filter_map(|m| kombu::parse_binding_member(m))
        .filter(|(rk, _, _)| *rk == routing_key)
        .map(|(_, _, q)| q.to_owned())
        .min())
}

pub(crate) async fn manager(
    url: &RedisUrl,
    response_timeout: Duration,
) -> Result<ConnectionManager, RedisClientError> {
    let client = url.client().map_err(|e| match e {
        UrlError::Client(r) => RedisClientError::Redis(r),
        other => RedisClientError::Reply(other.to_string()),
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout))
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_pipeline_buffer_size(4096);
    Ok(client.get_connection_manager_with_config(config).await?)
}

impl RedisBroker {
    /// Connects (one attempt: callers retry with their backoff).
    pub async fn connect(url: &RedisUrl, opts: BrokerOptions) -> Result<Self, RedisClientError> {
        let cmd = manager(url, opts.response_timeout).await?;
        let blocking = manager(url, opts.poll_timeout + opts.response_timeout).await?;
        Ok(Self {
            cmd,
            blocking,
            opts,
            url: url.clone(),
        })
    }

    /// The settings in use.
    pub fn options(&self) -> &BrokerOptions {
        &self.opts
    }

    /// The broker URL (its `Display` hides the password).
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Declares the bindings a Celery worker declares when it starts consuming `queues`
    /// (direct exchange named after the queue, routing key = queue name).
    pub async fn declare_queues(&self, queues: &[String]) -> Result<(), RedisClientError> {
        declare_bindings(&mut self.cmd.clone(), queues).await
    }

    /// Takes up to `max` waiting messages from `queues` (in this order, all queues at each
    /// priority step before the next step) and tracks them as unacked, in one round trip.
    ///
    /// The delivery tags taken are also written to the set `transit_key` (replacing what the
    /// previous fetch wrote there), so that if the reply is lost the caller can find them with
    /// [`recover_in_transit`](Self::recover_in_transit).
    pub async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        transit_key: &str,
    ) -> Result<Vec<Delivery>, RedisClientError> {
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let keys = kombu::poll_keys(queues);
        let mut inv = FETCH.prepare_invoke();
        inv.key(&self.opts.unacked_key)
            .key(&self.opts.unacked_index_key)
            .key(transit_key);
        for k in &keys {
            inv.key(k);
        }
        let transit_ttl = (self.opts.visibility_timeout.as_secs() * 2).max(60);
        inv.arg(max)
            .arg(format!("{:.6}", now_unix()))
            .arg(&self.opts.dead_letter_key)
            .arg(&self.opts.worker_name)
            .arg(transit_ttl);
        for k in &keys {
            inv.arg(kombu::queue_of_key(k));
        }
        let rows: Vec<(usize, Vec<u8>, String)> = inv.invoke_async(&mut self.cmd.clone()).await?;
        rows.into_iter()
            .map(|(idx, raw, tag)| {
                let key = idx
                    .checked_sub(1)
                    .and_then(|i| keys.get(i))
                    .ok_or_else(|| {
                        RedisClientError::Reply(format!("fetch script returned key index {idx}"))
                    })?;
                let state = if tag.is_empty() {
                    DeliveryState::DeadLettered
                } else {
                    DeliveryState::Tracked(tag)
                };
                Ok(Delivery {
                    raw,
                    queue: kombu::queue_of_key(key).to_owned(),
                    state,
                })
            })
            .collect()
    }

    /// Blocks up to the poll timeout for one message (BRPOP, as Kombu does when idle) and tracks
    /// it as unacked. As in Kombu, a crash between the pop and the tracking loses that message;
    /// under load [`fetch`](Self::fetch) serves instead and has no such gap.
    ///
    /// Not cancel-safe: dropping the future while the pop is in flight can lose the message.
    pub async fn wait(&self, queues: &[String]) -> Result<Option<Delivery>, RedisClientError> {
        let keys = kombu::poll_keys(queues);
        let timeout = self.opts.poll_timeout.as_secs_f64().max(0.01);
        let reply: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
            .arg(&keys)
            .arg(timeout)
            .query_async(&mut self.blocking.clone())
            .await?;
        let Some((key, raw)) = reply else {
            return Ok(None);
        };
        let queue = kombu::queue_of_key(&key).to_owned();
        let parsed = std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| Envelope::from_json(text).ok());
        let tag = parsed
            .as_ref()
            .and_then(|e| e.delivery_tag())
            .filter(|t| !t.is_empty());
        let Some(tag) = tag.map(str::to_owned) else {
            let reason = "not a Kombu envelope: invalid JSON or no properties.delivery_tag";
            self.dead_letter(None, &raw, &queue, reason).await?;
            return Ok(Some(Delivery {
                raw,
                queue,
                state: DeliveryState::DeadLettered,
            }));
        };
        let (ex, rk) = parsed
            .as_ref()
            .map(|e| (e.exchange().to_owned(), e.routing_key().to_owned()))
            .unwrap_or_default();
        let rk = if rk.is_empty() { queue.clone() } else { rk };
        let entry = envelope::unacked_entry(&String::from_utf8_lossy(&raw), &ex, &rk);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&self.opts.unacked_index_key, &tag, now_unix())
            .ignore()
            .hset(&self.opts.unacked_key, &tag, entry)
            .ignore();
        if let Err(e) = pipe.query_async::<()>(&mut self.cmd.clone()).await {
            // The message is in our hands only. Put it straight back rather than risk losing it.
            warn!(error = %e, queue = %queue, "could not track a polled message; pushing it back");
            let _: () = self.cmd.clone().rpush(&key, &raw).await?;
            return Ok(None);
        }
        Ok(Some(Delivery {
            raw,
            queue,
            state: DeliveryState::Tracked(tag),
        }))
    }

    /// Acknowledges messages: removes them from the unacked structures (one atomic pipeline).
    pub async fn ack<S: AsRef<str>>(&self, tags: &[S]) -> Result<(), RedisClientError> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(&self.opts.unacked_index_key, &tags)
            .ignore()
            .hdel(&self.opts.unacked_key, &tags)
            .ignore();
        pipe.query_async::<()>(&mut self.cmd.clone()).await?;
        Ok(())
    }

    /// Hands a tracked message back to `queue` with Kombu's `redelivered` flags: at the tail
    /// (taken next) like Kombu's restore, or at the head (behind everything) like its reject.
    /// Returns false when the message was no longer unacked (acked or restored by someone else).
    pub async fn requeue(
        &self,
        tag: &str,
        raw: &str,
        queue: &str,
        behind_others: bool,
    ) -> Result<bool, RedisClientError> {
        let mut env = match Envelope::from_json(raw) {
            Ok(env) => env,
            Err(e) => {
                self.dead_letter(
                    Some(tag),
                    raw.as_bytes(),
                    queue,
                    &format!("cannot requeue: {e}"),
                )
                .await?;
                return Ok(false);
            }
        };
        env.mark_redelivered();
        let key = kombu::queue_key(queue, env.priority());
        self.move_back(
            tag,
            &env.to_json(),
            &key,
            if behind_others { "LPUSH" } else { "RPUSH" },
            None,
        )
        .await
    }

    pub(super) async fn move_back(
        &self,
        tag: &str,
        payload: &str,
        key: &str,
        how: &str,
        cutoff: Option<f64>,
    ) -> Result<bool, RedisClientError> {
        let moved: i64 = RESTORE
            .key(&self.opts.unacked_key)
            .key(&self.opts.unacked_index_key)
            .key(key)
            .arg(tag)
            .arg(payload)
            .arg(how)
            .arg(cutoff.map(|c| format!("{c:.6}")).unwrap_or_default())
            .invoke_async(&mut self.cmd.clone())
            .await?;
        Ok(moved == 1)
    }

    /// Sets a message aside on the dead-letter list with the reason, removing it from the
    /// unacked structures when it was tracked. See [`dead_letter_record`] for the record.
    pub async fn dead_letter(
        &self,
        tag: Option<&str>,
        raw: &[u8],
        queue: &str,
        reason: &str,
    ) -> Result<(), RedisClientError> {
        let record = dead_letter_record(reason, queue, &self.opts.worker_name, now_unix(), raw);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&self.opts.dead_letter_key, record)
            .ignore();
        if let Some(tag) = tag {
            pipe.zrem(&self.opts.unacked_index_key, tag).ignore();
            pipe.hdel(&self.opts.unacked_key, tag).ignore();
        }
        pipe.query_async::<()>(&mut self.cmd.clone()).await?;
        Ok(())
    }

    /// How many messages wait in each of `queues` (all of a queue's priority lists summed), in
    /// one round trip of `LLEN`s.
    pub async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<u64>, RedisClientError> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            for step in kombu::PRIORITY_STEPS {
                pipe.llen(kombu::queue_key(q, step));
            }
        }
        let lengths: Vec<u64> = pipe.query_async(&mut self.cmd.clone()).await?;
        Ok(lengths
            .chunks(kombu::PRIORITY_STEPS.len())
            .map(|c| c.iter().sum())
            .collect())
    }

    /// Marks held messages as freshly delivered (ZADD XX), so no one restores them while we
    /// hold them. Acked or restored tags are not re-added.
    pub async fn refresh<S: AsRef<str>>(&self, tags: &[S]) -> Result<(), RedisClientError> {
        let now = now_unix();
        for chunk in tags.chunks(500) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&self.opts.unacked_index_key).arg("XX");
            for t in chunk {
                cmd.arg(now).arg(t.as_ref());
            }
            cmd.query_async::<RValue>(&mut self.cmd.clone()).await?;
        }
        Ok(())
    }

    /// Publishes an envelope to `queue` as a Kombu sender does the first time: the queue's
    /// bindings (as [`declare_queues`](Self::declare_queues)) and the LPUSH, in one atomic
    /// round trip.
    pub async fn publish_declared(
        &self,
        queue: &str,
        env: &Envelope,
    ) -> Result<(), RedisClientError> {
        let member = kombu::binding_member(queue, "", queue);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(kombu::binding_key(queue), &member)
            .ignore()
            .sadd(kombu::binding_permanent_key(queue), &member)
            .ignore()
            .lpush(kombu::queue_key(queue, env.priority()), env.to_json())
            .ignore();
        pipe.query_async::<()>(&mut self.cmd.clone()).await?;
        Ok(())
    }

    /// Publishes an envelope to `queue` at its priority (LPUSH, as Kombu's `_put`).
    pub async fn publish(&self, queue: &str, env: &Envelope) -> Result<(), RedisClientError> {
        let key = kombu::queue_key(queue, env.priority());
        let _: i64 = self.cmd.clone().lpush(key, env.to_json()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_records_keep_the_exact_bytes() {
        let text: Value =
            serde_json::from_str(&dead_letter_record("r", "q", "w", 1.5, b"{oops")).unwrap();
        assert_eq!(text["payload"], "{oops");
        assert_eq!(text["received_at"], "1.500000");
        let binary: Value =
            serde_json::from_str(&dead_letter_record("r", "q", "w", 0.0, b"\xff\xfe")).unwrap();
        assert_eq!(binary["payload_base64"], "//4=");
        assert!(binary.get("payload").is_none());
    }
}
