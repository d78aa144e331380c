//! Consuming: one channel per [`AmqpConsumer`], one AMQP consumer per queue on it, their
//! deliveries merged into one stream, and the prefetch window (`basic.qos`).
//!
//! **Prefetch and ETA.** RabbitMQ counts every unacked delivery against the window, so a worker
//! holding ETA messages would starve. Celery raises the QoS by one per held ETA message and
//! lowers it when the message runs; [`AmqpConsumer::set_prefetch`] does the same. With
//! [`QosScope::PerChannel`] (`global = true`, RabbitMQ's per-channel limit, what Celery uses on
//! classic queues) the new value applies at once to the channel's unacked total. With
//! [`QosScope::PerConsumer`] (`global = false`, the only form quorum queues accept) RabbitMQ
//! applies a new value only to consumers started after it, so `set_prefetch` starts a fresh
//! consumer on each queue and cancels the old one; the old consumer's deliveries stay valid
//! (tags are per channel) but no longer count against the new window, which the caller may
//! account for by asking for `window - held` (held deliveries are acked or rejected as usual).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt as _, stream};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Map;
use tracing::debug;

use super::client::Session;
use super::wire::{self, DeliveryInfo};
use super::{AmqpError, classify, short};
use crate::envelope::Envelope;
use crate::error::DecodeError;
use crate::message::TaskMessage;

/// Identifies a delivery for ack and reject: the connection generation, the channel and the
/// channel's delivery tag. A tag of an older generation is never sent to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag {
    /// The connection generation ([`AmqpBroker::generation`](super::AmqpBroker::generation)) it was delivered on.
    pub generation: u64,
    /// The consumer channel's id.
    pub channel: u16,
    /// The channel's delivery tag (1, 2, ...).
    pub tag: u64,
}

impl fmt::Display for DeliveryTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}/c{}/t{}", self.generation, self.channel, self.tag)
    }
}

/// Where the prefetch limit applies (`basic.qos`'s `global` flag, RabbitMQ's meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosScope {
    /// One limit for all the consumer's queues together; changes apply at once. Not accepted
    /// on quorum queues.
    PerChannel,
    /// The limit applies to each queue's consumer separately (quorum queues need this).
    PerConsumer,
}

/// One message taken from a queue; it stays unacked until [`AmqpBroker::ack`](super::AmqpBroker::ack) or
/// [`AmqpBroker::reject`](super::AmqpBroker::reject) with its [`tag`](Self::tag).
#[derive(Debug, Clone)]
pub struct AmqpDelivery {
    /// What to ack or reject it with.
    pub tag: DeliveryTag,
    /// The queue it came from.
    pub queue: String,
    /// Exchange, routing key, redelivered flag.
    pub info: DeliveryInfo,
    /// The basic properties, headers included.
    pub properties: BasicProperties,
    /// The body, as published.
    pub body: Vec<u8>,
}

impl AmqpDelivery {
    /// The message as a Kombu envelope (body base64-encoded; see [`wire`]).
    pub fn envelope(&self) -> Envelope {
        wire::delivery_to_envelope(&self.properties, &self.body, &self.info)
    }

    /// The task message, decoded straight from the raw body.
    pub fn decode(&self) -> Result<TaskMessage, DecodeError> {
        let headers: Map<_, _> = wire::headers_map(&self.properties);
        let props = wire::properties_map(&self.properties, &self.info);
        let content_type = self
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str())
            .unwrap_or_default();
        TaskMessage::decode(&headers, &props, content_type, &self.body)
    }

    /// Whether the broker delivered it before.
    pub fn redelivered(&self) -> bool {
        self.info.redelivered
    }
}

enum Raw {
    Delivery(Arc<str>, Box<lapin::message::Delivery>),
    Error(Arc<str>, lapin::Error),
    Ended(Arc<str>, String),
}

/// Deliveries from one or more queues on one channel. Dropping it cancels the consumers but
/// keeps the channel, so held deliveries can still be acked; [`close`](Self::close) closes the
/// channel and hands every unacked message back.
pub struct AmqpConsumer {
    session: Arc<Session>,
    channel: Channel,
    queues: Vec<String>,
    scope: QosScope,
    prefetch: u16,
    tags: HashMap<String, String>,
    own_cancels: Arc<Mutex<HashSet<String>>>,
    stream: SelectAll<BoxStream<'static, Raw>>,
}

impl fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("generation", &self.session.generation)
            .field("channel", &self.channel.id())
            .field("queues", &self.queues)
            .field("scope", &self.scope)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

fn global(scope: QosScope) -> bool {
    scope == QosScope::PerChannel
}

pub(crate) async fn start(
    session: Arc<Session>,
    channel: Channel,
    queues: &[String],
    prefetch: u16,
    scope: QosScope,
) -> Result<AmqpConsumer, AmqpError> {
    channel
        .basic_qos(
            prefetch,
            BasicQosOptions {
                global: global(scope),
            },
        )
        .await
        .map_err(|e| classify("basic.qos", e))?;
    let mut consumer = AmqpConsumer {
        session,
        channel,
        queues: queues.to_vec(),
        scope,
        prefetch,
        tags: HashMap::new(),
        own_cancels: Arc::new(Mutex::new(HashSet::new())),
        stream: SelectAll::new(),
    };
    for q in queues {
        consumer.subscribe(q).await?;
    }
    Ok(consumer)
}

impl AmqpConsumer {
    async fn subscribe(&mut self, queue: &str) -> Result<(), AmqpError> {
        let tag = format!("celeriac.{}.{}", queue, uuid::Uuid::new_v4().simple());
        let tag = if tag.len() > 255 {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            tag
        };
        let c = self
            .channel
            .basic_consume(
                short(queue)?,
                short(&tag)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify("basic.consume", e))?;
        let q: Arc<str> = Arc::from(queue);
        let (q2, tag2) = (q.clone(), tag.clone());
        let items = c
            .map(move |r| match r {
                Ok(d) => Raw::Delivery(q.clone(), Box::new(d)),
                Err(e) => Raw::Error(q.clone(), e),
            })
            .chain(stream::once(async move { Raw::Ended(q2, tag2) }));
        self.stream.push(items.boxed());
        self.tags.insert(queue.to_owned(), tag);
        Ok(())
    }

    /// The connection generation this consumer belongs to.
    pub fn generation(&self) -> u64 {
        self.session.generation
    }

    /// The queues consumed.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The prefetch window in force.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// The QoS scope in force.
    pub fn scope(&self) -> QosScope {
        self.scope
    }

    /// The next delivery. An error that [`AmqpError::is_connection_lost`] means the channel or
    /// connection is gone (reconnect); [`AmqpError::ConsumerCancelled`] that the broker
    /// cancelled one queue's consumer (the others go on). `None` when every consumer ended.
    /// Cancel-safe: a delivery is never lost by dropping this future.
    pub async fn next(&mut self) -> Option<Result<AmqpDelivery, AmqpError>> {
        loop {
            match self.stream.next().await? {
                Raw::Delivery(queue, d) => {
                    let d = *d;
                    let info = DeliveryInfo {
                        exchange: d.exchange.as_str().to_owned(),
                        routing_key: d.routing_key.as_str().to_owned(),
                        redelivered: d.redelivered,
                        delivery_tag: d.delivery_tag,
                        consumer_tag: self.tags.get(&*queue).cloned().unwrap_or_default(),
                    };
                    return Some(Ok(AmqpDelivery {
                        tag: DeliveryTag {
                            generation: self.session.generation,
                            channel: self.channel.id(),
                            tag: d.delivery_tag,
                        },
                        queue: queue.to_string(),
                        info,
                        properties: d.properties,
                        body: d.data,
                    }));
                }
                Raw::Error(queue, e) => {
                    debug!(queue = %queue, error = %e, "consumer error");
                    return Some(Err(AmqpError::ConnectionLost {
                        context: "consume",
                        source: e,
                    }));
                }
                Raw::Ended(queue, tag) => {
                    let ours = self
                        .own_cancels
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&tag);
                    if ours || !self.channel.status().connected() {
                        continue;
                    }
                    self.tags.remove(&*queue);
                    return Some(Err(AmqpError::ConsumerCancelled {
                        queue: queue.to_string(),
                    }));
                }
            }
        }
    }

    /// Changes the prefetch window (see the module docs for the two scopes).
    pub async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), AmqpError> {
        if prefetch == self.prefetch {
            return Ok(());
        }
        self.channel
            .basic_qos(
                prefetch,
                BasicQosOptions {
                    global: global(self.scope),
                },
            )
            .await
            .map_err(|e| classify("basic.qos", e))?;
        self.prefetch = prefetch;
        if self.scope == QosScope::PerConsumer {
            for q in self.queues.clone() {
                let old = self.tags.get(&q).cloned();
                self.subscribe(&q).await?;
                if let Some(old) = old {
                    self.own_cancels
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(old.clone());
                    self.channel
                        .basic_cancel(short(&old)?, BasicCancelOptions::default())
                        .await
                        .map_err(|e| classify("basic.cancel", e))?;
                }
            }
        }
        Ok(())
    }

    /// Closes the channel: every delivery not acked yet goes back to its queue at once.
    pub async fn close(self) -> Result<(), AmqpError> {
        self.session
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.channel.id());
        if self.channel.status().connected() {
            self.channel
                .close(200, "OK".into())
                .await
                .map_err(|e| classify("channel.close", e))?;
        }
        Ok(())
    }
}
