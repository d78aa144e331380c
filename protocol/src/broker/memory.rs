//! A broker in memory, for tests of the runtime with no server: FIFO queues of Kombu envelopes,
//! deliveries held until settled, a dead-letter list, and a switch that makes every call fail
//! as if the server were down. Time comes from tokio, so tests can pause it.
//!
//! Nothing times out here (as on AMQP): an unacked message stays held until it is acked,
//! requeued or set aside. Priorities are not kept apart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Broker, BrokerError, BrokerFuture, Consumer, Delivery, DeliveryState, Requeue};
use crate::envelope::Envelope;

/// A message set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: String,
    /// The queue it came from.
    pub queue: String,
    /// The message as it was.
    pub raw: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    /// Front: taken next.
    queues: HashMap<String, VecDeque<Vec<u8>>>,
    unacked: HashMap<String, (Vec<u8>, String)>,
    acked: Vec<String>,
    dead: Vec<DeadLetter>,
    declared: Vec<String>,
    down: bool,
    calls: usize,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    arrived: Notify,
    poll: Duration,
    /// Consumers get at most their window of unacked messages, as AMQP's `basic.qos`.
    windowed: bool,
}

/// The in-memory broker. Clones share the same queues.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker whose consumers wait up to a second for a message, as Kombu's poll does.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A broker that, like AMQP, delivers to each consumer at most its window of unacked
    /// messages ([`Consumer::set_window`]), starting at the prefetch it was created with.
    pub fn windowed() -> Self {
        Self::build(true)
    }

    fn build(windowed: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
                poll: Duration::from_secs(1),
                windowed,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state for a broker call: counts it, and fails while the broker is down.
    fn call(&self) -> Result<MutexGuard<'_, State>, BrokerError> {
        let mut s = self.state();
        s.calls += 1;
        if s.down {
            return Err(BrokerError::Unavailable(
                "the in-memory broker is down".into(),
            ));
        }
        Ok(s)
    }

    /// Puts a message on `queue` as a producer would (behind the waiting ones).
    pub fn push_raw(&self, queue: &str, raw: impl Into<Vec<u8>>) {
        self.state()
            .queues
            .entry(queue.to_owned())
            .or_default()
            .push_back(raw.into());
        self.inner.arrived.notify_waiters();
    }

    /// Puts an envelope on `queue` as a producer would.
    pub fn push(&self, queue: &str, envelope: &Envelope) {
        self.push_raw(queue, envelope.to_json());
    }

    /// The envelopes waiting on `queue`, next first (entries that are not envelopes skipped).
    pub fn waiting(&self, queue: &str) -> Vec<Envelope> {
        self.state()
            .queues
            .get(queue)
            .map(|q| {
                q.iter()
                    .filter_map(|raw| std::str::from_utf8(raw).ok())
                    .filter_map(|text| Envelope::from_json(text).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Delivery tags handed out and not settled yet.
    pub fn unacked(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.state().unacked.keys().cloned().collect();
        tags.sort();
        tags
    }

    /// Delivery tags acked so far, in order.
    pub fn acked(&self) -> Vec<String> {
        self.state().acked.clone()
    }

    /// Messages set aside so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead.clone()
    }

    /// Queues declared so far, in order.
    pub fn declared(&self) -> Vec<String> {
        self.state().declared.clone()
    }

    /// Makes every call fail (`true`) as if the server were down, or work again.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
        self.inner.arrived.notify_waiters();
    }

    /// Broker calls made so far (consumer calls included).
    pub fn calls(&self) -> usize {
        self.state().calls
    }

    fn take(
        &self,
        queues: &[String],
        rotation: usize,
        max: usize,
        window: Option<usize>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let mut s = self.call()?;
        let max = match window {
            Some(w) => max.min(w.saturating_sub(s.unacked.len())),
            None => max,
        };
        let mut out = Vec::new();
        let n = queues.len();
        let mut i = 0;
        while out.len() < max && i < n {
            let queue = &queues[(rotation + out.len() + i) % n];
            let Some(raw) = s.queues.get_mut(queue).and_then(VecDeque::pop_front) else {
                i += 1;
                continue;
            };
            let tag = std::str::from_utf8(&raw)
                .ok()
                .and_then(|text| Envelope::from_json(text).ok())
                .and_then(|env| env.delivery_tag().map(str::to_owned))
                .filter(|t| !t.is_empty());
            let state = match tag {
                Some(tag) => {
                    s.unacked.insert(tag.clone(), (raw.clone(), queue.clone()));
                    DeliveryState::Tracked(tag)
                }
                None => {
                    s.dead.push(DeadLetter {
                        reason: "not a Kombu envelope: invalid JSON or no properties.delivery_tag"
                            .into(),
                        queue: queue.clone(),
                        raw: raw.clone(),
                    });
                    DeliveryState::DeadLettered
                }
            };
            out.push(Delivery {
                raw,
                queue: queue.clone(),
                state,
            });
        }
        Ok(out)
    }
}

impl Broker for MemoryBroker {
    fn describe(&self) -> String {
        "memory://".into()
    }

    fn declare_queues<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            let mut s = self.call()?;
            for q in queues {
                if !s.declared.contains(q) {
                    s.declared.push(q.clone());
                }
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
        Box::new(MemoryConsumer {
            broker: self.clone(),
            queues,
            rotation: 0,
            window: self.inner.windowed.then_some(prefetch),
        })
    }

    fn ack<'a>(&'a self, tags: &'a [&'a str]) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            let mut s = self.call()?;
            for tag in tags {
                if s.unacked.remove(*tag).is_some() {
                    s.acked.push((*tag).to_owned());
                }
            }
            Ok(())
        })
    }

    fn requeue<'a>(
        &'a self,
        tag: &'a str,
        raw: &'a str,
        queue: &'a str,
        position: Requeue,
    ) -> BrokerFuture<'a, bool> {
        Box::pin(async move {
            let mut s = self.call()?;
            if s.unacked.remove(tag).is_none() {
                return Ok(false);
            }
            let text = match Envelope::from_json(raw) {
                Ok(mut env) => {
                    env.mark_redelivered();
                    env.to_json()
                }
                Err(_) => raw.to_owned(),
            };
            let list = s.queues.entry(queue.to_owned()).or_default();
            match position {
                Requeue::Next => list.push_front(text.into_bytes()),
                Requeue::Last => list.push_back(text.into_bytes()),
            }
            drop(s);
            self.inner.arrived.notify_waiters();
            Ok(true)
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
            let mut s = self.call()?;
            if let Some(tag) = tag {
                s.unacked.remove(tag);
            }
            s.dead.push(DeadLetter {
                reason: reason.to_owned(),
                queue: queue.to_owned(),
                raw: raw.to_vec(),
            });
            Ok(())
        })
    }

    fn publish<'a>(&'a self, queue: &'a str, envelope: &'a Envelope) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            drop(self.call()?);
            self.push(queue, envelope);
            Ok(())
        })
    }

    fn publish_declared<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BrokerFuture<'a, ()> {
        Box::pin(async move {
            {
                let mut s = self.call()?;
                if !s.declared.iter().any(|q| q == queue) {
                    s.declared.push(queue.to_owned());
                }
            }
            self.push(queue, envelope);
            Ok(())
        })
    }

    fn queue_lengths<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let s = self.call()?;
            Ok(queues
                .iter()
                .map(|q| s.queues.get(q).map_or(0, |l| l.len() as u64))
                .collect())
        })
    }
}

#[derive(Debug)]
struct MemoryConsumer {
    broker: MemoryBroker,
    queues: Vec<String>,
    rotation: usize,
    /// Unacked messages it may hold (windowed brokers only; one consumer per broker assumed).
    window: Option<usize>,
}

impl Consumer for MemoryConsumer {
    fn fetch(&mut self, max: usize) -> BrokerFuture<'_, Vec<Delivery>> {
        Box::pin(async move {
            let batch = self
                .broker
                .take(&self.queues, self.rotation, max, self.window)?;
            self.rotation = self.rotation.wrapping_add(batch.len());
            Ok(batch)
        })
    }

    fn wait(&mut self) -> BrokerFuture<'_, Option<Delivery>> {
        Box::pin(async move {
            let inner = self.broker.inner.clone();
            let arrived = inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(d) = self
                .broker
                .take(&self.queues, self.rotation, 1, self.window)?
                .pop()
            {
                self.rotation = self.rotation.wrapping_add(1);
                return Ok(Some(d));
            }
            if tokio::time::timeout(inner.poll, arrived).await.is_err() {
                return Ok(None);
            }
            let got = self
                .broker
                .take(&self.queues, self.rotation, 1, self.window)?
                .pop();
            if got.is_some() {
                self.rotation = self.rotation.wrapping_add(1);
            }
            Ok(got)
        })
    }

    fn set_window(&mut self, messages: usize) -> BrokerFuture<'_, ()> {
        if self.window.is_some() {
            self.window = Some(messages);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskMessage;

    fn envelope(id: &str) -> Envelope {
        TaskMessage::new("t", id, vec![], serde_json::Map::new(), "celery")
            .to_envelope(&format!("tag-{id}"))
            .expect("encodes")
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_delivery_ack_requeue_and_outage() {
        let b = MemoryBroker::new();
        for id in ["a", "b", "c"] {
            b.push("celery", &envelope(id));
        }
        b.push_raw("celery", "not json");
        let mut c = b.consumer(vec!["celery".into()], 10, Box::new(|_| false));
        let first = c.fetch(2).await.expect("fetch");
        assert_eq!(first.len(), 2);
        assert_eq!(b.unacked(), ["tag-a", "tag-b"]);
        b.ack(&["tag-a"]).await.expect("ack");
        let raw_b = String::from_utf8(first[1].raw.clone()).expect("utf8");
        assert!(
            b.requeue("tag-b", &raw_b, "celery", Requeue::Next)
                .await
                .expect("requeue")
        );
        assert!(
            !b.requeue("tag-b", &raw_b, "celery", Requeue::Next)
                .await
                .expect("again")
        );
        let next = c.fetch(10).await.expect("fetch");
        assert_eq!(next.len(), 3, "b again, c, and the bad entry");
        assert_eq!(next[0].state, DeliveryState::Tracked("tag-b".into()));
        assert_eq!(next[2].state, DeliveryState::DeadLettered);
        assert_eq!(b.dead_letters().len(), 1);
        b.set_down(true);
        assert!(c.fetch(1).await.is_err_and(|e| e.is_transient()));
        b.set_down(false);
        assert!(
            c.wait().await.expect("wait").is_none(),
            "a poll with nothing waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_when_a_message_arrives() {
        let b = MemoryBroker::new();
        let mut c = b.consumer(vec!["q".into()], 10, Box::new(|_| false));
        let producer = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer.push("q", &envelope("x"));
        });
        let got = c.wait().await.expect("wait");
        assert!(got.is_some());
    }
}
