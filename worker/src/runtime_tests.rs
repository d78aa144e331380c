//! The runtime on the in-memory broker and result backend: no server, and tokio's paused clock
//! instead of real sleeping. Each test runs a whole [`Worker`] and watches the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use celeriac_ops::Probes as _;
use celeriac_protocol::broker::memory::MemoryBroker;
use celeriac_protocol::redis::RedisUrl;
use celeriac_protocol::result::State;
use celeriac_protocol::{Envelope, TaskMessage};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::backend::memory::Memory;
use crate::config::WorkerConfig;
use crate::context::TaskContext;
use crate::registry::Registry;
use crate::task_error::TaskError;
use crate::worker::Worker;

#[derive(Debug, Deserialize)]
struct Sleep {
    seconds: f64,
}

async fn sleep(_ctx: TaskContext, Sleep { seconds }: Sleep) -> Result<f64, TaskError> {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok(seconds)
}

/// How many times `flaky` ran.
#[derive(Debug, Default)]
struct Runs(AtomicU32);

/// Asks for a retry in 5 s twice, then succeeds with the number of runs.
async fn flaky(ctx: TaskContext, _args: crate::RawArgs) -> Result<u32, TaskError> {
    let runs = ctx
        .resource::<Arc<Runs>>()?
        .0
        .fetch_add(1, Ordering::SeqCst)
        + 1;
    if runs < 3 {
        return Err(ctx.retry().countdown(Duration::from_secs(5)).into());
    }
    Ok(runs)
}

struct Harness {
    broker: MemoryBroker,
    results: Memory,
    runs: Arc<Runs>,
    shutdown: CancellationToken,
    health: Arc<crate::health::WorkerHealth>,
    worker: tokio::task::JoinHandle<()>,
}

fn config(concurrency: usize, prefetch_multiplier: usize) -> WorkerConfig {
    let url = RedisUrl::parse("redis://127.0.0.1:1/0").expect("a URL");
    let mut c = WorkerConfig::new(url);
    c.queues = vec!["celery".into()];
    c.concurrency = concurrency;
    c.prefetch_multiplier = prefetch_multiplier;
    c.shutdown_timeout = Duration::from_secs(30);
    c.stall_timeout = Duration::from_secs(10);
    c
}

fn start(config: WorkerConfig) -> Harness {
    start_on(config, MemoryBroker::new())
}

fn start_on(config: WorkerConfig, broker: MemoryBroker) -> Harness {
    let runs = Arc::new(Runs::default());
    let registry = Registry::builder()
        .resource(runs.clone())
        .task("t.sleep", sleep)
        .task("t.flaky", flaky)
        .build()
        .expect("a registry");
    let results = Memory::default();
    let shutdown = CancellationToken::new();
    let worker = Worker::new(config, registry);
    let health = worker.health();
    let handle = tokio::spawn(worker.run_on(
        Arc::new(broker.clone()),
        Box::new(results.clone()),
        shutdown.clone(),
    ));
    Harness {
        broker,
        results,
        runs,
        shutdown,
        health,
        worker: handle,
    }
}

fn message(task: &str, id: &str, args: Vec<Value>) -> TaskMessage {
    TaskMessage::new(task, id, args, Map::new(), "celery")
}

fn envelope(msg: &TaskMessage) -> Envelope {
    msg.to_envelope(&format!("tag-{}", msg.headers.id))
        .expect("encodes")
}

/// Waits on the paused clock until `cond` holds, failing after `limit` of virtual time.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Harness {
    fn states(&self, id: &str) -> Vec<State> {
        self.results
            .stored()
            .into_iter()
            .filter(|s| s.task_id == id)
            .map(|s| s.state)
            .collect()
    }

    async fn stop(self) -> (MemoryBroker, Memory) {
        self.shutdown.cancel();
        self.worker.await.expect("the worker ends");
        (self.broker, self.results)
    }
}

#[tokio::test(start_paused = true)]
async fn an_ack_waits_for_the_stored_result() {
    let h = start(config(2, 1));
    // The result backend fails its next 20 stores (transiently, as when it is down).
    h.results.fail_next(20);
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "a", vec![json!(1)])),
    );
    until(Duration::from_secs(5), "the task to be taken", || {
        h.broker.unacked() == ["tag-a"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(h.results.calls().len() > 3, "the store is retried");
    assert!(h.results.stored().is_empty());
    assert_eq!(
        h.broker.unacked(),
        ["tag-a"],
        "unacked while its result is not stored"
    );
    assert!(h.broker.acked().is_empty());
    until(Duration::from_secs(3600), "the ack", || {
        h.broker.acked() == ["tag-a"]
    })
    .await;
    assert_eq!(h.states("a"), [State::Success]);
    let (broker, _) = h.stop().await;
    assert!(broker.unacked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_prefetch_window_bounds_what_is_held() {
    let h = start(config(2, 2));
    for i in 0..10 {
        h.broker.push(
            "celery",
            &envelope(&message("t.sleep", &format!("m{i}"), vec![json!(30)])),
        );
    }
    until(Duration::from_secs(5), "the window to fill", || {
        h.broker.unacked().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.broker.unacked().len(), 4, "2 running + 2 prefetched");
    assert_eq!(h.broker.waiting("celery").len(), 6);
    assert!(h.health.live().ok, "a full window is idle by choice");
    until(Duration::from_secs(300), "every task", || {
        h.broker.acked().len() == 10
    })
    .await;
    let (broker, _) = h.stop().await;
    assert!(broker.waiting("celery").is_empty() && broker.unacked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_back_what_has_not_started_and_finishes_what_runs() {
    let h = start(config(1, 4));
    for i in 0..4 {
        h.broker.push(
            "celery",
            &envelope(&message("t.sleep", &format!("s{i}"), vec![json!(5)])),
        );
    }
    until(Duration::from_secs(5), "four held", || {
        h.broker.unacked().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = h.results.clone();
    let (broker, _) = h.stop().await;
    // The running one finished and was stored and acked; the three others went back, first in
    // line and flagged redelivered.
    assert_eq!(broker.acked(), ["tag-s0"]);
    assert_eq!(
        results
            .stored()
            .first()
            .map(|s| (s.task_id.clone(), s.state)),
        Some(("s0".to_owned(), State::Success))
    );
    let back = broker.waiting("celery");
    assert_eq!(back.len(), 3);
    assert!(broker.unacked().is_empty());
    for env in &back {
        let msg = TaskMessage::from_envelope(env).expect("decodes");
        assert!(
            msg.properties.redelivered
                || msg.headers.extra.get("redelivered") == Some(&json!(true))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_is_published_with_its_countdown_and_runs_again() {
    let h = start(config(2, 4));
    h.broker
        .push("celery", &envelope(&message("t.flaky", "f", vec![])));
    until(Duration::from_secs(5), "the first retry", || {
        h.states("f") == [State::Retry]
    })
    .await;
    let began = tokio::time::Instant::now();
    until(Duration::from_secs(60), "success", || {
        h.states("f").last() == Some(&State::Success)
    })
    .await;
    // Two retries of 5 s each: the last run starts no earlier than 10 s after the first.
    assert!(began.elapsed() >= Duration::from_secs(9));
    assert_eq!(h.runs.0.load(Ordering::SeqCst), 3);
    assert_eq!(h.states("f"), [State::Retry, State::Retry, State::Success]);
    let (broker, _) = h.stop().await;
    assert_eq!(
        broker.acked().len(),
        3,
        "the original and both retry messages"
    );
    assert!(broker.unacked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_eta_message_waits_without_taking_a_prefetch_slot() {
    let h = start(config(1, 1));
    let mut later = message("t.sleep", "later", vec![json!(0)]);
    let eta = chrono::Utc::now() + chrono::TimeDelta::seconds(3600);
    later.headers.eta = Some(eta.to_rfc3339());
    h.broker.push("celery", &envelope(&later));
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "now", vec![json!(1)])),
    );
    // With a window of one, "now" still runs while "later" waits for its ETA.
    until(Duration::from_secs(30), "the task without an ETA", || {
        h.states("now") == [State::Success]
    })
    .await;
    assert!(h.states("later").is_empty());
    assert_eq!(h.broker.unacked(), ["tag-later"]);
    let (broker, _) = h.stop().await;
    // Shutdown hands the waiting one back.
    assert_eq!(broker.waiting("celery").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_is_ridden_out_and_probes_say_so() {
    let h = start(config(2, 2));
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "before", vec![json!(0)])),
    );
    until(Duration::from_secs(5), "the first task", || {
        h.broker.acked() == ["tag-before"]
    })
    .await;
    assert!(h.health.ready().ok);
    h.broker.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!h.health.ready().ok, "not ready while the broker is down");
    h.broker.set_down(false);
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "after", vec![json!(0)])),
    );
    until(
        Duration::from_secs(120),
        "the task sent after the outage",
        || h.broker.acked().contains(&"tag-after".to_owned()),
    )
    .await;
    assert!(h.health.ready().ok);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn garbage_is_set_aside_and_an_unknown_task_fails_without_running() {
    let h = start(config(2, 2));
    h.broker.push_raw("celery", "{not json");
    h.broker
        .push("celery", &envelope(&message("no.such.task", "u", vec![])));
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "ok", vec![json!(0)])),
    );
    until(Duration::from_secs(10), "the good task", || {
        h.states("ok") == [State::Success]
    })
    .await;
    until(
        Duration::from_secs(10),
        "the unknown task's failure",
        || h.states("u") == [State::Failure],
    )
    .await;
    let (broker, _) = h.stop().await;
    assert_eq!(broker.dead_letters().len(), 1);
    assert!(broker.unacked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_eta_message_widens_a_transport_window_as_celery_raises_the_qos() {
    // A broker that, like RabbitMQ, delivers no more than the consumer's window unacked.
    let h = start_on(config(1, 1), MemoryBroker::windowed());
    let mut later = message("t.sleep", "later", vec![json!(0)]);
    later.headers.eta = Some((chrono::Utc::now() + chrono::TimeDelta::seconds(3600)).to_rfc3339());
    h.broker.push("celery", &envelope(&later));
    h.broker.push(
        "celery",
        &envelope(&message("t.sleep", "now", vec![json!(1)])),
    );
    // Without the wider window the ETA message would take the only slot for an hour.
    until(
        Duration::from_secs(30),
        "the task behind the ETA message",
        || h.states("now") == [State::Success],
    )
    .await;
    assert!(h.states("later").is_empty());
    h.stop().await;
}
