//! Background upkeep of the unacked bookkeeping:
//!
//! * **refresh**: every quarter of the visibility timeout, re-stamp the `unacked_index` entries
//!   of every message we hold, so a message waiting for a distant ETA (or running long) is never
//!   restored to another worker and run twice. Python Celery does not do this.
//! * **restore**: like Kombu, put messages that other (dead) workers left unacked for longer
//!   than the visibility timeout back on their queues.
//! * **queue lengths** (when metrics are on): every [`WorkerConfig::queue_length_every`], one
//!   round trip reads how many messages wait in each consumed queue, for the
//!   `celeriac_queue_length` gauge that autoscalers read. Scrapes never touch the broker.
//!
//! [`WorkerConfig::queue_length_every`]: crate::WorkerConfig::queue_length_every

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::worker::Shared;

/// The two periods for a visibility timeout.
pub(crate) fn periods(visibility_timeout: Duration) -> (Duration, Duration) {
    let refresh =
        (visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let restore =
        (visibility_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    (refresh, restore)
}

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let (refresh_every, restore_every) = periods(shared.config.visibility_timeout);
    let mut refresh = tokio::time::interval(refresh_every);
    let mut restore = tokio::time::interval(restore_every);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    restore.set_missed_tick_behavior(MissedTickBehavior::Delay);
    restore.tick().await; // the first scan ran at startup
    // Without metrics this interval is never polled: no queue lengths are read.
    let measure = shared.config.queue_length_every;
    let mut lengths = tokio::time::interval(measure.unwrap_or(Duration::from_secs(3600)));
    lengths.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = lengths.tick(), if measure.is_some() => {
                match shared.broker.queue_lengths(&shared.config.queues).await {
                    Ok(found) => {
                        for (queue, n) in shared.config.queues.iter().zip(found) {
                            crate::stats::queue_length(queue, n);
                        }
                    }
                    Err(e) => warn!(error = %e, "could not read the queue lengths"),
                }
            }
            _ = refresh.tick() => {
                let tags = shared.inflight.tags();
                if !tags.is_empty()
                    && let Err(e) = shared.broker.refresh(&tags).await {
                        warn!(error = %e, held = tags.len(), "could not refresh held messages");
                    }
            }
            _ = restore.tick() => match shared.broker.restore_timed_out().await {
                Ok(0) => {}
                Ok(n) => info!("restored {n} messages left unacked past the visibility timeout"),
                Err(e) => warn!(error = %e, "could not restore timed-out messages"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_runs_well_inside_the_visibility_timeout() {
        assert_eq!(
            periods(Duration::from_secs(3600)),
            (Duration::from_secs(60), Duration::from_secs(60))
        );
        assert_eq!(
            periods(Duration::from_secs(4)),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(
            periods(Duration::from_millis(200)).0,
            Duration::from_millis(100)
        );
    }
}
