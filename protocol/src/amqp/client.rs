//! The broker handle: one AMQP connection per generation, its publish and declaration
//! channels, and the consumer channels that ack and reject go through.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tracing::{debug, info, warn};

use super::consumer::{self, AmqpConsumer, DeliveryTag, QosScope};
use super::declare::{self, DeclaredQueue, OnMismatch, QueueType};
use super::url::AmqpUrl;
use super::wire::{self, DeliveryInfo};
use super::{AmqpError, classify, is_soft, protocol_error, short};
use crate::envelope::Envelope;

/// How queues are declared and the connection named.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// `x-max-priority` for queues we create (Celery's `task_queue_max_priority`).
    pub max_priority: Option<u8>,
    /// The type of queues we create (Celery's `task_default_queue_type`).
    pub queue_type: QueueType,
    /// What to do with a queue that exists with other arguments.
    pub on_mismatch: OnMismatch,
    /// The connection name shown by RabbitMQ's management UI.
    pub connection_name: String,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            max_priority: None,
            queue_type: QueueType::Classic,
            on_mismatch: OnMismatch::Reuse,
            connection_name: "celeriac".into(),
        }
    }
}

/// A channel that is replaced when the broker closed it after a channel-level error.
#[derive(Debug)]
pub(crate) struct ChannelSlot {
    conn: Arc<Connection>,
    confirm: bool,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl ChannelSlot {
    fn new(conn: Arc<Connection>, confirm: bool) -> Self {
        Self {
            conn,
            confirm,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// The open channel, opening a new one when the last was closed.
    pub(crate) async fn get(&self) -> Result<Channel, AmqpError> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = open_channel(&self.conn).await?;
        if self.confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| classify("confirm.select", e))?;
        }
        *slot = Some(ch.clone());
        Ok(ch)
    }
}

pub(crate) async fn open_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    conn.create_channel()
        .await
        .map_err(|source| AmqpError::ConnectionLost {
            context: "channel.open",
            source,
        })
}

/// One connection and what hangs off it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) conn: Arc<Connection>,
    publish: ChannelSlot,
    declare: ChannelSlot,
    /// Consumer channels by id, for ack and reject.
    pub(crate) consumers: Mutex<HashMap<u16, Channel>>,
    fanout_declared: Mutex<HashSet<String>>,
}

#[derive(Debug)]
struct Inner {
    url: AmqpUrl,
    opts: AmqpOptions,
    session: RwLock<Arc<Session>>,
    /// Serializes reconnects.
    reconnecting: tokio::sync::Mutex<()>,
    /// What declarations found, for choosing the QoS scope.
    declared: Mutex<HashMap<String, DeclaredQueue>>,
}

/// A Kombu-compatible RabbitMQ client. Cheap to clone; every clone shares the connection.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

async fn open_session(
    url: &AmqpUrl,
    opts: &AmqpOptions,
    generation: u64,
) -> Result<Session, AmqpError> {
    // rustls needs one process-wide crypto provider; ring is ours. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = url.tls_config()?;
    let runtime = lapin::runtime::default_runtime().map_err(|source| AmqpError::Connect {
        url: url.redacted(),
        source,
    })?;
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{} (generation {generation})", opts.connection_name).into());
    let conn = Connection::connect_uri_with_config(url.to_uri(), props, tls, runtime)
        .await
        .map_err(|source| AmqpError::Connect {
            url: url.redacted(),
            source,
        })?;
    info!(url = %url, generation, "connected to the AMQP broker");
    let conn = Arc::new(conn);
    Ok(Session {
        generation,
        publish: ChannelSlot::new(conn.clone(), true),
        declare: ChannelSlot::new(conn.clone(), false),
        conn,
        consumers: Mutex::new(HashMap::new()),
        fanout_declared: Mutex::new(HashSet::new()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AmqpBroker {
    /// Connects (one attempt: callers retry with their backoff).
    pub async fn connect(url: &AmqpUrl, opts: AmqpOptions) -> Result<Self, AmqpError> {
        let session = open_session(url, &opts, 1).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.clone(),
                opts,
                session: RwLock::new(Arc::new(session)),
                reconnecting: tokio::sync::Mutex::new(()),
                declared: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn session(&self) -> Arc<Session> {
        self.inner
            .session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The broker URL (its `Display` hides the password).
    pub fn url(&self) -> &AmqpUrl {
        &self.inner.url
    }

    /// The settings in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.inner.opts
    }

    /// The current connection's generation: 1 at first, one more at each reconnect.
    pub fn generation(&self) -> u64 {
        self.session().generation
    }

    /// Whether the current connection is open.
    pub fn is_connected(&self) -> bool {
        self.session().conn.status().connected()
    }

    /// Replaces the connection, unless another caller already did since `seen` (a generation
    /// from [`generation`](Self::generation) or a [`DeliveryTag`]); returns the generation now
    /// in use. One attempt: on error, wait and call again. Consumers and deliveries of older
    /// generations are void afterwards; declare and consume again.
    pub async fn reconnect(&self, seen: u64) -> Result<u64, AmqpError> {
        let _one_at_a_time = self.inner.reconnecting.lock().await;
        let old = self.session();
        if old.generation != seen {
            return Ok(old.generation);
        }
        if old.conn.status().connected() {
            let _ = old.conn.close(320, "celeriac reconnects".into()).await;
        }
        let session = open_session(&self.inner.url, &self.inner.opts, old.generation + 1).await?;
        let generation = session.generation;
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(session);
        Ok(generation)
    }

    /// Closes the connection: unacked messages go back to their queues.
    pub async fn close(&self) -> Result<(), AmqpError> {
        let session = self.session();
        if session.conn.status().connected() {
            session
                .conn
                .close(200, "OK".into())
                .await
                .map_err(|e| classify("connection.close", e))?;
        }
        Ok(())
    }

    /// Declares each queue as a Celery worker does when it starts consuming (the rules are in
    /// `docs/amqp.md`): direct exchange named after it,
    /// the queue, the binding with routing key = queue name. Existing queues keep their
    /// arguments with [`OnMismatch::Reuse`].
    pub async fn declare_queues(&self, queues: &[String]) -> Result<Vec<DeclaredQueue>, AmqpError> {
        let session = self.session();
        let wanted =
            declare::celery_arguments(self.inner.opts.max_priority, &self.inner.opts.queue_type);
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            let d = declare::declare_queue(
                &session.declare,
                q,
                wanted.clone(),
                self.inner.opts.on_mismatch,
            )
            .await?;
            debug!(queue = %q, arguments = %serde_json::Value::Object(d.arguments.clone()), existed = d.existed, "declared");
            lock(&self.inner.declared).insert(q.clone(), d.clone());
            out.push(d);
        }
        Ok(out)
    }

    /// Starts consuming `queues` on a channel of its own with at most `prefetch` unacked
    /// deliveries (0: no limit). The QoS scope is per consumer when a queue declared through
    /// this handle is a quorum queue (RabbitMQ refuses global QoS for those), per channel
    /// otherwise, as Celery chooses (`worker/consumer/tasks.py`, `qos_global`).
    pub async fn consume(
        &self,
        queues: &[String],
        prefetch: u16,
    ) -> Result<AmqpConsumer, AmqpError> {
        let quorum = {
            let declared = lock(&self.inner.declared);
            queues.iter().any(|q| {
                declared
                    .get(q)
                    .is_some_and(|d| d.queue_type() == QueueType::Quorum)
            })
        };
        let scope = if quorum {
            QosScope::PerConsumer
        } else {
            QosScope::PerChannel
        };
        self.consume_with_scope(queues, prefetch, scope).await
    }

    /// [`consume`](Self::consume) with the QoS scope chosen by the caller.
    pub async fn consume_with_scope(
        &self,
        queues: &[String],
        prefetch: u16,
        scope: QosScope,
    ) -> Result<AmqpConsumer, AmqpError> {
        let session = self.session();
        let ch = open_channel(&session.conn).await?;
        lock(&session.consumers).insert(ch.id(), ch.clone());
        consumer::start(session, ch, queues, prefetch, scope).await
    }

    fn consumer_channel(&self, tag: DeliveryTag) -> Result<Channel, AmqpError> {
        let session = self.session();
        if tag.generation != session.generation {
            return Err(AmqpError::StaleDelivery {
                tag,
                current: session.generation,
            });
        }
        let ch = lock(&session.consumers).get(&tag.channel).cloned();
        match ch {
            Some(ch) if ch.status().connected() => Ok(ch),
            _ => Err(AmqpError::ChannelGone(tag)),
        }
    }

    /// Acknowledges a delivery: the broker forgets the message. Ack only once its result is
    /// stored. Acking a tag twice makes the broker close the consumer's channel.
    pub async fn ack(&self, tag: DeliveryTag) -> Result<(), AmqpError> {
        let ch = self.consumer_channel(tag)?;
        ch.basic_ack(tag.tag, BasicAckOptions::default())
            .await
            .map_err(|e| classify("basic.ack", e))
    }

    /// Rejects a delivery: back to the head of its queue with `requeue` (redelivered, with
    /// `redelivered` set), otherwise dropped (or dead-lettered, if the queue says so).
    pub async fn reject(&self, tag: DeliveryTag, requeue: bool) -> Result<(), AmqpError> {
        let ch = self.consumer_channel(tag)?;
        ch.basic_reject(tag.tag, BasicRejectOptions { requeue })
            .await
            .map_err(|e| classify("basic.reject", e))
    }

    /// Publishes an envelope and waits for the broker's confirm: `Ok` means RabbitMQ has the
    /// message (on disk for persistent messages to durable queues). A message no queue is
    /// bound for comes back as [`AmqpError::Unroutable`] (it is published `mandatory`); a nack
    /// is [`AmqpError::Nacked`]. Celery sends tasks to exchange `""` with the queue name as
    /// routing key.
    ///
    /// Not cancel-safe in the sense that dropping the future after the message was written
    /// leaves it published but unconfirmed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        env: &Envelope,
    ) -> Result<(), AmqpError> {
        self.publish_confirmed(exchange, routing_key, env, true)
            .await
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        env: &Envelope,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        let (props, body) = wire::envelope_to_publish(env)?;
        let (ex, rk) = (short(exchange)?, short(routing_key)?);
        let ch = self.session().publish.get().await?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = ch
            .basic_publish(ex, rk, options, &body, props)
            .await
            .map_err(|e| classify("basic.publish", e))?;
        let outcome = confirm.await.map_err(|e| {
            if is_soft(&e, AMQPSoftError::NOTFOUND) {
                AmqpError::Refused {
                    context: format!("publish to exchange `{exchange}`"),
                    source: e,
                }
            } else {
                classify("publisher confirm", e)
            }
        })?;
        match outcome {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(AmqpError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(AmqpError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    async fn declare_broadcast_exchange(
        &self,
        session: &Session,
        exchange: &str,
        kind: ExchangeKind,
    ) -> Result<(), AmqpError> {
        if lock(&session.fanout_declared).contains(exchange) {
            return Ok(());
        }
        let ch = session.declare.get().await?;
        // Kombu's `celery.pidbox`: fanout, not durable, not auto-delete.
        match ch
            .exchange_declare(
                short(exchange)?,
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => {
                return Err(AmqpError::ExchangeConflict {
                    exchange: exchange.to_owned(),
                    reason: protocol_error(&e)
                        .map(|(_, m)| m.to_owned())
                        .unwrap_or_default(),
                });
            }
            Err(e) => return Err(classify("exchange.declare", e)),
        }
        lock(&session.fanout_declared).insert(exchange.to_owned());
        Ok(())
    }

    /// Publishes to every queue bound to the fanout `exchange` (declared as Kombu declares
    /// `celery.pidbox`: not durable), confirmed. No subscriber is not an error.
    pub async fn publish_fanout(&self, exchange: &str, env: &Envelope) -> Result<(), AmqpError> {
        let session = self.session();
        self.declare_broadcast_exchange(&session, exchange, ExchangeKind::Fanout)
            .await?;
        self.publish_confirmed(exchange, "", env, false).await
    }

    /// Subscribes to the fanout `exchange`: a server-named, exclusive, auto-delete queue bound
    /// to it, consumed without acks (as Kombu's pidbox and event receivers do).
    pub async fn subscribe_fanout(&self, exchange: &str) -> Result<FanoutSubscription, AmqpError> {
        self.subscribe(exchange, ExchangeKind::Fanout, "").await
    }

    /// Subscribes to the topic `exchange` with `binding_key` (`celeryev` with `#` or
    /// `worker.#`), as [`subscribe_fanout`](Self::subscribe_fanout) otherwise.
    pub async fn subscribe_topic(
        &self,
        exchange: &str,
        binding_key: &str,
    ) -> Result<FanoutSubscription, AmqpError> {
        self.subscribe(exchange, ExchangeKind::Topic, binding_key)
            .await
    }

    async fn subscribe(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        binding_key: &str,
    ) -> Result<FanoutSubscription, AmqpError> {
        let session = self.session();
        self.declare_broadcast_exchange(&session, exchange, kind)
            .await?;
        let ch = open_channel(&session.conn).await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .map_err(|e| classify("queue.declare", e))?;
        ch.queue_bind(
            q.name().clone(),
            short(exchange)?,
            short(binding_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify("queue.bind", e))?;
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify("basic.consume", e))?;
        Ok(FanoutSubscription {
            queue: q.name().as_str().to_owned(),
            exchange: exchange.to_owned(),
            channel: ch,
            consumer,
        })
    }
}

/// Messages broadcast on a fanout (or topic) exchange, from a private queue that disappears
/// with the subscription. Dropping it closes its channel (inside a tokio runtime).
#[derive(Debug)]
pub struct FanoutSubscription {
    queue: String,
    exchange: String,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl FanoutSubscription {
    /// The private queue's name (`amq.gen-...`).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next message as an envelope; `None` when the subscription ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Envelope, AmqpError>> {
        match self.consumer.next().await? {
            Ok(d) => {
                let info = DeliveryInfo {
                    exchange: d.exchange.as_str().to_owned(),
                    routing_key: d.routing_key.as_str().to_owned(),
                    redelivered: d.redelivered,
                    delivery_tag: d.delivery_tag,
                    consumer_tag: String::new(),
                };
                Some(Ok(wire::delivery_to_envelope(
                    &d.properties,
                    &d.data,
                    &info,
                )))
            }
            Err(e) => Some(Err(classify("fanout consume", e))),
        }
    }
}

impl Drop for FanoutSubscription {
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let ch = self.channel.clone();
            let exchange = self.exchange.clone();
            handle.spawn(async move {
                if ch.status().connected()
                    && let Err(e) = ch.close(200, "OK".into()).await
                {
                    warn!(%exchange, error = %e, "could not close a subscription channel");
                }
            });
        }
    }
}
