//! The broker as the worker runtime sees it: one trait, [`Broker`], with a Redis implementation
//! (Kombu's layout, in [`crate::redis`]) and an in-memory one ([`memory`]) for tests of the
//! runtime without any server.
//!
//! The trait is shaped by what the transports do, not by Kombu's method list:
//! - **Taking messages** is a [`Consumer`]: [`fetch`](Consumer::fetch) takes what is waiting
//!   without blocking, [`wait`](Consumer::wait) blocks for one up to a poll interval. Redis
//!   polls (a script, then `BRPOP`); a push transport drains and awaits its delivery stream. The
//!   caller bounds how many it holds (prefetch) by how many it asks for.
//! - **Settling** a message is [`ack`](Broker::ack), [`requeue`](Broker::requeue) (hand back,
//!   or Celery's `Reject(requeue=True)`), or [`dead_letter`](Broker::dead_letter) (set aside,
//!   never run).
//! - **Visibility** is only where the transport has it: a transport whose unacked messages come
//!   back when their consumer dies (AMQP) keeps the default no-ops of
//!   [`refresh`](Broker::refresh) and [`restore_timed_out`](Broker::restore_timed_out).
//!
//! Deliveries carry Kombu's JSON envelope as text (`raw`), the form the runtime decodes and the
//! dead-letter list keeps.

#[cfg(feature = "amqp")]
mod amqp;
pub mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use thiserror::Error;

use crate::envelope::Envelope;
use crate::redis::RedisClientError;

#[cfg(feature = "amqp")]
pub use self::amqp::AmqpTransport;
pub use self::redis::RedisConsumer;

/// The future every broker call returns (boxed, so the runtime can hold `dyn Broker`).
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// A broker call that failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// From the Redis client.
    #[error(transparent)]
    Redis(#[from] RedisClientError),
    /// The broker cannot be reached now (the in-memory broker's simulated outage).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request; retrying will not help.
    #[error("broker refused: {0}")]
    Refused(String),
}

impl BrokerError {
    /// Whether retrying later can succeed (lost connection, timeout, server loading or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_transient(),
            Self::Unavailable(_) => true,
            Self::Refused(_) => false,
        }
    }
}

/// Where a fetched message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Held under this delivery tag: it must be acked, requeued or set aside.
    Tracked(String),
    /// Not a Kombu envelope: already set aside on the dead-letter list by the broker.
    DeadLettered,
}

/// One message taken from a queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message as it was on the queue (bytes: it may not even be UTF-8).
    pub raw: Vec<u8>,
    /// The queue it came from.
    pub queue: String,
    /// Tracked or already set aside.
    pub state: DeliveryState,
}

/// Where a requeued message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Taken next: a message handed back unstarted (shutdown), as Kombu's restore.
    Next,
    /// Behind the waiting messages: Celery's `Reject(requeue=True)`.
    Last,
}

/// The broker, as the worker runtime uses it. Every message handed out by a [`Consumer`] of
/// this broker is settled exactly once through it: acked, requeued or set aside.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Where it is, for logs (passwords hidden).
    fn describe(&self) -> String;

    /// Declares what a Celery worker declares when it starts consuming `queues`.
    fn declare_queues<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, ()>;

    /// A consumer of `queues`, taken in this order with rotation after each delivery (Kombu's
    /// round robin). `prefetch` is the most messages the runtime holds (a transport that pushes
    /// deliveries sets its window to it). `held` says whether the runtime holds a delivery tag
    /// (a transport that must recover messages whose fetch reply was lost skips those).
    fn consumer(
        &self,
        queues: Vec<String>,
        prefetch: usize,
        held: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Box<dyn Consumer>;

    /// Acknowledges delivered messages: they are done.
    fn ack<'a>(&'a self, tags: &'a [&'a str]) -> BrokerFuture<'a, ()>;

    /// Puts a delivered message back on `queue`, flagged redelivered. `raw` is the delivery's
    /// text. Returns false when it was no longer held (restored or acked by someone else).
    fn requeue<'a>(
        &'a self,
        tag: &'a str,
        raw: &'a str,
        queue: &'a str,
        position: Requeue,
    ) -> BrokerFuture<'a, bool>;

    /// Sets a message aside on the dead-letter list with `reason`, never to run; settles it
    /// when it is tracked (`tag`).
    fn dead_letter<'a>(
        &'a self,
        tag: Option<&'a str>,
        raw: &'a [u8],
        queue: &'a str,
        reason: &'a str,
    ) -> BrokerFuture<'a, ()>;

    /// Publishes to `queue` (a retry of a consumed queue, whose bindings exist).
    fn publish<'a>(&'a self, queue: &'a str, envelope: &'a Envelope) -> BrokerFuture<'a, ()>;

    /// Publishes to `queue`, declaring it first as a Kombu producer does (a task a handler sends).
    fn publish_declared<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BrokerFuture<'a, ()>;

    /// How many messages wait in each of `queues`.
    fn queue_lengths<'a>(&'a self, queues: &'a [String]) -> BrokerFuture<'a, Vec<u64>>;

    /// Marks held messages as still in hand, so a visibility timeout does not restore them.
    fn refresh<'a>(&'a self, tags: &'a [String]) -> BrokerFuture<'a, ()> {
        let _ = tags;
        Box::pin(async { Ok(()) })
    }

    /// Puts back messages that consumers left unacked for longer than the visibility timeout;
    /// returns how many.
    fn restore_timed_out(&self) -> BrokerFuture<'_, usize> {
        Box::pin(async { Ok(0) })
    }
}

/// Takes messages from the queues of [`Broker::consumer`]. Neither method is cancel-safe: a
/// dropped call may have taken a message; let it finish.
pub trait Consumer: Send {
    /// Up to `max` waiting messages, without waiting for more (empty when none wait).
    fn fetch(&mut self, max: usize) -> BrokerFuture<'_, Vec<Delivery>>;

    /// Waits up to the transport's poll interval (about a second) for one message.
    fn wait(&mut self) -> BrokerFuture<'_, Option<Delivery>>;

    /// The runtime now holds up to `messages` (its prefetch window plus the messages it holds
    /// outside it, waiting for their ETA). A transport that pushes deliveries within a window
    /// of its own (AMQP's `basic.qos`) widens or narrows it, as Celery raises the QoS for ETA
    /// messages; a polling transport has nothing to do.
    fn set_window(&mut self, messages: usize) -> BrokerFuture<'_, ()> {
        let _ = messages;
        Box::pin(async { Ok(()) })
    }
}
