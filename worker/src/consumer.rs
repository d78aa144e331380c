//! The fetch loop: keeps the prefetch window full, hands each message to its own job, and
//! survives any broker failure by reconnecting and resuming (a Python worker can stop
//! consuming for good after a reconnect; this loop only ends on shutdown).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use celeriac_protocol::{BrokerError, Delivery, DeliveryState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::inflight::Held;
use crate::job::{self, Job};
use crate::worker::Shared;

/// Consumes until `shared.stop` fires. Cancel-safe at every await that is not a broker call;
/// broker calls always run to completion so no taken message is dropped.
pub(crate) async fn run(shared: Arc<Shared>, prefetch: Arc<Semaphore>, jobs: TaskTracker) {
    let inflight = shared.inflight.clone();
    let mut consumer = shared.broker.consumer(
        shared.config.queues.clone(),
        shared.config.prefetch_limit(),
        Box::new(move |tag| inflight.contains(tag)),
    );
    let max_batch = (shared.config.prefetch_limit() / 4).clamp(1, 1024);
    let mut failures = 0u32;
    let mut window = shared.config.prefetch_limit();
    loop {
        let first = match prefetch.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Every message we may hold is held: idle by choice, not stuck.
                shared.health.set_saturated(true);
                let permit = tokio::select! {
                    biased;
                    () = shared.stop.cancelled() => break,
                    permit = prefetch.clone().acquire_owned() => permit,
                };
                shared.health.set_saturated(false);
                match permit {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        if shared.stop.is_cancelled() {
            break;
        }
        let want = shared
            .config
            .prefetch_limit()
            .saturating_add(shared.outside_window.load(Ordering::Relaxed));
        if want != window {
            match consumer.set_window(want).await {
                Ok(()) => window = want,
                Err(e) => {
                    drop(first);
                    if !back_off(&shared, &mut failures, &e).await {
                        break;
                    }
                    continue;
                }
            }
        }
        // Take at most a quarter of the window per fetch, so that fetching, running, storing and
        // acking overlap instead of moving the whole window through each stage in turn.
        let mut permits = vec![first];
        while permits.len() < max_batch {
            match prefetch.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let fetched = match consumer.fetch(permits.len()).await {
            Ok(batch) if batch.is_empty() => {
                permits.truncate(1);
                if shared.stop.is_cancelled() {
                    break;
                }
                consumer
                    .wait()
                    .await
                    .map(|d| d.into_iter().collect::<Vec<_>>())
            }
            other => other,
        };
        match fetched {
            Ok(batch) => {
                shared.health.consumed();
                if failures > 0 {
                    info!(
                        "broker connection restored after {failures} failed attempts; consuming again"
                    );
                    crate::stats::reconnected();
                    failures = 0;
                }
                for (delivery, permit) in batch.into_iter().zip(permits.drain(..)) {
                    dispatch(&shared, &jobs, delivery, permit);
                }
            }
            Err(e) => {
                drop(permits);
                if !back_off(&shared, &mut failures, &e).await {
                    break;
                }
            }
        }
    }
}

/// Logs a broker failure and waits out the backoff for this many `failures` (then counts one
/// more). Returns false when shutdown came first.
async fn back_off(shared: &Shared, failures: &mut u32, error: &BrokerError) -> bool {
    shared.health.broker_failed();
    let delay = shared.config.reconnect.delay(*failures);
    *failures = failures.saturating_add(1);
    warn!(error = %error, "cannot reach the broker; retrying in {delay:?}");
    tokio::select! {
        biased;
        () = shared.stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) {
    let Delivery { raw, queue, state } = delivery;
    match state {
        DeliveryState::DeadLettered => {
            error!(
                queue = %queue,
                "Received a list entry that is not a Kombu message; set aside on '{}' and not executed: {}",
                shared.config.dead_letter_key,
                preview(&raw)
            );
            crate::stats::set_aside(&queue);
        }
        DeliveryState::Tracked(tag) => match String::from_utf8(raw) {
            Ok(text) => {
                let raw: Arc<str> = text.into();
                let queue: Arc<str> = queue.into();
                shared.inflight.insert(
                    tag.clone(),
                    Held {
                        raw: raw.clone(),
                        queue: queue.clone(),
                    },
                );
                let job = Job {
                    tag,
                    raw,
                    queue,
                    prefetch: Some(permit),
                };
                jobs.spawn(job::process(shared.clone(), job));
            }
            Err(e) => {
                let shared = shared.clone();
                jobs.spawn(async move {
                    let _permit = permit;
                    let reason = format!("the message is not valid UTF-8: {}", e.utf8_error());
                    job::set_aside(&shared, &tag, e.as_bytes(), &queue, &reason).await;
                });
            }
        },
    }
}

fn preview(raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    let mut end = raw.len().min(200);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{:?}{}",
        &raw[..end],
        if end < raw.len() { "…" } else { "" }
    )
}
