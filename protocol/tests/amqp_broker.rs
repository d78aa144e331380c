//! The AMQP client against the local RabbitMQ (127.0.0.1:5672, guest/guest), and against real
//! Kombu/Celery from Python where the venv of `scripts/test.sh` exists.
//!
//! Each test gets its own vhost (made with `rabbitmqctl`, deleted afterwards), so tests run in
//! parallel and leave nothing behind. Without a reachable RabbitMQ the tests say so and pass,
//! unless `CELERIAC_REQUIRE_AMQP` is set (CI sets it), when they fail.
#![cfg(feature = "amqp")]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use celeriac_protocol::TaskMessage;
use celeriac_protocol::amqp::{
    AmqpBroker, AmqpConsumer, AmqpDelivery, AmqpError, AmqpOptions, AmqpUrl, OnMismatch, QosScope,
    QueueType,
};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A private vhost on the local RabbitMQ, deleted when dropped.
struct Vhost {
    name: String,
}

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Vhost {
    fn new() -> Option<Self> {
        let required = std::env::var_os("CELERIAC_REQUIRE_AMQP").is_some();
        if std::net::TcpStream::connect(("127.0.0.1", 5672)).is_err() {
            assert!(
                !required,
                "CELERIAC_REQUIRE_AMQP is set but RabbitMQ is not on 127.0.0.1:5672"
            );
            eprintln!(
                "SKIPPED: RabbitMQ is not reachable on 127.0.0.1:5672 (set CELERIAC_REQUIRE_AMQP to fail instead)"
            );
            return None;
        }
        let name = format!("celeriac-test-{}", uuid::Uuid::new_v4().simple());
        let made = rabbitmqctl(&["add_vhost", &name]).and_then(|_| {
            rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
        });
        if let Err(e) = made {
            assert!(!required, "cannot make a test vhost: {e}");
            eprintln!("SKIPPED: cannot make a test vhost with rabbitmqctl: {e}");
            return None;
        }
        Some(Self { name })
    }

    fn url(&self) -> AmqpUrl {
        AmqpUrl::parse(&format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)).expect("url")
    }

    fn url_text(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    async fn broker(&self, opts: AmqpOptions) -> AmqpBroker {
        AmqpBroker::connect(&self.url(), opts)
            .await
            .expect("connect")
    }

    async fn raw(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url_text(), lapin::ConnectionProperties::default())
            .await
            .expect("raw connect")
    }

    fn list(&self, what: &str, columns: &[&str]) -> String {
        let mut args = vec![what, "-p", &self.name];
        args.extend_from_slice(columns);
        rabbitmqctl(&args).expect("rabbitmqctl list")
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn task(id: &str, queue: &str, args: Vec<Value>) -> celeriac_protocol::Envelope {
    TaskMessage::new("tasks.add", id, args, Map::new(), queue)
        .to_envelope(id)
        .expect("envelope")
}

async fn next(c: &mut AmqpConsumer) -> Result<AmqpDelivery, AmqpError> {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
}

/// Everything that arrives within `quiet` of the previous delivery.
async fn drain(c: &mut AmqpConsumer, quiet: Duration) -> Vec<AmqpDelivery> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, c.next()).await {
        got.push(d);
    }
    got
}

fn python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let py = PathBuf::from(home).join(".cache/celeriac/venv/bin/python");
    py.exists().then_some(py)
}

fn run_python(script: &str, broker_url: &str) -> String {
    let py = python().expect("venv");
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .env("BROKER", broker_url)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn declares_like_kombu_and_trades_tasks_with_celery() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    let queues = vec!["celery".to_owned(), "media".to_owned()];
    let declared = broker.declare_queues(&queues).await.expect("declare");
    assert!(
        declared
            .iter()
            .all(|d| !d.existed && d.durable && d.arguments.is_empty())
    );
    // What the capture shows for a Celery worker's queues: durable direct exchange named after
    // the queue, durable queue, bound with the queue's name.
    let queues_listed = vh.list(
        "list_queues",
        &["name", "durable", "auto_delete", "arguments"],
    );
    assert!(
        queues_listed.contains("celery\ttrue\tfalse\t[]"),
        "{queues_listed}"
    );
    let exchanges = vh.list(
        "list_exchanges",
        &["name", "type", "durable", "auto_delete"],
    );
    assert!(
        exchanges.contains("media\tdirect\ttrue\tfalse"),
        "{exchanges}"
    );
    let bindings = vh.list(
        "list_bindings",
        &["source_name", "destination_name", "routing_key"],
    );
    assert!(bindings.contains("celery\tcelery\tcelery"), "{bindings}");

    let Some(_) = python() else {
        eprintln!(
            "SKIPPED the Python half: no venv at ~/.cache/celeriac/venv (scripts/test.sh makes it)"
        );
        return;
    };
    // Celery declares the same queue again when it sends: any difference would make RabbitMQ
    // refuse it (PRECONDITION_FAILED) and the script fail.
    let sent = run_python(
        r#"
import os
from celery import Celery
app = Celery('t', broker=os.environ['BROKER'])
r = app.send_task('tasks.add', args=[2, 3], kwargs={'z': 'é'}, queue='celery', headers={'x-tenant': 'acme'}, priority=3)
print(r.id)
"#,
        &vh.url_text(),
    );
    let id = sent.trim();
    let mut c = broker.consume(&queues[..1], 4).await.expect("consume");
    let d = next(&mut c).await.expect("delivery");
    let m = d.decode().expect("decodes");
    assert_eq!(m.headers.id, id);
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert_eq!(m.kwargs["z"], "é");
    assert_eq!(m.headers.extra["x-tenant"], "acme");
    assert_eq!(m.properties.priority, 3);
    assert_eq!(m.properties.routing_key, "celery");
    assert_eq!(
        TaskMessage::from_envelope(&d.envelope()).expect("envelope decodes"),
        m
    );
    broker.ack(d.tag).await.expect("ack");

    // And the other way: our message, consumed by Kombu through Celery's own queue definition.
    broker
        .publish(
            "",
            "media",
            &task("ours-1", "media", vec![json!(40), json!(2)]),
        )
        .await
        .expect("publish");
    let got = run_python(
        r#"
import os, json
from celery import Celery
from kombu import Consumer
app = Celery('t', broker=os.environ['BROKER'])
seen = []
with app.connection_for_read() as conn:
    q = app.amqp.queues['media']
    def cb(body, message):
        seen.append({'body': body, 'task': message.headers['task'], 'id': message.headers['id'],
                     'ct': message.content_type, 'redelivered': message.delivery_info['redelivered']})
        message.ack()
    with Consumer(conn, queues=[q], callbacks=[cb], accept=['json']):
        conn.drain_events(timeout=10)
print(json.dumps(seen))
"#,
        &vh.url_text(),
    );
    let seen: Value = serde_json::from_str(got.trim()).expect("python JSON");
    assert_eq!(seen[0]["task"], "tasks.add");
    assert_eq!(seen[0]["id"], "ours-1");
    assert_eq!(seen[0]["ct"], "application/json");
    assert_eq!(seen[0]["body"][0], json!([40, 2]));
    assert_eq!(seen[0]["body"][1], json!({}));
    c.close().await.expect("close");
}

#[tokio::test]
async fn existing_quorum_and_priority_queues_are_reused_and_conflicts_are_reported() {
    let Some(vh) = Vhost::new() else { return };
    let raw = vh.raw().await;
    let ch = raw.create_channel().await.expect("channel");
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare("q-quorum".into(), QueueDeclareOptions::durable(), quorum)
        .await
        .expect("quorum queue");
    let mut prio = FieldTable::default();
    prio.insert("x-max-priority".into(), AMQPValue::LongInt(10));
    ch.queue_declare("q-prio".into(), QueueDeclareOptions::durable(), prio)
        .await
        .expect("priority queue");

    // Celery's settings say classic queues with priorities up to 5; the existing ones win.
    let opts = AmqpOptions {
        max_priority: Some(5),
        ..AmqpOptions::default()
    };
    let broker = vh.broker(opts.clone()).await;
    let names = vec![
        "q-quorum".to_owned(),
        "q-prio".to_owned(),
        "q-new".to_owned(),
    ];
    let d = broker.declare_queues(&names).await.expect("reused");
    assert_eq!(d[0].queue_type(), QueueType::Quorum);
    assert!(d[0].existed);
    assert_eq!(d[0].max_priority(), None);
    assert_eq!(d[1].max_priority(), Some(10));
    assert_eq!((d[2].existed, d[2].max_priority()), (false, Some(5)));

    // A quorum queue takes per-consumer QoS, and delivers.
    let mut c = broker
        .consume(&names[..1], 2)
        .await
        .expect("consume quorum");
    assert_eq!(c.scope(), QosScope::PerConsumer);
    broker
        .publish("", "q-quorum", &task("qq-1", "q-quorum", vec![json!(1)]))
        .await
        .expect("publish");
    let got = next(&mut c).await.expect("delivery");
    assert_eq!(got.decode().expect("decodes").headers.id, "qq-1");
    broker.ack(got.tag).await.expect("ack");

    // As Kombu would: the mismatch is an error naming the queue and both sides, not a panic,
    // and the handle goes on working.
    let strict = vh
        .broker(AmqpOptions {
            on_mismatch: OnMismatch::Fail,
            ..opts
        })
        .await;
    let err = strict
        .declare_queues(&["q-quorum".to_owned()])
        .await
        .expect_err("conflict");
    let text = err.to_string();
    assert!(
        matches!(err, AmqpError::DeclareConflict { ref queue, .. } if queue == "q-quorum"),
        "{text}"
    );
    assert!(
        text.contains("quorum") && text.contains("x-max-priority"),
        "{text}"
    );
    let ok = strict
        .declare_queues(&["q-other".to_owned()])
        .await
        .expect("channel replaced");
    assert_eq!(ok[0].max_priority(), Some(5));
    c.close().await.expect("close");
}

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries_and_can_be_raised() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    let q = vec!["pf".to_owned()];
    broker.declare_queues(&q).await.expect("declare");
    for i in 0..10 {
        broker
            .publish("", "pf", &task(&format!("pf-{i}"), "pf", vec![json!(i)]))
            .await
            .expect("publish");
    }
    let mut c = broker.consume(&q, 3).await.expect("consume");
    assert_eq!(c.scope(), QosScope::PerChannel);
    let first = drain(&mut c, Duration::from_millis(500)).await;
    assert_eq!(first.len(), 3, "qos 3 holds at 3 unacked");
    broker.ack(first[0].tag).await.expect("ack");
    let more = drain(&mut c, Duration::from_millis(500)).await;
    assert_eq!(more.len(), 1, "one ack frees one slot");
    // As Celery does while it holds ETA messages: raise the window, in place.
    c.set_prefetch(5).await.expect("raise");
    let raised = drain(&mut c, Duration::from_millis(500)).await;
    assert_eq!(raised.len(), 2, "3 unacked + 2 = 5");

    // Per consumer (quorum queues' scope): a raise re-subscribes and more arrive.
    let q2 = vec!["pf2".to_owned()];
    broker.declare_queues(&q2).await.expect("declare");
    for i in 0..10 {
        broker
            .publish("", "pf2", &task(&format!("pf2-{i}"), "pf2", vec![json!(i)]))
            .await
            .expect("publish");
    }
    let mut c2 = broker
        .consume_with_scope(&q2, 2, QosScope::PerConsumer)
        .await
        .expect("consume");
    let held = drain(&mut c2, Duration::from_millis(500)).await;
    assert_eq!(held.len(), 2);
    c2.set_prefetch(4).await.expect("raise");
    let after = drain(&mut c2, Duration::from_millis(500)).await;
    assert!(!after.is_empty() && after.len() <= 4, "{}", after.len());
    for d in held.iter().chain(&after) {
        broker
            .ack(d.tag)
            .await
            .expect("old and new deliveries ack on the same channel");
    }
    c.close().await.expect("close");
    c2.close().await.expect("close");
}

#[tokio::test]
async fn reject_requeues_with_redelivered_and_ack_waits_for_the_caller() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    let q = vec!["rj".to_owned()];
    broker.declare_queues(&q).await.expect("declare");
    broker
        .publish("", "rj", &task("rj-1", "rj", vec![json!(1)]))
        .await
        .expect("publish");
    let mut c = broker.consume(&q, 1).await.expect("consume");
    let d = next(&mut c).await.expect("delivery");
    assert!(!d.redelivered());
    broker.reject(d.tag, true).await.expect("requeue");
    let again = next(&mut c).await.expect("redelivery");
    assert!(again.redelivered());
    let m = again.decode().expect("decodes");
    assert_eq!(m.headers.id, "rj-1");
    assert!(m.properties.redelivered);
    // Held a while, as a task that runs, then acked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.ack(again.tag).await.expect("ack after a while");
    // Rejected without requeue: gone.
    broker
        .publish("", "rj", &task("rj-2", "rj", vec![json!(2)]))
        .await
        .expect("publish");
    let d = next(&mut c).await.expect("delivery");
    broker.reject(d.tag, false).await.expect("drop");
    c.close().await.expect("close");
    let left = broker.declare_queues(&q).await.expect("declare");
    assert_eq!(left[0].message_count, 0);
}

#[tokio::test]
async fn a_lost_connection_surfaces_requeues_and_reconnects() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    let q = vec!["lost".to_owned()];
    broker.declare_queues(&q).await.expect("declare");
    for i in 0..2 {
        broker
            .publish(
                "",
                "lost",
                &task(&format!("lost-{i}"), "lost", vec![json!(i)]),
            )
            .await
            .expect("publish");
    }
    let mut c = broker.consume(&q, 10).await.expect("consume");
    let held = [
        next(&mut c).await.expect("1"),
        next(&mut c).await.expect("2"),
    ];
    let generation = broker.generation();
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &vh.name,
        "test: connection dropped",
    ])
    .expect("close connections");
    let err = tokio::time::timeout(WAIT, c.next())
        .await
        .expect("the consumer notices")
        .expect("an item")
        .expect_err("an error");
    assert!(err.is_connection_lost(), "{err}");
    assert!(
        broker.ack(held[0].tag).await.is_err(),
        "no ack on a dead channel"
    );
    let g2 = broker.reconnect(generation).await.expect("reconnect");
    assert_eq!(g2, generation + 1);
    assert_eq!(
        broker.reconnect(generation).await.expect("already done"),
        g2
    );
    assert!(matches!(
        broker.ack(held[0].tag).await,
        Err(AmqpError::StaleDelivery { current, .. }) if current == g2
    ));
    broker.declare_queues(&q).await.expect("declare again");
    let mut c = broker.consume(&q, 10).await.expect("consume again");
    let back = [
        next(&mut c).await.expect("1"),
        next(&mut c).await.expect("2"),
    ];
    assert!(
        back.iter()
            .all(|d| d.redelivered() && d.tag.generation == g2)
    );
    let mut ids: Vec<_> = back
        .iter()
        .map(|d| d.decode().expect("decodes").headers.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["lost-0", "lost-1"]);
    for d in &back {
        broker.ack(d.tag).await.expect("ack");
    }
    c.close().await.expect("close");
}

#[tokio::test]
async fn publishes_are_confirmed_and_failures_are_typed() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    broker
        .declare_queues(&["pc".to_owned()])
        .await
        .expect("declare");
    let env = task("pc-1", "pc", vec![json!(1)]);
    broker.publish("", "pc", &env).await.expect("confirmed");
    broker
        .publish("pc", "pc", &env)
        .await
        .expect("through the queue's own exchange");
    assert!(matches!(
        broker.publish("", "no-such-queue", &env).await,
        Err(AmqpError::Unroutable { .. })
    ));
    let err = broker
        .publish("no-such-exchange", "pc", &env)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, AmqpError::Refused { .. }) && !err.is_connection_lost(),
        "{err}"
    );
    broker
        .publish("", "pc", &env)
        .await
        .expect("the publish channel was replaced");
    let left = broker
        .declare_queues(&["pc".to_owned()])
        .await
        .expect("declare");
    assert_eq!(left[0].message_count, 3);
}

#[tokio::test]
async fn fanout_reaches_every_subscriber_and_cancel_is_surfaced() {
    let Some(vh) = Vhost::new() else { return };
    let broker = vh.broker(AmqpOptions::default()).await;
    let mut a = broker
        .subscribe_fanout("celeriac.test.bcast")
        .await
        .expect("a");
    let mut b = broker
        .subscribe_fanout("celeriac.test.bcast")
        .await
        .expect("b");
    assert_ne!(a.queue(), b.queue());
    let env = task("bc-1", "", vec![json!("ping")]);
    broker
        .publish_fanout("celeriac.test.bcast", &env)
        .await
        .expect("fanout");
    for s in [&mut a, &mut b] {
        let got = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        assert_eq!(
            got.body_bytes().expect("body"),
            env.body_bytes().expect("body")
        );
        assert_eq!(got.headers["id"], "bc-1");
    }
    drop(a);
    drop(b);

    // The broker cancels a consumer whose queue is deleted: the caller hears of it.
    let q = vec!["doomed".to_owned()];
    broker.declare_queues(&q).await.expect("declare");
    let mut c = broker.consume(&q, 1).await.expect("consume");
    let raw = vh.raw().await;
    let ch = raw.create_channel().await.expect("channel");
    ch.queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let err = next(&mut c).await.expect_err("cancelled");
    assert!(
        matches!(err, AmqpError::ConsumerCancelled { ref queue } if queue == "doomed"),
        "{err}"
    );
}
