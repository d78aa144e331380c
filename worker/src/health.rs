//! What `/healthz` and `/readyz` say about a worker, from state the consumer keeps anyway.
//!
//! * Liveness fails only when the consumer loop is stuck: no broker reply for longer than the
//!   stall timeout while it wants messages (a Python worker can sit like this forever after a
//!   broker reconnect). A worker whose prefetch window is full is idle by choice, and a draining
//!   worker is busy finishing: both stay live.
//! * Readiness: connected and consuming; not while connecting, reconnecting or draining.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use celeriac_ops::{Heartbeat, Probes, Verdict};
use tokio::sync::Semaphore;

use crate::inflight::InFlight;

const STARTING: u8 = 0;
const CONSUMING: u8 = 1;
const RECONNECTING: u8 = 2;
const DRAINING: u8 = 3;

/// The consumer's state as the probes see it. Get it from [`Worker::health`](crate::Worker::health)
/// before the worker runs.
#[derive(Debug)]
pub struct WorkerHealth {
    heartbeat: Heartbeat,
    state: AtomicU8,
    /// Waiting for a free prefetch slot: every message it may hold is held.
    saturated: AtomicBool,
    stall_after: Duration,
    gauges: OnceLock<Gauges>,
}

#[derive(Debug)]
struct Gauges {
    inflight: Arc<InFlight>,
    slots: Arc<Semaphore>,
    concurrency: usize,
}

impl WorkerHealth {
    pub(crate) fn new(stall_after: Duration) -> Self {
        Self {
            heartbeat: Heartbeat::new(),
            state: AtomicU8::new(STARTING),
            saturated: AtomicBool::new(false),
            stall_after,
            gauges: OnceLock::new(),
        }
    }

    /// The broker answered a fetch or a poll: the loop is alive and consuming.
    pub(crate) fn consumed(&self) {
        self.heartbeat.beat();
        self.state.store(CONSUMING, Ordering::Relaxed);
    }

    /// A broker call failed: reconnecting (the heartbeat is left as it was).
    pub(crate) fn broker_failed(&self) {
        self.state.store(RECONNECTING, Ordering::Relaxed);
    }

    /// Shutdown began: no longer ready, and no longer expected to consume.
    pub(crate) fn draining(&self) {
        self.state.store(DRAINING, Ordering::Relaxed);
    }

    /// Whether the loop is waiting for a prefetch slot rather than for the broker.
    pub(crate) fn set_saturated(&self, waiting: bool) {
        self.saturated.store(waiting, Ordering::Relaxed);
        if !waiting {
            self.heartbeat.beat();
        }
    }

    /// Where the running and held counts are read, once the worker has them.
    pub(crate) fn watch(&self, inflight: Arc<InFlight>, slots: Arc<Semaphore>, concurrency: usize) {
        let _ = self.gauges.set(Gauges {
            inflight,
            slots,
            concurrency,
        });
    }

    fn state_name(state: u8) -> &'static str {
        match state {
            STARTING => "connecting to the broker",
            CONSUMING => "consuming",
            RECONNECTING => "the broker is unreachable; reconnecting",
            _ => "draining for shutdown",
        }
    }
}

impl Probes for WorkerHealth {
    fn live(&self) -> Verdict {
        let state = self.state.load(Ordering::Relaxed);
        if state == DRAINING {
            return Verdict::ok("draining for shutdown");
        }
        if self.saturated.load(Ordering::Relaxed) {
            return Verdict::ok("every prefetch slot is taken: waiting for tasks to finish");
        }
        match self.heartbeat.stalled(self.stall_after) {
            Some(stuck) => Verdict::failing(format!("{stuck}; {}", Self::state_name(state))),
            None => Verdict::ok(format!(
                "{}; last broker reply {:.1} s ago",
                Self::state_name(state),
                self.heartbeat.age().as_secs_f64()
            )),
        }
    }

    fn ready(&self) -> Verdict {
        let state = self.state.load(Ordering::Relaxed);
        if state == CONSUMING {
            Verdict::ok("consuming")
        } else {
            Verdict::failing(Self::state_name(state))
        }
    }

    fn before_scrape(&self) {
        if let Some(g) = self.gauges.get() {
            let running = g.concurrency.saturating_sub(g.slots.available_permits());
            metrics::gauge!("celeriac_tasks_running").set(running as f64);
            metrics::gauge!("celeriac_messages_held").set(g.inflight.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_fails_liveness_until_the_broker_answers() {
        let h = WorkerHealth::new(Duration::from_millis(30));
        assert!(h.live().ok, "a fresh worker is live");
        assert!(!h.ready().ok, "not ready before it consumed");
        h.consumed();
        assert!(h.live().ok && h.ready().ok);
        h.broker_failed();
        assert!(!h.ready().ok);
        std::thread::sleep(Duration::from_millis(50));
        let v = h.live();
        assert!(!v.ok && v.detail.starts_with("stuck"), "{v:?}");
        h.consumed();
        assert!(h.live().ok && h.ready().ok);
    }

    #[test]
    fn a_full_window_and_a_drain_are_not_stalls() {
        let h = WorkerHealth::new(Duration::from_millis(10));
        h.consumed();
        h.set_saturated(true);
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.live().ok);
        h.set_saturated(false);
        assert!(h.live().ok, "taking a slot is progress");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.live().ok);
        h.draining();
        assert!(h.live().ok && !h.ready().ok);
    }
}
