//! [`Broker`] for Kombu's Redis layout: the calls of [`RedisBroker`], and a consumer that polls
//! with the fetch script, then `BRPOP` when idle, and recovers what a fetch whose reply was lost
//! had taken.

use tracing::warn;

use super::{Broker, BrokerFuture, Consumer, Delivery, Requeue};
use crate::envelope::Envelope;
use crate::redis::RedisBroker;

impl Broker for RedisBroker {
    fn describe(&self) -> String {
        self.url().to_string()
    }

    fn declare_queues<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::declare_queues(self, queues).await?) })
    }

    fn consumer(
        &self,
        queues: Vec<String>,
        _prefetch: usize,
        held: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Box<dyn Consumer> {
        Box::new(RedisConsumer {
            broker: self.clone(),
            queues,
            rotation: 0,
            transit_key: format!("celeriac.transit.{}", uuid::Uuid::new_v4().simple()),
            reply_lost: false,
            held,
        })
    }

    fn ack<'a>(&'a self, tags: &'a [&'a str]) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::ack(self, tags).await?) })
    }

    fn requeue<'a>(
        &'a self,
        tag: &'a str,
        raw: &'a str,
        queue: &'a str,
        position: Requeue,
    ) -> BrokerFuture<'a, bool> {
        let behind_others = position == Requeue::Last;
        Box::pin(
            async move { Ok(RedisBroker::requeue(self, tag, raw, queue, behind_others).await?) },
        )
    }

    fn dead_letter<'a>(
        &'a self,
        tag: Option<&'a str>,
        raw: &'a [u8],
        queue: &'a str,
        reason: &'a str,
    ) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::dead_letter(self, tag, raw, queue, reason).await?) })
    }

    fn publish<'a>(&'a self, queue: &'a str, envelope: &'a Envelope) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::publish(self, queue, envelope).await?) })
    }

    fn publish_declared<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::publish_declared(self, queue, envelope).await?) })
    }

    fn queue_lengths<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, Vec<u64>> {
        Box::pin(async move { Ok(RedisBroker::queue_lengths(self, queues).await?) })
    }

    fn refresh<'a>(&'a self, tags: &'a [String]) -> BrokerFuture<'a, ()> {
        Box::pin(async move { Ok(RedisBroker::refresh(self, tags).await?) })
    }

    fn restore_timed_out(&self) -> BrokerFuture<'_, usize> {
        Box::pin(async move { Ok(RedisBroker::restore_timed_out(self).await?) })
    }
}

/// Polls Kombu's lists: the fetch script takes up to a batch and records it as unacked in one
/// round trip; when nothing waits, `BRPOP` blocks up to the poll timeout.
pub struct RedisConsumer {
    broker: RedisBroker,
    queues: Vec<String>,
    /// Kombu rotates the queue order after each delivery (round robin).
    rotation: usize,
    /// Where each fetch records what it took, so a fetch whose reply is lost can be undone.
    transit_key: String,
    reply_lost: bool,
    held: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl std::fmt::Debug for RedisConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConsumer")
            .field("queues", &self.queues)
            .field("transit_key", &self.transit_key)
            .finish_non_exhaustive()
    }
}

impl RedisConsumer {
    fn order(&self) -> Vec<String> {
        let n = self.queues.len();
        (0..n)
            .map(|i| self.queues[(self.rotation + i) % n].clone())
            .collect()
    }

    /// After a lost fetch reply: hands back what that fetch took and we do not hold.
    async fn recover(&mut self) -> Result<(), crate::redis::RedisClientError> {
        if self.reply_lost {
            let held = &self.held;
            let n = self
                .broker
                .recover_in_transit(&self.transit_key, |tag| held(tag))
                .await?;
            self.reply_lost = false;
            if n > 0 {
                warn!("handed back {n} messages whose fetch reply was lost with the connection");
            }
        }
        Ok(())
    }
}

impl Consumer for RedisConsumer {
    fn fetch(&mut self, max: usize) -> BrokerFuture<'_, Vec<Delivery>> {
        Box::pin(async move {
            self.recover().await?;
            let order = self.order();
            match self.broker.fetch(&order, max, &self.transit_key).await {
                Ok(batch) => {
                    self.rotation = self.rotation.wrapping_add(batch.len());
                    Ok(batch)
                }
                Err(e) => {
                    self.reply_lost = true;
                    Err(e.into())
                }
            }
        })
    }

    fn wait(&mut self) -> BrokerFuture<'_, Option<Delivery>> {
        Box::pin(async move {
            self.recover().await?;
            let order = self.order();
            let got = self.broker.wait(&order).await?;
            if got.is_some() {
                self.rotation = self.rotation.wrapping_add(1);
            }
            Ok(got)
        })
    }
}
