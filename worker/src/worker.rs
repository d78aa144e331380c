//! The worker: connects, consumes, runs, and shuts down in phases.
//!
//! Shutdown is an input (a `CancellationToken`); the binary maps signals to it. When it fires:
//! 1. the consumer stops fetching;
//! 2. every message not yet started (prefetched, or waiting for its ETA) goes back to its queue
//!    at once, flagged `redelivered`, where the next worker takes it first;
//! 3. running tasks get `shutdown_timeout` to finish; their results are stored and acked;
//! 4. tasks still running then are stopped and their messages handed back too, instead of
//!    waiting out the visibility timeout as a killed Python worker's messages do.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use celeriac_protocol::redis::{BrokerOptions, RedisBroker};
use celeriac_protocol::{Broker, BrokerError};
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::{self, BackendError, Connected, PipelineDeps};
use crate::config::{BrokerUrl, WorkerConfig};
use crate::health::WorkerHealth;
use crate::inflight::InFlight;
use crate::job::{self, Job};
use crate::registry::Registry;
use crate::sender::TaskSender;
use crate::settle::Settler;
use crate::{consumer, maintenance};

/// How long stores and acks may take to flush once tasks are done.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the worker could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Shutdown was requested before the broker could be reached.
    #[error("shut down before the broker at {url} could be reached: {source}")]
    NeverConnected {
        /// The broker URL (password hidden).
        url: String,
        /// The last connection error.
        #[source]
        source: BrokerError,
    },
    /// Shutdown was requested before the result backend could be reached.
    #[error("shut down before the result backend could be reached: {source}")]
    BackendNeverConnected {
        /// The last connection error.
        #[source]
        source: BackendError,
    },
}

/// State shared by the consumer, the jobs and the upkeep tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: WorkerConfig,
    pub registry: Registry,
    pub broker: Arc<dyn Broker>,
    pub inflight: Arc<InFlight>,
    pub concurrency: Arc<Semaphore>,
    pub settler: Settler,
    /// Graceful shutdown requested: stop fetching, hand back what has not started.
    pub stop: CancellationToken,
    /// The grace period is over: stop running tasks.
    pub abort: CancellationToken,
    /// `gen<pid>@<host>`, Celery's origin for messages this process publishes.
    pub origin: String,
    /// Sends the tasks handlers send.
    pub sender: Arc<TaskSender>,
    /// What the probes read.
    pub health: Arc<WorkerHealth>,
    /// Messages held outside the prefetch window (waiting for their ETA): a transport with a
    /// window of its own widens it by this many.
    pub outside_window: Arc<AtomicUsize>,
}

/// A Celery-compatible worker.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    registry: Registry,
    health: Arc<WorkerHealth>,
}

impl Worker {
    /// A worker running `registry`'s tasks with `config`.
    pub fn new(config: WorkerConfig, registry: Registry) -> Self {
        let health = Arc::new(WorkerHealth::new(config.stall_timeout));
        Self {
            config,
            registry,
            health,
        }
    }

    /// What `/healthz` and `/readyz` read (serve it with [`celeriac_ops::http::Listener`]).
    pub fn health(&self) -> Arc<WorkerHealth> {
        self.health.clone()
    }

    /// Runs until `shutdown` fires and the shutdown phases are done.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Self {
            config,
            registry,
            health,
        } = self;
        let (broker, results) = connect(&config, &shutdown).await?;
        Self {
            config,
            registry,
            health,
        }
        .run_on(broker, results, shutdown)
        .await;
        Ok(())
    }

    /// Runs on a connected broker and result backend until `shutdown` fires and the shutdown
    /// phases are done.
    pub(crate) async fn run_on(
        self,
        broker: Arc<dyn Broker>,
        results: Box<dyn Connected>,
        shutdown: CancellationToken,
    ) {
        let Self {
            config,
            registry,
            health,
        } = self;
        let declared =
            crate::retry::until_ok("declaring queues", config.reconnect, &shutdown, || {
                broker.declare_queues(&config.queues)
            })
            .await;
        if declared.is_none() {
            return;
        }
        match broker.restore_timed_out().await {
            Ok(0) => {}
            Ok(n) => info!("restored {n} messages left unacked past the visibility timeout"),
            Err(e) => warn!(error = %e, "could not restore timed-out messages at startup"),
        }

        let inflight = Arc::new(InFlight::default());
        let abort = CancellationToken::new();
        let closing = CancellationToken::new();
        let give_up = CancellationToken::new();
        let results_in = results.describe();
        let (settler, pipeline) = results.start(PipelineDeps {
            broker: broker.clone(),
            inflight: inflight.clone(),
            backoff: config.reconnect,
            closing: closing.clone(),
            give_up: give_up.clone(),
        });
        let origin = format!("gen{}@{}", std::process::id(), crate::config::host_name());
        let sender = Arc::new(TaskSender::new(
            broker.clone(),
            origin.clone(),
            config.timezone,
            config.default_queue.clone(),
        ));
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        health.watch(inflight.clone(), slots.clone(), config.concurrency.max(1));
        let shared = Arc::new(Shared {
            concurrency: slots,
            health,
            outside_window: Arc::new(AtomicUsize::new(0)),
            origin,
            sender,
            config,
            registry,
            broker,
            inflight,
            settler,
            stop: shutdown.clone(),
            abort: abort.clone(),
        });
        let upkeep_stop = CancellationToken::new();
        let upkeep = tokio::spawn(maintenance::run(shared.clone(), upkeep_stop.clone()));
        let prefetch = Arc::new(Semaphore::new(shared.config.prefetch_limit()));
        let jobs = TaskTracker::new();

        info!(
            "{} ready: consuming {} from {}, results {}, {} tasks registered, concurrency {}, prefetch {}",
            shared.config.hostname,
            shared.config.queues.join(", "),
            shared.broker.describe(),
            results_in,
            shared.registry.names().len(),
            shared.config.concurrency,
            shared.config.prefetch_limit(),
        );
        for (task, missing) in shared.registry.unavailable() {
            warn!(
                "task {task} is unavailable on this worker: {missing}; its messages fail with this reason"
            );
        }

        consumer::run(shared.clone(), prefetch, jobs.clone()).await;
        shared.health.draining();

        // Phase 2 happens inside each job (they watch `stop`); phase 3: the grace period.
        jobs.close();
        let running = shared.inflight.len();
        info!(
            "shutting down: unstarted messages go back to their queues; waiting up to {:?} for running tasks ({running} messages held)",
            shared.config.shutdown_timeout
        );
        if tokio::time::timeout(shared.config.shutdown_timeout, jobs.wait())
            .await
            .is_err()
        {
            warn!(
                "shutdown timeout reached: stopping the tasks still running and handing their messages back"
            );
            abort.cancel();
            jobs.wait().await;
        }
        closing.cancel();
        if tokio::time::timeout(FLUSH_TIMEOUT, pipeline.finish())
            .await
            .is_err()
        {
            warn!(
                "results and acks could not be flushed in {FLUSH_TIMEOUT:?}; unacked messages will be restored by the visibility timeout"
            );
            give_up.cancel();
        }
        // Phase 4: whatever is still held (stopped tasks) goes back now.
        let leftovers = shared.inflight.drain();
        if !leftovers.is_empty() {
            info!("handing {} messages back to their queues", leftovers.len());
        }
        let hand_back_deadline = CancellationToken::new();
        let giving_up = hand_back_deadline.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(FLUSH_TIMEOUT).await;
            giving_up.cancel();
        });
        for (tag, held) in leftovers {
            let job = Job {
                tag,
                raw: held.raw,
                queue: held.queue,
                prefetch: None,
            };
            if !job::hand_back_until(&shared, &job, &hand_back_deadline).await {
                warn!(tag = %job.tag, "could not hand a message back; the visibility timeout will restore it");
            }
        }
        timer.abort();
        upkeep_stop.cancel();
        let _ = upkeep.await;
        info!("{} stopped", shared.config.hostname);
    }
}

async fn connect(
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<(Arc<dyn Broker>, Box<dyn Connected>), WorkerError> {
    let opts = BrokerOptions {
        visibility_timeout: config.visibility_timeout,
        dead_letter_key: config.dead_letter_key.clone(),
        worker_name: config.hostname.clone(),
        ..BrokerOptions::default()
    };
    let mut attempt = 0u32;
    let broker = loop {
        match connect_broker(config, &opts).await {
            Ok(broker) => break broker,
            Err(e) => {
                let delay = config.reconnect.delay(attempt);
                attempt = attempt.saturating_add(1);
                warn!(error = %e, broker = %config.broker, "cannot connect; retrying in {delay:?}");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        return Err(WorkerError::NeverConnected { url: config.broker.redacted(), source: e });
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    let mut attempt = 0u32;
    loop {
        match backend::connect(config, opts.response_timeout).await {
            Ok(results) => return Ok((broker, results)),
            Err(e) => {
                let delay = config.reconnect.delay(attempt);
                attempt = attempt.saturating_add(1);
                warn!(error = %e, "cannot connect to the result backend; retrying in {delay:?}");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        return Err(WorkerError::BackendNeverConnected { source: e });
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One attempt to reach the configured broker: the one place that knows which transports exist.
async fn connect_broker(
    config: &WorkerConfig,
    opts: &BrokerOptions,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match &config.broker {
        BrokerUrl::Redis(url) => Arc::new(RedisBroker::connect(url, opts.clone()).await?),
        #[cfg(feature = "amqp")]
        BrokerUrl::Amqp(url) => {
            use celeriac_protocol::amqp::{AmqpBroker, AmqpOptions};
            let options = AmqpOptions {
                connection_name: format!("celeriac-worker {}", config.hostname),
                ..AmqpOptions::default()
            };
            let client = AmqpBroker::connect(url, options).await?;
            Arc::new(celeriac_protocol::broker::AmqpTransport::new(
                client,
                config.dead_letter_key.clone(),
                config.hostname.clone(),
            ))
        }
    })
}
