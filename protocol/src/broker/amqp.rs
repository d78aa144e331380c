//! [`Broker`] on RabbitMQ (feature `amqp`), over the client of [`crate::amqp`]:
//! - a consumer drains what lapin has buffered (`fetch`) or awaits the next delivery for up to a
//!   second (`wait`), within RabbitMQ's prefetch window (`basic.qos`); when the connection or
//!   the channel is lost it reconnects, declares and consumes again on the next call;
//! - a requeue is `basic.reject(requeue)`: RabbitMQ puts the message back in its place, flagged
//!   redelivered (AMQP has no "behind the others");
//! - a message set aside goes to the durable queue named by the dead-letter key, as the same
//!   JSON record Redis keeps, and the original is acked;
//! - nothing times out: RabbitMQ returns a dead consumer's unacked messages at once, so there is
//!   no visibility upkeep.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use serde_json::{Map, Value};
use tracing::warn;

use super::{Broker, BrokerError, BrokerFuture, Consumer, Delivery, DeliveryState, Requeue};
use crate::amqp::{AmqpBroker, AmqpConsumer, AmqpDelivery, AmqpError, DeliveryTag};
use crate::envelope::Envelope;
use crate::redis::dead_letter_record;

/// How long [`Consumer::wait`] waits for a delivery, as Kombu's poll.
const POLL: Duration = Duration::from_secs(1);

impl From<AmqpError> for BrokerError {
    fn from(e: AmqpError) -> Self {
        if e.is_transient() {
            BrokerError::Unavailable(e.to_string())
        } else {
            BrokerError::Refused(e.to_string())
        }
    }
}

/// RabbitMQ as the runtime's broker.
#[derive(Debug)]
pub struct AmqpTransport {
    broker: AmqpBroker,
    dead_letter_queue: String,
    worker_name: String,
    /// Queues declared by `publish_declared` already (declaring is a round trip per queue).
    declared: Mutex<HashSet<String>>,
}

impl AmqpTransport {
    /// Wraps a connected client; messages set aside go to `dead_letter_queue`, recorded as set
    /// aside by `worker_name`.
    pub fn new(broker: AmqpBroker, dead_letter_queue: String, worker_name: String) -> Self {
        Self {
            broker,
            dead_letter_queue,
            worker_name,
            declared: Mutex::new(HashSet::new()),
        }
    }

    fn was_declared(&self, queue: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(queue)
    }

    fn mark_declared(&self, queue: &str) {
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(queue.to_owned());
    }
}

/// Our delivery tag text (`g1/c2/t3`, [`DeliveryTag`]'s display) back to the tag.
fn parse_tag(text: &str) -> Option<DeliveryTag> {
    let mut parts = text.split('/');
    let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
    let channel = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let tag = parts.next()?.strip_prefix('t')?.parse().ok()?;
    parts.next().is_none().then_some(DeliveryTag {
        generation,
        channel,
        tag,
    })
}

fn tag_of(text: &str) -> Result<DeliveryTag, BrokerError> {
    parse_tag(text).ok_or_else(|| BrokerError::Refused(format!("not an AMQP delivery tag: {text}")))
}

/// Settles `tag`, treating a tag of a lost connection as settled: RabbitMQ has put that message
/// back already, and it will be delivered again.
async fn settle(
    result: Result<(), AmqpError>,
    tag: DeliveryTag,
    what: &str,
) -> Result<(), BrokerError> {
    match result {
        Ok(()) => Ok(()),
        Err(AmqpError::StaleDelivery { .. }) => {
            warn!(%tag, "cannot {what} a message delivered before the connection was lost: RabbitMQ returned it to its queue, and it will run again");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Broker for AmqpTransport {
    fn describe(&self) -> String {
        self.broker.url().to_string()
    }

    fn declare_queues<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            self.broker.declare_queues(queues).await?;
            for q in queues {
                self.mark_declared(q);
            }
            Ok(())
        })
    }

    fn consumer(
        &self,
        queues: Vec<String>,
        prefetch: usize,
        _held: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Box<dyn Consumer> {
        Box::new(AmqpQueueConsumer {
            broker: self.broker.clone(),
            queues,
            prefetch: u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX),
            inner: None,
        })
    }

    fn ack<'a>(&'a self, tags: &'a [&'a str]) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            let tags = tags
                .iter()
                .map(|text| tag_of(text))
                .collect::<Result<Vec<_>, _>>()?;
            // All at once: each ack is a frame handed to lapin's I/O loop, and RabbitMQ does not
            // answer acks, so awaiting them one by one only adds a hand-off per message.
            let sent =
                futures::future::join_all(tags.iter().map(|tag| self.broker.ack(*tag))).await;
            for (tag, result) in tags.into_iter().zip(sent) {
                settle(result, tag, "ack").await?;
            }
            Ok(())
        })
    }

    fn requeue<'a>(
        &'a self,
        tag: &'a str,
        _raw: &'a str,
        _queue: &'a str,
        _position: Requeue,
    ) -> BrokerFuture<'a, bool> {
        Box::pin(async move {
            let tag = tag_of(tag)?;
            match self.broker.reject(tag, true).await {
                Ok(()) => Ok(true),
                Err(AmqpError::StaleDelivery { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn dead_letter<'a>(
        &'a self,
        tag: Option<&'a str>,
        raw: &'a [u8],
        queue: &'a str,
        reason: &'a str,
    ) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            if !self.was_declared(&self.dead_letter_queue) {
                self.broker
                    .declare_queues(std::slice::from_ref(&self.dead_letter_queue))
                    .await?;
                self.mark_declared(&self.dead_letter_queue);
            }
            let record = dead_letter_record(reason, queue, &self.worker_name, now_unix(), raw);
            let mut properties = Map::new();
            properties.insert("delivery_mode".into(), Value::from(2));
            let env = Envelope {
                body: record,
                content_type: "application/json".into(),
                content_encoding: "utf-8".into(),
                headers: Map::new(),
                properties,
                extra: Map::new(),
            };
            self.broker
                .publish(&self.dead_letter_queue, &self.dead_letter_queue, &env)
                .await?;
            if let Some(text) = tag {
                let tag = tag_of(text)?;
                settle(self.broker.ack(tag).await, tag, "ack").await?;
            }
            Ok(())
        })
    }

    fn publish<'a>(&'a self, queue: &'a str, envelope: &'a Envelope) -> BrokerFuture<'a, ()> {
        // Celery's default routing: the direct exchange named after the queue, routing key = queue.
        Box::pin(async move { Ok(self.broker.publish(queue, queue, envelope).await?) })
    }

    fn publish_declared<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            if !self.was_declared(queue) {
                self.broker.declare_queues(&[queue.to_owned()]).await?;
                self.mark_declared(queue);
            }
            Ok(self.broker.publish(queue, queue, envelope).await?)
        })
    }

    fn queue_lengths<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let declared = self.broker.declare_queues(queues).await?;
            Ok(queues
                .iter()
                .map(|q| {
                    declared
                        .iter()
                        .find(|d| &d.name == q)
                        .map_or(0, |d| u64::from(d.message_count))
                })
                .collect())
        })
    }
}

/// Consumes the queues on one channel; rebuilt on the next call after a loss.
struct AmqpQueueConsumer {
    broker: AmqpBroker,
    queues: Vec<String>,
    prefetch: u16,
    inner: Option<AmqpConsumer>,
}

impl AmqpQueueConsumer {
    /// The live consumer, after reconnecting, declaring and consuming again if it was lost.
    async fn live(&mut self) -> Result<&mut AmqpConsumer, BrokerError> {
        if self.inner.is_none() {
            if !self.broker.is_connected() {
                self.broker.reconnect(self.broker.generation()).await?;
            }
            self.broker.declare_queues(&self.queues).await?;
            let consumer = self.broker.consume(&self.queues, self.prefetch).await?;
            self.inner = Some(consumer);
        }
        self.inner
            .as_mut()
            .ok_or_else(|| BrokerError::Unavailable("no AMQP consumer".into()))
    }

    /// A consumer error: after a loss the consumer is rebuilt on the next call.
    fn failed(&mut self, e: AmqpError) -> BrokerError {
        if e.is_connection_lost() || matches!(e, AmqpError::ConsumerCancelled { .. }) {
            self.inner = None;
        }
        e.into()
    }

    fn ended(&mut self) -> BrokerError {
        self.inner = None;
        BrokerError::Unavailable("the AMQP consumer ended".into())
    }
}

fn delivery(d: AmqpDelivery) -> Delivery {
    Delivery {
        raw: d.envelope().to_json().into_bytes(),
        queue: d.queue.clone(),
        state: DeliveryState::Tracked(d.tag.to_string()),
    }
}

impl Consumer for AmqpQueueConsumer {
    fn fetch(&mut self, max: usize) -> BrokerFuture<'_, Vec<Delivery>> {
        Box::pin(async move {
            let consumer = self.live().await?;
            let mut out = Vec::new();
            let mut problem = None;
            while out.len() < max {
                // `next` is cancel-safe: polling it once takes only what lapin has buffered.
                match consumer.next().now_or_never() {
                    None => break,
                    Some(Some(Ok(d))) => out.push(delivery(d)),
                    Some(Some(Err(e))) => {
                        problem = Some(Err(e));
                        break;
                    }
                    Some(None) => {
                        problem = Some(Ok(()));
                        break;
                    }
                }
            }
            match problem {
                // What was taken before the failure is returned; the failure shows next time.
                Some(Err(e)) if out.is_empty() => Err(self.failed(e)),
                Some(Ok(())) if out.is_empty() => Err(self.ended()),
                Some(Err(e)) => {
                    let _ = self.failed(e);
                    Ok(out)
                }
                Some(Ok(())) => {
                    let _ = self.ended();
                    Ok(out)
                }
                None => Ok(out),
            }
        })
    }

    fn set_window(&mut self, messages: usize) -> BrokerFuture<'_, ()> {
        Box::pin(async move {
            self.prefetch = u16::try_from(messages.max(1)).unwrap_or(u16::MAX);
            let prefetch = self.prefetch;
            if let Some(consumer) = self.inner.as_mut()
                && let Err(e) = consumer.set_prefetch(prefetch).await
            {
                return Err(self.failed(e));
            }
            Ok(())
        })
    }

    fn wait(&mut self) -> BrokerFuture<'_, Option<Delivery>> {
        Box::pin(async move {
            let consumer = self.live().await?;
            match tokio::time::timeout(POLL, consumer.next()).await {
                Err(_) => Ok(None),
                Ok(Some(Ok(d))) => Ok(Some(delivery(d))),
                Ok(Some(Err(e))) => Err(self.failed(e)),
                Ok(None) => Err(self.ended()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_tags_round_trip_through_their_text() {
        let tag = DeliveryTag {
            generation: 3,
            channel: 7,
            tag: 123_456,
        };
        assert_eq!(parse_tag(&tag.to_string()), Some(tag));
        for bad in [
            "",
            "g1/c2",
            "g1/c2/t3/x",
            "x1/c2/t3",
            "g1/c2/tz",
            "6f1e-uuid",
        ] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
    }
}
