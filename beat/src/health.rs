//! What `/healthz` and `/readyz` say about a beat process.
//!
//! * Liveness: the loop got a reply from the broker (to its lease call, made every second or
//!   faster) within the stall timeout.
//! * Readiness: the last lease call was answered; the body says whether this process leads
//!   (sends the schedule) or stands by. A standby is ready: it takes over when the leader goes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use celeriac_ops::{Heartbeat, Probes, Verdict};

const CONNECTING: u8 = 0;
const LEADER: u8 = 1;
const STANDBY: u8 = 2;
const UNREACHABLE: u8 = 3;

/// The beat loop's state as the probes see it.
#[derive(Debug)]
pub struct BeatHealth {
    heartbeat: Heartbeat,
    state: AtomicU8,
    stall_after: Duration,
}

impl BeatHealth {
    /// Fails liveness after `stall_after` without a broker reply.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            heartbeat: Heartbeat::new(),
            state: AtomicU8::new(CONNECTING),
            stall_after,
        }
    }

    /// The broker answered a lease call; `leader` says who holds the lease.
    pub(crate) fn answered(&self, leader: bool) {
        self.heartbeat.beat();
        self.state
            .store(if leader { LEADER } else { STANDBY }, Ordering::Relaxed);
        metrics::gauge!("celeriac_beat_leader").set(if leader { 1.0 } else { 0.0 });
    }

    /// A lease call failed.
    pub(crate) fn unreachable(&self) {
        self.state.store(UNREACHABLE, Ordering::Relaxed);
        metrics::gauge!("celeriac_beat_leader").set(0.0);
    }

    /// Whether this process sends the schedule now.
    pub fn leads(&self) -> bool {
        self.state.load(Ordering::Relaxed) == LEADER
    }

    fn state_name(state: u8) -> &'static str {
        match state {
            CONNECTING => "connecting to the broker",
            LEADER => "leader: this process sends the schedule",
            STANDBY => "standby: another process holds the lease",
            _ => "the broker is unreachable; retrying",
        }
    }
}

impl Probes for BeatHealth {
    fn live(&self) -> Verdict {
        let state = self.state.load(Ordering::Relaxed);
        match self.heartbeat.stalled(self.stall_after) {
            Some(stuck) => Verdict::failing(format!("{stuck}; {}", Self::state_name(state))),
            None => Verdict::ok(Self::state_name(state)),
        }
    }

    fn ready(&self) -> Verdict {
        let state = self.state.load(Ordering::Relaxed);
        if matches!(state, LEADER | STANDBY) {
            Verdict::ok(Self::state_name(state))
        } else {
            Verdict::failing(Self::state_name(state))
        }
    }
}

/// Gives every beat metric its help text, once the recorder is installed.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "celeriac_beat_ticks_sent_total",
        "Ticks published, by entry"
    );
    describe_histogram!(
        "celeriac_beat_lateness_seconds",
        Unit::Seconds,
        "How long after its nominal time a tick was published"
    );
    describe_counter!(
        "celeriac_beat_ticks_skipped_total",
        "Due ticks not sent, by entry and reason (catch_up: the entry's catch-up policy; unroutable: no queue bound; encode: the message could not be built)"
    );
    describe_counter!(
        "celeriac_beat_claims_refused_total",
        "Ticks this process tried to send that another beat had sent already, by entry"
    );
    describe_gauge!(
        "celeriac_beat_leader",
        "1 while this process holds the beat lease"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_answered_live_until_the_stall_timeout() {
        let h = BeatHealth::new(Duration::from_millis(30));
        assert!(h.live().ok && !h.ready().ok);
        h.answered(false);
        assert!(h.ready().ok && h.ready().detail.starts_with("standby"));
        h.answered(true);
        assert!(h.leads() && h.ready().detail.starts_with("leader"));
        h.unreachable();
        assert!(!h.ready().ok && h.live().ok);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!h.live().ok);
        h.answered(true);
        assert!(h.live().ok);
    }
}
