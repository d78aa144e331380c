//! The scheduler loop on the in-memory store with tokio's paused time: ticks on their grid,
//! exactly once with several schedulers, takeover after a leader dies or stops, catch-up.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use celeriac_beat::clock::TokioClock;
use celeriac_beat::message::Sender;
use celeriac_beat::schedule::Schedule;
use celeriac_beat::source::{Sent, Source, SourceError};
use celeriac_beat::store::{MemoryStore, TickStore};
use celeriac_beat::{Beat, BeatConfig, CatchUp, Entry};
use celeriac_protocol::redis::RedisUrl;
use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A fixed list of entries.
#[derive(Debug)]
struct Fixed(Option<Vec<Entry>>);

impl Source for Fixed {
    async fn poll(&mut self) -> Result<Option<Vec<Entry>>, SourceError> {
        Ok(self.0.take())
    }
    async fn record(&mut self, _sent: &[Sent]) -> Result<(), SourceError> {
        Ok(())
    }
    fn poll_every(&self) -> Duration {
        Duration::from_secs(3600)
    }
    fn describe(&self) -> String {
        "fixed".into()
    }
}

fn every_second(catch_up: CatchUp) -> Entry {
    let every = Schedule::Interval(Duration::from_secs(1));
    Entry {
        args: vec![2.into(), 3.into()],
        catch_up,
        ..Entry::new("tick", "celeriac.test.add", every, Tz::UTC)
    }
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0)
        .single()
        .unwrap()
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn spawn(store: &MemoryStore, clock: TokioClock, catch_up: CatchUp) -> (Running, String) {
    let config = BeatConfig::new(RedisUrl::parse("redis://127.0.0.1:6379/0").unwrap());
    let beat = Beat::new(
        config,
        Sender::new(Tz::UTC, "celery".into()),
        Fixed(Some(vec![every_second(catch_up)])),
        store.clone(),
    )
    .with_clock(Arc::new(clock));
    let token = beat.token().to_owned();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(beat.run(shutdown.clone()));
    (Running { shutdown, task }, token)
}

/// The nominal ticks of everything published, as offsets in ms from `start()`.
fn ticks(store: &MemoryStore) -> Vec<i64> {
    // Every message's id is fresh; the tick record and the run count say what was claimed,
    // and the number of messages must equal the number of claims.
    let messages = store.published("celery");
    assert_eq!(messages.len() as u64, store.runs("tick"));
    let last = store.last_tick("tick").unwrap_or_default() - start().timestamp_millis();
    (0..messages.len() as i64)
        .map(|i| last - 1000 * (messages.len() as i64 - 1 - i))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_beat_sends_every_tick_on_its_grid() {
    let store = MemoryStore::new();
    let (beat, _) = spawn(&store, TokioClock::starting_at(start()), CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    beat.shutdown.cancel();
    beat.task.await.unwrap();
    assert_eq!(store.runs("tick"), 10);
    assert_eq!(
        ticks(&store),
        (1..=10).map(|s| s * 1000).collect::<Vec<_>>()
    );
    assert_eq!(store.lease_holder(), None, "released at shutdown");
}

#[tokio::test(start_paused = true)]
async fn two_beats_send_each_tick_once() {
    let store = MemoryStore::new();
    let clock = TokioClock::starting_at(start());
    let (a, _) = spawn(&store, clock, CatchUp::Once);
    let (b, _) = spawn(&store, clock, CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(30_500)).await;
    for r in [a, b] {
        r.shutdown.cancel();
        r.task.await.unwrap();
    }
    assert_eq!(store.runs("tick"), 30);
    assert_eq!(store.published("celery").len(), 30);
}

#[tokio::test(start_paused = true)]
async fn a_killed_leader_is_replaced_and_the_missed_ticks_are_caught_up() {
    let store = MemoryStore::new();
    let clock = TokioClock::starting_at(start());
    let (a, token_a) = spawn(&store, clock, CatchUp::Window(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.lease_holder(), Some(token_a));
    let (b, token_b) = spawn(&store, clock, CatchUp::Window(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    a.task.abort(); // like kill -9: the lease is not released
    let killed = tokio::time::Instant::now();
    while store.lease_holder().as_deref() != Some(token_b.as_str()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    assert!(takeover <= Duration::from_secs(4), "{takeover:?}");
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    b.shutdown.cancel();
    b.task.await.unwrap();
    let sent = ticks(&store);
    assert_eq!(
        sent,
        (1..=sent.len() as i64)
            .map(|s| s * 1000)
            .collect::<Vec<_>>()
    );
    assert!(sent.len() >= 19, "{sent:?}");
    assert_eq!(store.skipped("tick"), 0);
}

#[tokio::test(start_paused = true)]
async fn once_collapses_the_takeover_gap_and_counts_it() {
    let store = MemoryStore::new();
    let clock = TokioClock::starting_at(start());
    let (a, _) = spawn(&store, clock, CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (b, _) = spawn(&store, clock, CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    a.task.abort();
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    b.shutdown.cancel();
    b.task.await.unwrap();
    let skipped = store.skipped("tick");
    assert!((1..=4).contains(&skipped), "{skipped}");
    assert_eq!(store.runs("tick") + skipped, 15);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_hands_the_lease_over_at_once() {
    let store = MemoryStore::new();
    let clock = TokioClock::starting_at(start());
    let (a, token_a) = spawn(&store, clock, CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (b, token_b) = spawn(&store, clock, CatchUp::Once);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(store.lease_holder(), Some(token_a));
    a.shutdown.cancel();
    a.task.await.unwrap();
    let stopped = tokio::time::Instant::now();
    while store.lease_holder().as_deref() != Some(token_b.as_str()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        stopped.elapsed() <= Duration::from_millis(300),
        "{:?}",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    b.shutdown.cancel();
    b.task.await.unwrap();
    assert_eq!(store.skipped("tick"), 0);
    assert_eq!(store.runs("tick"), 6);
}

#[tokio::test(start_paused = true)]
async fn a_fenced_process_publishes_nothing() {
    use celeriac_beat::store::{LeaseState, Tick, TickOutcome};
    let store = MemoryStore::new();
    let sender = Sender::new(Tz::UTC, "celery".into());
    let entry = every_second(CatchUp::Once);
    let tick = Tick {
        entry: "tick".into(),
        nominal_ms: 1000,
        queue: "celery".into(),
        envelope: sender.envelope(&entry, start()).unwrap(),
    };
    let ttl = Duration::from_secs(3);
    assert_eq!(
        store.hold_lease("a", ttl).await.unwrap(),
        LeaseState::Acquired
    );
    tokio::time::sleep(Duration::from_secs(4)).await; // "a" stalls past its lease
    assert_eq!(
        store.hold_lease("b", ttl).await.unwrap(),
        LeaseState::Acquired
    );
    let out = store
        .publish_ticks("a", std::slice::from_ref(&tick))
        .await
        .unwrap();
    assert_eq!(out, [TickOutcome::NotLeader]);
    assert_eq!(
        store
            .publish_ticks("b", std::slice::from_ref(&tick))
            .await
            .unwrap(),
        [TickOutcome::Sent]
    );
    assert_eq!(
        store.publish_ticks("b", &[tick]).await.unwrap(),
        [TickOutcome::AlreadySent]
    );
    assert_eq!(store.published("celery").len(), 1);
}
