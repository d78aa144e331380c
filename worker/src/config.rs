//! The validated worker configuration: typed values with Celery's defaults. The CLI
//! ([`crate::cli`]) turns flags and environment variables into one of these.

use std::time::Duration;

use celeriac_protocol::redis::{Backoff, RedisUrl};
use chrono_tz::Tz;

/// Where the broker is: Redis in Kombu's layout, or RabbitMQ (feature `amqp`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BrokerUrl {
    /// `redis://`, `rediss://`.
    Redis(RedisUrl),
    /// `amqp://`, `amqps://`, `pyamqp://`.
    #[cfg(feature = "amqp")]
    Amqp(celeriac_protocol::amqp::AmqpUrl),
}

impl BrokerUrl {
    /// The URL with its password hidden.
    pub fn redacted(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for BrokerUrl {
    /// Passwords hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(url) => url.fmt(f),
            #[cfg(feature = "amqp")]
            Self::Amqp(url) => url.fmt(f),
        }
    }
}

impl From<RedisUrl> for BrokerUrl {
    fn from(url: RedisUrl) -> Self {
        Self::Redis(url)
    }
}

/// Everything a [`Worker`](crate::Worker) needs to know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Broker URL.
    pub broker: BrokerUrl,
    /// Where results are stored; `None` stores none (Celery's disabled backend).
    pub result_backend: Option<ResultBackendConfig>,
    /// Store the request's task name, arguments, worker and periodic task name with each result
    /// (Celery's `result_extended`; django-celery-results' extended columns).
    pub result_extended: bool,
    /// Queues to consume, in priority of polling.
    pub queues: Vec<String>,
    /// Queue of tasks sent from handlers without one (Celery's `task_default_queue`).
    pub default_queue: String,
    /// Tasks run at the same time.
    pub concurrency: usize,
    /// Messages held per concurrency slot (0: no limit). Celery: 4.
    pub prefetch_multiplier: usize,
    /// Node name, e.g. `w1@host`.
    pub hostname: String,
    /// Kombu's visibility timeout. Celery: 3600 s.
    pub visibility_timeout: Duration,
    /// Result expiry (`None`: never). Celery: 1 day.
    pub result_expires: Option<Duration>,
    /// App time zone: naive ETAs are read in it and `date_done` is written in it.
    pub timezone: Tz,
    /// Store STARTED for every task (Celery's `task_track_started`).
    pub track_started: bool,
    /// How long running tasks may finish after a shutdown signal before they are stopped and
    /// their messages handed back.
    pub shutdown_timeout: Duration,
    /// Redis list where undecodable messages are set aside.
    pub dead_letter_key: String,
    /// Pauses between reconnect attempts.
    pub reconnect: Backoff,
    /// Liveness fails after the consumer has waited this long for the broker while it wants
    /// messages (it is stuck).
    pub stall_timeout: Duration,
    /// How often the queue lengths are read for the `celeriac_queue_length` gauge; `None` reads
    /// none (metrics off).
    pub queue_length_every: Option<Duration>,
}

/// A result backend, as Celery's `result_backend` setting names it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResultBackendConfig {
    /// Celery's Redis backend (`redis://…`, `rediss://…`).
    Redis(RedisUrl),
    /// `django-db`: django-celery-results' `TaskResult` table, in the database of
    /// `DATABASE_URL`.
    #[cfg(feature = "mysql")]
    DjangoDb(crate::mysql::DatabaseUrl),
}

/// Upper bound on held messages when the prefetch multiplier is 0 (unlimited in Celery).
pub const UNLIMITED_PREFETCH: usize = 65_536;

impl WorkerConfig {
    /// A configuration with Celery's defaults for `broker`.
    pub fn new(broker: impl Into<BrokerUrl>) -> Self {
        Self {
            broker: broker.into(),
            result_backend: None,
            result_extended: false,
            queues: vec!["celery".into()],
            default_queue: "celery".into(),
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            prefetch_multiplier: 4,
            hostname: format!("celery@{}", host_name()),
            visibility_timeout: Duration::from_secs(3600),
            result_expires: Some(Duration::from_secs(86_400)),
            timezone: Tz::UTC,
            track_started: false,
            shutdown_timeout: Duration::from_secs(25),
            dead_letter_key: "celeriac.rejected".into(),
            reconnect: Backoff::default(),
            stall_timeout: Duration::from_secs(60),
            queue_length_every: None,
        }
    }

    /// How many messages the worker holds at most (ETA tasks excepted, as in Celery).
    pub fn prefetch_limit(&self) -> usize {
        match self.prefetch_multiplier {
            0 => UNLIMITED_PREFETCH,
            m => self
                .concurrency
                .saturating_mul(m)
                .clamp(1, UNLIMITED_PREFETCH),
        }
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
