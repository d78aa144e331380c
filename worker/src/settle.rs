//! Finishing messages: store the outcome, then ack. Two tasks form a pipeline, each taking
//! everything that is waiting in one round trip: the result writer stores a batch of records
//! through the [`ResultBackend`] (one script call on Redis, one statement on a database), then
//! passes their tags to the acker, which acks them in one Redis pipeline. So a message is
//! acknowledged only after its result is stored, and a busy worker spends about two round trips
//! per batch rather than per task. The pipeline is generic over the backend; the runtime sees
//! only the [`Settler`].

use std::sync::Arc;

use celeriac_protocol::Broker;
use celeriac_protocol::redis::Backoff;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::backend::{Entry, PipelineDeps, ResultBackend};
use crate::inflight::InFlight;
use crate::retry::until_ok;

/// Most records or acks sent in one round trip.
const BATCH: usize = 512;

/// How a message ends, with its record already encoded by the backend.
#[derive(Debug)]
struct Settlement<R> {
    /// The record to store first, if results are kept for it.
    store: Option<R>,
    /// Delivery tag to ack once stored; `None` for an intermediate state (STARTED), which is
    /// stored in order with the rest and acks nothing.
    tag: Option<String>,
    /// The prefetch slot the message held, freed once acked.
    permit: Option<OwnedSemaphorePermit>,
}

struct Ack {
    tag: String,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The typed front of a running pipeline, seen by the runtime without its backend's type.
trait Front: Send + Sync {
    fn send(
        &self,
        entry: Option<Entry<'_>>,
        tag: Option<String>,
        permit: Option<OwnedSemaphorePermit>,
    );
}

struct Typed<B: ResultBackend> {
    backend: Arc<B>,
    tx: UnboundedSender<Settlement<B::Record>>,
}

impl<B: ResultBackend> Front for Typed<B> {
    fn send(
        &self,
        entry: Option<Entry<'_>>,
        tag: Option<String>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        // Encoded here, in the caller's task: the pipeline only sends.
        let store = entry.map(|e| self.backend.prepare(e));
        if let Err(e) = self.tx.send(Settlement { store, tag, permit }) {
            // Only after the pipeline stopped: the message stays unacked and will be restored.
            error!(tag = ?e.0.tag, "result pipeline is closed; message left for redelivery");
        }
    }
}

/// Hands settlements to the pipeline.
#[derive(Clone)]
pub(crate) struct Settler {
    front: Arc<dyn Front>,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler").finish_non_exhaustive()
    }
}

impl Settler {
    /// Settles a message: stores `entry` (if any), then acks `tag` and frees `permit`.
    pub fn settle(
        &self,
        entry: Option<Entry<'_>>,
        tag: String,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        self.front.send(entry, Some(tag), permit);
    }

    /// Stores an intermediate state (STARTED), in order before the final one; acks nothing.
    pub fn store_only(&self, entry: Entry<'_>) {
        self.front.send(Some(entry), None, None);
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

/// Starts the pipeline on `backend`. It drains and stops once `closing` fires and nothing is
/// left; `give_up` makes it stop retrying (what is not acked stays recoverable).
pub(crate) fn start<B: ResultBackend>(backend: Arc<B>, deps: PipelineDeps) -> (Settler, Pipeline) {
    let PipelineDeps {
        broker,
        inflight,
        backoff,
        closing,
        give_up,
    } = deps;
    let (tx, rx) = unbounded_channel();
    let (ack_tx, ack_rx) = unbounded_channel();
    let writer = tokio::spawn(write_results(
        rx,
        backend.clone(),
        ack_tx,
        backoff,
        closing,
        give_up.clone(),
    ));
    let acker = tokio::spawn(ack(ack_rx, broker, inflight, backoff, give_up));
    (
        Settler {
            front: Arc::new(Typed { backend, tx }),
        },
        Pipeline { writer, acker },
    )
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

async fn write_results<B: ResultBackend>(
    mut rx: UnboundedReceiver<Settlement<B::Record>>,
    backend: Arc<B>,
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
        if !stores.is_empty() {
            let began = std::time::Instant::now();
            let stored = until_ok("storing results", backoff, &give_up, || {
                backend.store(&stores)
            })
            .await;
            crate::stats::stored(began.elapsed());
            if stored.is_none() {
                if give_up.is_cancelled() {
                    return; // shutting down without the backend: these stay unacked, to be restored
                }
                // A permanent error for the batch: store one by one so one bad record costs one
                // result.
                for one in &stores {
                    let single = std::slice::from_ref(one);
                    if until_ok("storing a result", backoff, &give_up, || {
                        backend.store(single)
                    })
                    .await
                    .is_none()
                    {
                        if give_up.is_cancelled() {
                            return;
                        }
                        error!(task_id = %B::task_id(one), "result could not be stored; acking anyway");
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
    broker: Arc<dyn Broker>,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use celeriac_protocol::TaskMessage;
    use celeriac_protocol::result::State;
    use chrono::Utc;
    use serde_json::{Map, json};

    use super::*;
    use crate::backend::memory::{Memory, Stored};

    struct Harness {
        backend: Arc<Memory>,
        tx: UnboundedSender<Settlement<Stored>>,
        acks: UnboundedReceiver<Ack>,
        closing: CancellationToken,
        give_up: CancellationToken,
        writer: JoinHandle<()>,
    }

    fn harness(backend: Memory) -> Harness {
        let backend = Arc::new(backend);
        let (tx, rx) = unbounded_channel();
        let (ack_tx, acks) = unbounded_channel();
        let (closing, give_up) = (CancellationToken::new(), CancellationToken::new());
        let writer = tokio::spawn(write_results(
            rx,
            backend.clone(),
            ack_tx,
            Backoff::default(),
            closing.clone(),
            give_up.clone(),
        ));
        Harness {
            backend,
            tx,
            acks,
            closing,
            give_up,
            writer,
        }
    }

    impl Harness {
        fn send(&self, id: &str, state: State, tag: Option<&str>) {
            let msg = TaskMessage::new("celeriac.test.add", id, vec![], Map::new(), "celery");
            let entry = Entry {
                msg: &msg,
                registered: true,
                state,
                result: json!(id),
                traceback: None,
                children: Vec::new(),
                at: Utc::now(),
            };
            let store = Some(self.backend.prepare(entry));
            let sent = self.tx.send(Settlement {
                store,
                tag: tag.map(str::to_owned),
                permit: None,
            });
            assert!(sent.is_ok(), "the writer is running");
        }

        fn acked(&mut self) -> Vec<String> {
            let mut tags = Vec::new();
            while let Ok(a) = self.acks.try_recv() {
                tags.push(a.tag);
            }
            tags
        }
    }

    fn stored(h: &Harness) -> Vec<(String, State)> {
        h.backend
            .stored()
            .into_iter()
            .map(|s| (s.task_id, s.state))
            .collect()
    }

    #[tokio::test]
    async fn one_batch_is_stored_in_order_then_acked() {
        let mut h = harness(Memory::default());
        h.send("a", State::Started, None);
        h.send("a", State::Success, Some("ta"));
        h.send("b", State::Failure, Some("tb"));
        h.closing.cancel();
        (&mut h.writer).await.expect("writer ends");
        assert_eq!(h.backend.calls(), [3]);
        assert_eq!(
            stored(&h),
            [
                ("a".to_owned(), State::Started),
                ("a".to_owned(), State::Success),
                ("b".to_owned(), State::Failure)
            ]
        );
        assert_eq!(h.acked(), ["ta", "tb"]);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_hold_the_ack_until_the_store_succeeds() {
        let backend = Memory::default();
        backend.fail_next(2);
        let mut h = harness(backend);
        h.send("a", State::Success, Some("ta"));
        let ack = h.acks.recv().await.expect("acked in the end");
        assert_eq!(ack.tag, "ta");
        // Acked only after the third attempt stored it.
        assert_eq!(h.backend.calls(), [1, 1, 1]);
        assert_eq!(stored(&h), [("a".to_owned(), State::Success)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_record_costs_only_its_own_result() {
        let backend = Memory::default();
        backend.poison("bad");
        let mut h = harness(backend);
        h.send("a", State::Success, Some("ta"));
        h.send("bad", State::Success, Some("tbad"));
        h.send("c", State::Success, Some("tc"));
        h.closing.cancel();
        (&mut h.writer).await.expect("writer ends");
        // Three refusals of the batch, then one by one: `bad` three times, the others once.
        assert_eq!(h.backend.calls(), [3, 3, 3, 1, 1, 1, 1, 1]);
        assert_eq!(
            stored(&h),
            [
                ("a".to_owned(), State::Success),
                ("c".to_owned(), State::Success)
            ]
        );
        assert_eq!(h.acked(), ["ta", "tbad", "tc"]);
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_leaves_unstored_messages_unacked() {
        let backend = Memory::default();
        backend.fail_next(64);
        let mut h = harness(backend);
        h.send("a", State::Success, Some("ta"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(h.backend.calls().len() > 3, "still retrying");
        h.give_up.cancel();
        (&mut h.writer).await.expect("writer ends");
        assert!(h.acked().is_empty());
        assert!(h.backend.stored().is_empty());
    }
}
