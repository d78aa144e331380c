//! Celery and Kombu on the wire, for a worker that must be interchangeable with Python Celery.
//!
//! Two halves live here:
//!
//! * **Pure formats** (no I/O): [`envelope`] (Kombu's Redis list entry), [`message`] (task
//!   messages, protocol v2 and v1), [`content`] and [`compression`] (body codecs), [`result`]
//!   (result records and exception encoding), [`pyjson`] (JSON text as Python writes it), [`time`] (Python `isoformat` timestamps) and
//!   [`kombu`] (key names and priority layout). These take bytes and return typed values or a
//!   [`DecodeError`]; they never panic on hostile input, which a property test checks.
//! * **Redis clients** ([`redis`]): the Kombu-compatible broker and the result backend, which
//!   call the pure code and own every connection.
//! * **The broker abstraction** ([`broker`]): what the worker runtime holds, implemented by the
//!   Redis broker and by an in-memory one for tests.
//! * **RabbitMQ client** (`amqp`, behind the `amqp` feature): Kombu's AMQP transport through
//!   lapin, with its own pure mapping of AMQP messages onto [`Envelope`].

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod broker;
pub mod compression;
pub mod content;
pub mod envelope;
pub mod error;
pub mod kombu;
pub mod message;
pub mod pyjson;
pub mod redis;
pub mod result;
pub mod time;

pub use broker::{Broker, BrokerError, Consumer, Delivery, DeliveryState, Requeue};
pub use compression::Compression;
pub use content::ContentType;
pub use envelope::Envelope;
pub use error::{DecodeError, EncodeError};
pub use message::{Embed, Protocol, TaskHeaders, TaskMessage, TaskProperties};
pub use result::{PyException, ResultRecord, State};
