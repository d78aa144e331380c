//! The Redis broker as beat's store: the protocol crate's client, as it is.

use std::time::Duration;

use celeriac_protocol::redis::{LeaseState, RedisBeat, RedisClientError, Tick, TickOutcome};

use super::TickStore;

impl TickStore for RedisBeat {
    type Error = RedisClientError;

    async fn hold_lease(&self, token: &str, ttl: Duration) -> Result<LeaseState, Self::Error> {
        RedisBeat::hold_lease(self, token, ttl).await
    }

    async fn release_lease(&self, token: &str) -> Result<bool, Self::Error> {
        RedisBeat::release_lease(self, token).await
    }

    async fn seed_ticks(
        &self,
        token: &str,
        seeds: &[(String, i64)],
    ) -> Result<Option<Vec<i64>>, Self::Error> {
        RedisBeat::seed_ticks(self, token, seeds).await
    }

    async fn publish_ticks(
        &self,
        token: &str,
        ticks: &[Tick],
    ) -> Result<Vec<TickOutcome>, Self::Error> {
        RedisBeat::publish_ticks(self, token, ticks).await
    }

    async fn count_skipped(&self, entry: &str, count: u64) -> Result<(), Self::Error> {
        RedisBeat::count_skipped(self, entry, count).await
    }

    async fn declare_queues(&self, queues: &[String]) -> Result<(), Self::Error> {
        RedisBeat::declare_queues(self, queues).await
    }

    async fn lookup_queue(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Option<String>, Self::Error> {
        RedisBeat::lookup_queue(self, exchange, routing_key).await
    }
}
