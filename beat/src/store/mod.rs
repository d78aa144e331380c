//! Where beat keeps its lease and tick records and publishes its messages: the broker. The
//! scheduler holds this abstraction, not a client; [`RedisBeat`] is the real one (Kombu's
//! layout, the scripts of the protocol crate) and [`MemoryStore`] its twin for unit tests.
//!
//! The trait is shaped by what the broker must do atomically: taking or renewing the lease,
//! and claiming a tick together with publishing its message, both fenced by the lease.

mod memory;
mod redis;

use std::future::Future;
use std::time::Duration;

pub use celeriac_protocol::redis::{LeaseState, RedisBeat, Tick, TickOutcome};
pub use memory::MemoryStore;

/// A broker as beat uses it. Every method is one round trip (or one atomic step) on the broker.
pub trait TickStore: Send + Sync {
    /// Why a call failed; the scheduler retries, and re-reads the records after a failed send.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Takes the lease if it is free, renews it if `token` holds it.
    fn hold_lease(
        &self,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseState, Self::Error>> + Send;

    /// Gives the lease up if `token` still holds it; whether it did.
    fn release_lease(&self, token: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Records `(entry, unix_ms)` for entries with no record yet, while `token` holds the lease;
    /// returns each entry's record afterwards, or `None` when the lease is held elsewhere.
    fn seed_ticks(
        &self,
        token: &str,
        seeds: &[(String, i64)],
    ) -> impl Future<Output = Result<Option<Vec<i64>>, Self::Error>> + Send;

    /// Claims and publishes ticks while `token` holds the lease, one outcome per tick.
    fn publish_ticks(
        &self,
        token: &str,
        ticks: &[Tick],
    ) -> impl Future<Output = Result<Vec<TickOutcome>, Self::Error>> + Send;

    /// Counts due ticks of `entry` that were not sent.
    fn count_skipped(
        &self,
        entry: &str,
        count: u64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Declares the queues a sender declares before publishing to them.
    fn declare_queues(
        &self,
        queues: &[String],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The queue bound to `exchange` with `routing_key`, if any.
    fn lookup_queue(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;
}
