//! Redis clients: the Kombu-compatible broker, Celery's Redis result backend, and beat's lease
//! and tick publisher.
//!
//! Both speak through `redis::aio::ConnectionManager`, which reconnects by itself after a
//! connection is lost; callers retry failed commands with [`Backoff`].

mod backend;
mod beat;
mod broker;
mod restore;
mod scripts;
mod url;

pub use backend::{RedisBackend, StoreRequest};
pub use beat::{DEFAULT_PREFIX as BEAT_KEY_PREFIX, LeaseState, RedisBeat, Tick, TickOutcome};
pub use broker::{BrokerOptions, Delivery, DeliveryState, RedisBroker, dead_letter_record};
pub use url::{RedisUrl, UrlError};

use std::time::Duration;

use thiserror::Error;

/// What a Redis client call can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RedisClientError {
    /// The command failed; a connection error is worth retrying after a pause.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A reply did not have the expected shape.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl RedisClientError {
    /// Whether retrying later can succeed (lost connection, timeout, server loading or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(
                        e.code(),
                        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY")
                    )
            }
            Self::Reply(_) => false,
        }
    }
}

/// Exponential backoff between reconnect attempts: `min`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First pause.
    pub min: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The pause before attempt number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(16));
        self.min.saturating_mul(factor).min(self.max)
    }
}
