//! The broker and backend clients against a real redis-server: Kombu's keys and values, the
//! atomic fetch, hand-backs, restores, and Celery's SUCCESS guard.

mod support;

use std::time::Duration;

use celeriac_protocol::TaskMessage;
use celeriac_protocol::envelope::{Envelope, parse_unacked_entry};
use celeriac_protocol::redis::{
    BrokerOptions, DeliveryState, RedisBackend, RedisBroker, RedisUrl, StoreRequest,
};
use celeriac_protocol::result::{ResultRecord, State};
use chrono::Utc;
use chrono_tz::Tz;
use redis::AsyncCommands;
use serde_json::{Map, json};
use support::RedisServer;

fn message(id: &str, priority: u8) -> String {
    let mut m = TaskMessage::new(
        "celeriac.test.add",
        id,
        vec![json!(1), json!(2)],
        Map::new(),
        "celery",
    );
    m.properties.priority = priority;
    m.to_envelope(&format!("tag-{id}"))
        .expect("encode")
        .to_json()
}

async fn setup(vt: Duration) -> (RedisServer, RedisBroker, redis::aio::MultiplexedConnection) {
    let server = RedisServer::start();
    let url = RedisUrl::parse(&server.url(0)).expect("url");
    let opts = BrokerOptions {
        visibility_timeout: vt,
        ..BrokerOptions::default()
    };
    let broker = RedisBroker::connect(&url, opts).await.expect("connect");
    let conn = server
        .client(0)
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    (server, broker, conn)
}

fn queues() -> Vec<String> {
    vec!["celery".to_owned()]
}

#[tokio::test]
async fn fetch_tracks_messages_in_kombus_layout_in_priority_order() {
    let (_server, broker, mut conn) = setup(Duration::from_secs(3600)).await;
    let _: () = conn
        .lpush("celery\x06\x169", message("low", 9))
        .await
        .unwrap();
    let _: () = conn.lpush("celery", message("high", 0)).await.unwrap();
    let _: () = conn
        .lpush("celery\x06\x163", message("mid", 4))
        .await
        .unwrap();
    let got = broker.fetch(&queues(), 10, "transit").await.unwrap();
    let ids: Vec<String> = got
        .iter()
        .map(|d| {
            Envelope::from_json(std::str::from_utf8(&d.raw).unwrap())
                .unwrap()
                .headers["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["high", "mid", "low"]);
    assert!(got.iter().all(|d| d.queue == "celery"));
    let entry: String = conn.hget("unacked", "tag-high").await.unwrap();
    let (env, ex, rk) = parse_unacked_entry(&entry).unwrap();
    assert_eq!(
        (env.delivery_tag(), ex.as_str(), rk.as_str()),
        (Some("tag-high"), "", "celery")
    );
    assert_eq!(conn.zcard::<_, u64>("unacked_index").await.unwrap(), 3);
    let transit: Vec<String> = conn.smembers("transit").await.unwrap();
    assert_eq!(transit.len(), 3);
    broker
        .ack(&["tag-high", "tag-mid", "tag-low"])
        .await
        .unwrap();
    assert_eq!(conn.hlen::<_, u64>("unacked").await.unwrap(), 0);
    assert_eq!(conn.zcard::<_, u64>("unacked_index").await.unwrap(), 0);
}

#[tokio::test]
async fn fetch_respects_the_limit_and_sets_garbage_aside() {
    let (_server, broker, mut conn) = setup(Duration::from_secs(3600)).await;
    for i in 0..5 {
        let _: () = conn
            .lpush("celery", message(&i.to_string(), 0))
            .await
            .unwrap();
    }
    let _: () = conn.rpush("celery", "garbage").await.unwrap(); // taken first
    let got = broker.fetch(&queues(), 3, "transit").await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].state, DeliveryState::DeadLettered);
    assert!(matches!(got[1].state, DeliveryState::Tracked(_)));
    assert_eq!(conn.llen::<_, u64>("celery").await.unwrap(), 3);
    assert_eq!(conn.llen::<_, u64>("celeriac.rejected").await.unwrap(), 1);
    assert_eq!(conn.hlen::<_, u64>("unacked").await.unwrap(), 2);
}

#[tokio::test]
async fn a_fetch_whose_reply_was_lost_is_recovered() {
    let (_server, broker, mut conn) = setup(Duration::from_secs(3600)).await;
    let _: () = conn.lpush("celery", message("a", 0)).await.unwrap();
    let _: () = conn.lpush("celery", message("b", 0)).await.unwrap();
    let kept = broker.fetch(&queues(), 1, "transit").await.unwrap();
    assert_eq!(kept.len(), 1);
    // This reply is "lost": we drop it, as if the connection died after the script ran.
    let lost = broker.fetch(&queues(), 1, "transit").await.unwrap();
    drop(lost);
    let held = |tag: &str| tag == "tag-a";
    assert_eq!(broker.recover_in_transit("transit", held).await.unwrap(), 1);
    let back: Vec<String> = conn.lrange("celery", 0, -1).await.unwrap();
    assert_eq!(back.len(), 1);
    let env = Envelope::from_json(&back[0]).unwrap();
    assert_eq!(env.delivery_tag(), Some("tag-b"));
    assert!(env.redelivered());
    assert_eq!(
        conn.hkeys::<_, Vec<String>>("unacked").await.unwrap(),
        ["tag-a"]
    );
}

#[tokio::test]
async fn requeue_goes_to_the_tail_or_behind_the_others() {
    let (_server, broker, mut conn) = setup(Duration::from_secs(3600)).await;
    for id in ["x", "y", "z"] {
        let _: () = conn.lpush("celery", message(id, 0)).await.unwrap();
    }
    let got = broker.fetch(&queues(), 2, "transit").await.unwrap(); // x, y
    let raw = |i: usize| std::str::from_utf8(&got[i].raw).unwrap().to_owned();
    assert!(
        broker
            .requeue("tag-x", &raw(0), "celery", false)
            .await
            .unwrap()
    ); // next to run
    assert!(
        broker
            .requeue("tag-y", &raw(1), "celery", true)
            .await
            .unwrap()
    ); // behind z
    assert!(
        !broker
            .requeue("tag-y", &raw(1), "celery", true)
            .await
            .unwrap(),
        "not unacked any more"
    );
    let order: Vec<String> = conn.lrange("celery", 0, -1).await.unwrap();
    let ids: Vec<String> = order
        .iter()
        .rev()
        .map(|r| {
            Envelope::from_json(r).unwrap().headers["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["x", "z", "y"], "BRPOP order");
    assert_eq!(conn.hlen::<_, u64>("unacked").await.unwrap(), 0);
}

#[tokio::test]
async fn restore_moves_only_stale_entries_and_refresh_keeps_them_fresh() {
    let (_server, broker, mut conn) = setup(Duration::from_secs(1)).await;
    for id in ["stale", "held"] {
        let _: () = conn.lpush("celery", message(id, 6)).await.unwrap();
    }
    broker.fetch(&queues(), 2, "transit").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    broker.refresh(&["tag-held"]).await.unwrap();
    assert_eq!(broker.restore_timed_out().await.unwrap(), 1);
    let back: Vec<String> = conn.lrange("celery\x06\x166", 0, -1).await.unwrap();
    assert_eq!(back.len(), 1, "restored at its priority");
    assert_eq!(
        Envelope::from_json(&back[0]).unwrap().delivery_tag(),
        Some("tag-stale")
    );
    assert_eq!(
        conn.hkeys::<_, Vec<String>>("unacked").await.unwrap(),
        ["tag-held"]
    );
    assert!(
        !conn.exists::<_, bool>("unacked_mutex").await.unwrap(),
        "lock released"
    );
    // Refresh never re-adds what is gone.
    broker.ack(&["tag-held"]).await.unwrap();
    broker.refresh(&["tag-held"]).await.unwrap();
    assert_eq!(conn.zcard::<_, u64>("unacked_index").await.unwrap(), 0);
}

#[tokio::test]
async fn results_never_overwrite_success() {
    let server = RedisServer::start();
    let url = RedisUrl::parse(&server.url(1)).unwrap();
    let backend = RedisBackend::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let rec = |state| ResultRecord::new("t1", state, json!(1), Utc::now(), Tz::UTC).to_json();
    let req = |state, ttl| StoreRequest {
        task_id: "t1".into(),
        record: rec(state),
        ttl,
    };
    assert_eq!(
        backend
            .store(&[req(State::Started, Some(Duration::from_secs(60)))])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        backend.store(&[req(State::Success, None)]).await.unwrap(),
        1
    );
    assert_eq!(
        backend.store(&[req(State::Failure, None)]).await.unwrap(),
        0
    );
    assert_eq!(
        backend.get("t1").await.unwrap().unwrap().status,
        State::Success
    );
    let mut conn = server
        .client(1)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        conn.ttl::<_, i64>("celery-task-meta-t1").await.unwrap(),
        -1,
        "no TTL when none is given"
    );
}

fn tick(entry: &str, nominal_ms: i64, queue: &str, priority: u8) -> celeriac_protocol::redis::Tick {
    let mut m = TaskMessage::new(
        "celeriac.test.add",
        &format!("{entry}-{nominal_ms}"),
        vec![],
        Map::new(),
        queue,
    );
    m.properties.priority = priority;
    celeriac_protocol::redis::Tick {
        entry: entry.into(),
        nominal_ms,
        queue: queue.into(),
        envelope: m.to_envelope(&format!("tag-{nominal_ms}")).expect("encode"),
    }
}

#[tokio::test]
async fn the_beat_lease_is_taken_renewed_refused_and_released() {
    use celeriac_protocol::redis::{LeaseState, RedisBeat};
    let server = RedisServer::start();
    let url = RedisUrl::parse(&server.url(0)).expect("url");
    let beat = RedisBeat::connect(&url, "t.beat").await.expect("connect");
    let ttl = Duration::from_millis(400);
    assert_eq!(
        beat.hold_lease("a", ttl).await.unwrap(),
        LeaseState::Acquired
    );
    assert_eq!(
        beat.hold_lease("a", ttl).await.unwrap(),
        LeaseState::Renewed
    );
    assert_eq!(
        beat.hold_lease("b", ttl).await.unwrap(),
        LeaseState::HeldElsewhere
    );
    assert!(
        !beat.release_lease("b").await.unwrap(),
        "only the holder releases"
    );
    assert!(beat.release_lease("a").await.unwrap());
    assert_eq!(
        beat.hold_lease("b", ttl).await.unwrap(),
        LeaseState::Acquired
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // b dies: the lease expires
    assert_eq!(
        beat.hold_lease("a", ttl).await.unwrap(),
        LeaseState::Acquired
    );
}

#[tokio::test]
async fn ticks_are_claimed_and_published_once_and_only_by_the_lease_holder() {
    use celeriac_protocol::redis::{LeaseState, RedisBeat, TickOutcome};
    let server = RedisServer::start();
    let url = RedisUrl::parse(&server.url(0)).expect("url");
    let beat = RedisBeat::connect(&url, "t.beat").await.expect("connect");
    let mut conn = server
        .client(0)
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let ttl = Duration::from_secs(10);
    assert_eq!(
        beat.hold_lease("a", ttl).await.unwrap(),
        LeaseState::Acquired
    );
    let out = beat
        .publish_ticks("b", &[tick("e", 1000, "celery", 0)])
        .await
        .unwrap();
    assert_eq!(
        out,
        [TickOutcome::NotLeader],
        "fenced: b does not hold the lease"
    );
    let len: usize = conn.llen("celery").await.unwrap();
    assert_eq!(len, 0);
    let batch = [
        tick("e", 1000, "celery", 0),
        tick("e", 2000, "celery", 0),
        tick("p", 1000, "media", 5),
    ];
    let out = beat.publish_ticks("a", &batch).await.unwrap();
    assert_eq!(out, [TickOutcome::Sent; 3]);
    // A replay (a lost reply, a second leader) and an older tick are refused.
    let out = beat
        .publish_ticks(
            "a",
            &[tick("e", 2000, "celery", 0), tick("e", 1500, "celery", 0)],
        )
        .await
        .unwrap();
    assert_eq!(out, [TickOutcome::AlreadySent; 2]);
    let celery: Vec<String> = conn.lrange("celery", 0, -1).await.unwrap();
    assert_eq!(celery.len(), 2);
    let media: usize = conn.llen("media\x06\x163").await.unwrap();
    assert_eq!(media, 1, "a priority-5 message goes to the step-3 list");
    assert_eq!(beat.last_ticks().await.unwrap()["e"], 2000);
    assert_eq!(beat.run_counts().await.unwrap()["e"], 2);
    // Seeds only fill in entries without a record, and are fenced too.
    let seeds = vec![("e".to_owned(), 99), ("new".to_owned(), 5000)];
    assert_eq!(
        beat.seed_ticks("a", &seeds).await.unwrap(),
        Some(vec![2000, 5000])
    );
    assert_eq!(beat.seed_ticks("b", &seeds).await.unwrap(), None);
    beat.count_skipped("e", 3).await.unwrap();
    assert_eq!(beat.skipped_counts().await.unwrap()["e"], 3);
}
