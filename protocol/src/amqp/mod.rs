//! RabbitMQ (AMQP 0-9-1) through `lapin`, the way Kombu's `pyamqp` transport uses it, so that
//! Celery producers and Python workers share queues with us (feature `amqp`).
//!
//! * [`url`]: `amqp://`, `amqps://`, `pyamqp://` URLs with Kombu's vhost rules and TLS options.
//! * [`wire`]: pure mapping between an AMQP message and our [`Envelope`](crate::Envelope).
//! * [`AmqpBroker`]: one connection with a publish channel (publisher confirms), a declaration
//!   channel, and one channel per [`AmqpConsumer`]; Kombu's declarations of Celery's queues
//!   ([`AmqpBroker::declare_queues`]), ack / reject by [`DeliveryTag`], fanout publish and
//!   subscribe.
//!
//! **Connection loss.** Nothing reconnects behind the caller's back. When the connection or a
//! consumer's channel dies, [`AmqpConsumer::next`] yields an error for which
//! [`AmqpError::is_connection_lost`] is true, and so does any call on the broker. The caller
//! then calls [`AmqpBroker::reconnect`] (with its own backoff), declares and consumes again.
//! RabbitMQ has already put every unacked message of the lost channel back on its queue, so
//! the deliveries the caller still holds are void: their [`DeliveryTag`] carries the connection
//! generation, and acking one of an older generation is refused
//! ([`AmqpError::StaleDelivery`]) instead of acking an unrelated message on the new channel.
//! Channels closed by a channel-level error (a refused declaration, a publish to a missing
//! exchange) are replaced on the next call, on the same connection.

mod client;
mod consumer;
mod declare;
pub mod url;
pub mod wire;

pub use client::{AmqpBroker, AmqpOptions, FanoutSubscription};
pub use consumer::{AmqpConsumer, AmqpDelivery, DeliveryTag, QosScope};
pub use declare::{DeclaredQueue, OnMismatch, QueueType};
pub use url::{AmqpUrl, AmqpUrlError};
pub use wire::{DeliveryInfo, WireError};

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use thiserror::Error;

/// What an AMQP call can fail with. [`is_connection_lost`](Self::is_connection_lost) says
/// whether the caller should reconnect.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The URL or its TLS files cannot be used.
    #[error(transparent)]
    Url(#[from] AmqpUrlError),
    /// The connection could not be opened (refused, TLS, authentication, unknown vhost).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The connection or the channel is gone: reconnect, declare and consume again. Unacked
    /// messages of the lost channel are back on their queues.
    #[error("connection lost ({context}): {source}")]
    ConnectionLost {
        /// What we were doing.
        context: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused an operation (access refused, not found, ...); the channel it
    /// closed is replaced on the next call.
    #[error("{context}: {source}")]
    Refused {
        /// What we were doing.
        context: String,
        /// lapin's error, with the broker's reply text.
        #[source]
        source: lapin::Error,
    },
    /// The queue exists with other arguments than ours and [`OnMismatch::Fail`] is set.
    #[error(
        "queue `{queue}` exists with arguments {current} but we declare {ours}; set the same arguments (task_queue_max_priority, task_default_queue_type) or delete the queue"
    )]
    DeclareConflict {
        /// The queue.
        queue: String,
        /// Our arguments and flags, as text.
        ours: String,
        /// The existing queue's, as far as the broker said.
        current: String,
    },
    /// The exchange named after a queue exists with another type or durability.
    #[error("exchange `{exchange}` exists with other settings: {reason}")]
    ExchangeConflict {
        /// The exchange.
        exchange: String,
        /// The broker's reply text.
        reason: String,
    },
    /// A delivery of an earlier connection: its channel is gone and the broker has requeued it.
    #[error(
        "delivery {tag} belongs to connection generation {}, now {current}: it has been requeued by the broker",
        tag.generation
    )]
    StaleDelivery {
        /// The tag.
        tag: DeliveryTag,
        /// The current generation.
        current: u64,
    },
    /// A delivery whose consumer channel was closed (the broker requeued it).
    #[error("delivery {0}: its channel is closed; the broker has requeued it")]
    ChannelGone(DeliveryTag),
    /// The broker refused to take responsibility for a published message (`basic.nack`).
    #[error(
        "publish to exchange `{exchange}` with routing key `{routing_key}` was nacked by the broker"
    )]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A published message matched no queue and came back (`basic.return`).
    #[error(
        "publish to exchange `{exchange}` with routing key `{routing_key}` was returned: no queue is bound"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The broker cancelled our consumer (the queue was deleted, or a quorum queue's leader
    /// moved); consume again once the queue is back.
    #[error("the broker cancelled the consumer of queue `{queue}`")]
    ConsumerCancelled {
        /// The queue.
        queue: String,
    },
    /// The envelope cannot be written as an AMQP message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A name longer than AMQP's 255 bytes.
    #[error("`{0}` is longer than 255 bytes")]
    NameTooLong(String),
}

impl AmqpError {
    /// Whether the connection is gone, so that the caller must [`AmqpBroker::reconnect`].
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Self::ConnectionLost { .. } | Self::Connect { .. })
    }

    /// Whether trying again later, after a reconnect if [`is_connection_lost`](Self::is_connection_lost),
    /// can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ConnectionLost { .. }
                | Self::Connect { .. }
                | Self::Nacked { .. }
                | Self::ConsumerCancelled { .. }
        )
    }
}

/// The broker's error code and text, when lapin's error is a protocol error.
pub(crate) fn protocol_error(e: &lapin::Error) -> Option<(&AMQPErrorKind, &str)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some((p.kind(), p.get_message().as_str())),
        _ => None,
    }
}

/// Whether the broker answered with this channel-level error.
pub(crate) fn is_soft(e: &lapin::Error, code: AMQPSoftError) -> bool {
    matches!(protocol_error(e), Some((AMQPErrorKind::Soft(k), _)) if *k == code)
}

/// Sorts a lapin error into lost connection or refusal.
pub(crate) fn classify(context: &'static str, e: lapin::Error) -> AmqpError {
    if e.is_amqp_soft_error() {
        AmqpError::Refused {
            context: context.to_owned(),
            source: e,
        }
    } else {
        AmqpError::ConnectionLost { context, source: e }
    }
}

pub(crate) fn short(name: &str) -> Result<lapin::types::ShortString, AmqpError> {
    lapin::types::ShortString::try_new(name).map_err(|_| AmqpError::NameTooLong(name.to_owned()))
}
