//! Finishing messages: store the outcome, then ack. Two tasks form a pipeline, each taking
//! everything that is waiting in one round trip: the result writer stores a batch of records
//! (one script call), then passes their tags to the acker, which acks them in one pipeline.
//! So a message is acknowledged only after its result is stored, and a busy worker spends
//! about two Redis round trips per batch rather than per task.

use std::sync::Arc;

use celeriac_protocol::redis::{Backoff, RedisBackend, RedisBroker, StoreRequest};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::inflight::InFlight;
use crate::retry::until_ok;

/// Most records or acks sent in one round trip.
const BATCH: usize = 512;

/// How a message ends.
#[derive(Debug)]
pub(crate) struct Settlement {
    /// The record to store first, if results are kept for it.
    pub store: Option<StoreRequest>,
    /// Delivery tag to ack once stored; `None` for an intermediate state (STARTED), which is
    /// stored in order with the rest and acks nothing.
    pub tag: Option<String>,
    /// The prefetch slot the message held, freed once acked.
    pub permit: Option<OwnedSemaphorePermit>,
}

struct Ack {
    tag: String,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Hands settlements to the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    tx: UnboundedSender<Settlement>,
}

impl Settler {
    pub fn send(&self, s: Settlement) {
        if let Err(e) = self.tx.send(s) {
            // Only after the pipeline stopped: the message stays unacked and will be restored.
            error!(tag = ?e.0.tag, "result pipeline is closed; message left for redelivery");
        }
    }
}

/// The running pipeline.
#[derive(Debug)]
pub(crate) struct Pipeline {
    writer: JoinHandle<()>,
    acker: JoinHandle<()>,
}

impl Pipeline {
    /// Waits until everything sent so far is stored and acked (after `closing` fired), or
    /// until `give_up` fires.
    pub async fn finish(self) {
        let _ = self.writer.await;
        let _ = self.acker.await;
    }
}

/// Starts the pipeline. It drains and stops once `closing` fires and nothing is left;
/// `give_up` makes it stop retrying Redis (what is not acked stays recoverable).
pub(crate) fn start(
    backend: Option<RedisBackend>,
    broker: RedisBroker,
    inflight: Arc<InFlight>,
    backoff: Backoff,
    closing: CancellationToken,
    give_up: CancellationToken,
) -> (Settler, Pipeline) {
    let (tx, rx) = unbounded_channel();
    let (ack_tx, ack_rx) = unbounded_channel();
    let writer = tokio::spawn(write_results(
        rx,
        backend,
        ack_tx,
        backoff,
        closing.clone(),
        give_up.clone(),
    ));
    let acker = tokio::spawn(ack(ack_rx, broker, inflight, backoff, give_up));
    (Settler { tx }, Pipeline { writer, acker })
}

/// Receives up to `BATCH` items: waits for one, then takes whatever else is already queued.
/// Returns `None` when the channel is empty and `closing` fired (or all senders are gone).
async fn next_batch<T>(
    rx: &mut UnboundedReceiver<T>,
    closing: Option<&CancellationToken>,
) -> Option<Vec<T>> {
    let first = match closing {
        Some(closing) => tokio::select! {
            biased;
            item = rx.recv() => item?,
            () = closing.cancelled() => match rx.try_recv() {
                Ok(item) => item,
                Err(_) => return None,
            },
        },
        None => rx.recv().await?,
    };
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn write_results(
    mut rx: UnboundedReceiver<Settlement>,
    backend: Option<RedisBackend>,
    ack_tx: UnboundedSender<Ack>,
    backoff: Backoff,
    closing: CancellationToken,
    give_up: CancellationToken,
) {
    while let Some(batch) = next_batch(&mut rx, Some(&closing)).await {
        let mut stores = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        for s in batch {
            if let Some(store) = s.store {
                stores.push(store);
            }
            if let Some(tag) = s.tag {
                acks.push(Ack {
                    tag,
                    _permit: s.permit,
                });
            }
        }
        if let (Some(backend), false) = (&backend, stores.is_empty()) {
            let stored = until_ok("storing results", backoff, &give_up, || {
                backend.store(&stores)
            })
            .await;
            if stored.is_none() {
                if give_up.is_cancelled() {
                    return; // shutting down without Redis: these stay unacked, to be restored
                }
                // A permanent error for the batch: store one by one so one bad key costs one result.
                for one in &stores {
                    let single = std::slice::from_ref(one);
                    if until_ok("storing a result", backoff, &give_up, || {
                        backend.store(single)
                    })
                    .await
                    .is_none()
                    {
                        error!(task_id = %one.task_id, "result could not be stored; acking anyway");
                    }
                }
            }
            debug!(count = stores.len(), "stored results");
        }
        for a in acks {
            let _ = ack_tx.send(a);
        }
    }
}

async fn ack(
    mut rx: UnboundedReceiver<Ack>,
    broker: RedisBroker,
    inflight: Arc<InFlight>,
    backoff: Backoff,
    give_up: CancellationToken,
) {
    while let Some(batch) = next_batch(&mut rx, None).await {
        let tags: Vec<&str> = batch.iter().map(|a| a.tag.as_str()).collect();
        if until_ok("acking messages", backoff, &give_up, || broker.ack(&tags))
            .await
            .is_none()
            && give_up.is_cancelled()
        {
            return;
        }
        inflight.remove_many(&tags);
        debug!(count = tags.len(), "acked");
        // Dropping the batch frees the prefetch slots.
    }
}
