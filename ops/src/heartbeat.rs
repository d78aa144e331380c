//! A timestamp of the last sign of progress, written by a loop and read by a liveness probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a loop last made progress. Cheap to write (one relaxed store) from any thread.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that beat just now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records progress now.
    pub fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long ago the last beat was.
    pub fn age(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Why liveness fails, when the last beat is older than `stall_after`.
    pub fn stalled(&self, stall_after: Duration) -> Option<String> {
        let age = self.age();
        (age > stall_after).then(|| {
            format!(
                "stuck: no broker reply for {:.1} s (stall timeout {:.0} s)",
                age.as_secs_f64(),
                stall_after.as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_resets_the_age() {
        let h = Heartbeat::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.age() >= Duration::from_millis(20));
        h.beat();
        assert!(h.age() < Duration::from_millis(20));
    }
}
