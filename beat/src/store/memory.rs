//! An in-memory [`TickStore`] with the Redis store's semantics (a lease that expires on tokio's
//! clock, fenced claims, per-entry tick records), so the scheduler is unit-tested with paused
//! time and several schedulers sharing one store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_protocol::Envelope;
use celeriac_protocol::kombu;
use tokio::time::Instant;

use super::{LeaseState, Tick, TickOutcome, TickStore};

#[derive(Debug, Default)]
struct State {
    lease: Option<(String, Instant)>,
    ticks: HashMap<String, i64>,
    runs: HashMap<String, u64>,
    skipped: HashMap<String, u64>,
    lists: HashMap<String, Vec<Envelope>>,
    bindings: HashMap<(String, String), String>,
}

impl State {
    /// The lease holder, once an expired lease is dropped.
    fn holder(&mut self) -> Option<&str> {
        if self
            .lease
            .as_ref()
            .is_some_and(|(_, until)| *until <= Instant::now())
        {
            self.lease = None;
        }
        self.lease.as_ref().map(|(t, _)| t.as_str())
    }
}

/// A broker in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written here.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The messages published to a list key, oldest first.
    pub fn published(&self, list_key: &str) -> Vec<Envelope> {
        self.state()
            .lists
            .get(list_key)
            .cloned()
            .unwrap_or_default()
    }

    /// The token holding the lease now, if any.
    pub fn lease_holder(&self) -> Option<String> {
        self.state().holder().map(str::to_owned)
    }

    /// The last tick recorded for `entry` (Unix ms).
    pub fn last_tick(&self, entry: &str) -> Option<i64> {
        self.state().ticks.get(entry).copied()
    }

    /// How many ticks of `entry` were sent.
    pub fn runs(&self, entry: &str) -> u64 {
        self.state().runs.get(entry).copied().unwrap_or(0)
    }

    /// How many due ticks of `entry` were not sent.
    pub fn skipped(&self, entry: &str) -> u64 {
        self.state().skipped.get(entry).copied().unwrap_or(0)
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub fn bind(&self, exchange: &str, routing_key: &str, queue: &str) {
        self.state()
            .bindings
            .insert((exchange.into(), routing_key.into()), queue.into());
    }
}

impl TickStore for MemoryStore {
    type Error = Infallible;

    async fn hold_lease(&self, token: &str, ttl: Duration) -> Result<LeaseState, Infallible> {
        let mut s = self.state();
        let until = Instant::now() + ttl;
        Ok(match s.holder() {
            Some(t) if t == token => {
                s.lease = Some((token.into(), until));
                LeaseState::Renewed
            }
            Some(_) => LeaseState::HeldElsewhere,
            None => {
                s.lease = Some((token.into(), until));
                LeaseState::Acquired
            }
        })
    }

    async fn release_lease(&self, token: &str) -> Result<bool, Infallible> {
        let mut s = self.state();
        if s.holder() == Some(token) {
            s.lease = None;
            return Ok(true);
        }
        Ok(false)
    }

    async fn seed_ticks(
        &self,
        token: &str,
        seeds: &[(String, i64)],
    ) -> Result<Option<Vec<i64>>, Infallible> {
        let mut s = self.state();
        if s.holder() != Some(token) {
            return Ok(None);
        }
        Ok(Some(
            seeds
                .iter()
                .map(|(name, ms)| *s.ticks.entry(name.clone()).or_insert(*ms))
                .collect(),
        ))
    }

    async fn publish_ticks(
        &self,
        token: &str,
        ticks: &[Tick],
    ) -> Result<Vec<TickOutcome>, Infallible> {
        let mut s = self.state();
        if s.holder() != Some(token) {
            return Ok(vec![TickOutcome::NotLeader; ticks.len()]);
        }
        Ok(ticks
            .iter()
            .map(|t| {
                if s.ticks
                    .get(&t.entry)
                    .is_some_and(|last| *last >= t.nominal_ms)
                {
                    return TickOutcome::AlreadySent;
                }
                s.ticks.insert(t.entry.clone(), t.nominal_ms);
                *s.runs.entry(t.entry.clone()).or_default() += 1;
                s.lists
                    .entry(kombu::queue_key(&t.queue, t.envelope.priority()))
                    .or_default()
                    .push(t.envelope.clone());
                TickOutcome::Sent
            })
            .collect())
    }

    async fn count_skipped(&self, entry: &str, count: u64) -> Result<(), Infallible> {
        *self.state().skipped.entry(entry.into()).or_default() += count;
        Ok(())
    }

    async fn declare_queues(&self, _queues: &[String]) -> Result<(), Infallible> {
        Ok(())
    }

    async fn lookup_queue(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Option<String>, Infallible> {
        Ok(self
            .state()
            .bindings
            .get(&(exchange.to_owned(), routing_key.to_owned()))
            .cloned())
    }
}
