"""celeriac-worker on RabbitMQ (`--broker amqp://…`) with real Python Celery as the producer:
tasks, retries and countdowns run with results in Redis; a `kill -9` mid-task puts the message
back at once (AMQP semantics, no visibility timeout) and another worker completes it; a lost
connection, and a restart of RabbitMQ itself, under load lose nothing and consuming resumes.

Each test gets a vhost of its own on the machine's RabbitMQ (127.0.0.1:5672, guest/guest),
made and deleted with rabbitmqctl; scripts/test.sh starts RabbitMQ when none answers."""

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
from celery import Celery

from support import meta, wait_for

pytestmark = pytest.mark.once


def rabbitmqctl(*args):
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def vhost():
    if not shutil.which("rabbitmqctl"):
        pytest.fail("rabbitmqctl is missing: scripts/test.sh installs RabbitMQ", pytrace=False)
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672: scripts/test.sh starts it", pytrace=False)
    name = f"celeriac-test-{uuid.uuid4().hex[:12]}"
    assert rabbitmqctl("add_vhost", name).returncode == 0
    assert rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*").returncode == 0
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_url(vhost):
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


@pytest.fixture
def amqp_app(amqp_url, redis_server):
    app = Celery("amqp-interop", broker=amqp_url, backend=redis_server.url(1))
    app.conf.update(broker_connection_retry_on_startup=True)
    yield app
    app.close()


def queue_counts(vhost, queue):
    """(ready, unacked) of `queue`, as RabbitMQ counts them."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged").stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None


def test_python_celery_sends_and_celeriac_runs_over_amqp(amqp_app, amqp_url, start_worker, backend):
    start_worker("--broker", amqp_url, "-Q", "celery,media", broker_url=amqp_url)
    results = [amqp_app.send_task("celeriac.test.add", args=[i, i]) for i in range(20)]
    assert [r.get(timeout=15) for r in results] == [2 * i for i in range(20)]
    # A retry is a publish (confirmed) back to the queue; the countdown is an ETA held
    # outside the prefetch window.
    assert amqp_app.send_task("celeriac.test.retry", args=[2], queue="media").get(timeout=15) == 2
    began = time.monotonic()
    assert amqp_app.send_task("celeriac.test.add", args=[1, 2], countdown=2).get(timeout=15) == 3
    assert time.monotonic() - began >= 1.5
    # Python's own semantics travel too: a failure is stored as the Python exception.
    failing = amqp_app.send_task("celeriac.test.fail", args=["no"])
    with pytest.raises(Exception):
        failing.get(timeout=10)
    assert meta(backend, failing.id)["status"] == "FAILURE"


def test_kill_9_mid_task_returns_the_message_at_once(amqp_app, amqp_url, vhost, start_worker, backend):
    first = start_worker("-Q", "celery", "--concurrency", "1", broker_url=amqp_url)
    r = amqp_app.send_task("celeriac.test.sleep", args=[3])
    first.wait_log(rf"Task celeriac\.test\.sleep\[{r.id}\] received")
    assert queue_counts(vhost, "celery") == (0, 1)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    # No visibility timeout on AMQP: the broker puts it back as soon as the connection is gone.
    wait_for(lambda: queue_counts(vhost, "celery") == (1, 0), timeout=10, interval=0.2,
             what="the message back on the queue")
    second = start_worker("-Q", "celery", broker_url=amqp_url)
    assert r.get(timeout=15) == 3
    assert second.log().count(f"[{r.id}] succeeded") == 1
    wait_for(lambda: queue_counts(vhost, "celery") == (0, 0), timeout=10, what="nothing left")


def test_a_lost_connection_under_load_loses_nothing(amqp_app, amqp_url, vhost, start_worker, backend):
    w = start_worker("-Q", "celery", "--concurrency", "8", broker_url=amqp_url)
    ids = [amqp_app.send_task("celeriac.test.sleep", args=[0.02]).id for _ in range(300)]

    def done():
        return sum(1 for i in ids if (meta(backend, i) or {}).get("status") == "SUCCESS")

    wait_for(lambda: done() >= 30, timeout=30, what="the load to be under way")
    assert rabbitmqctl("close_all_connections", "-p", vhost, "celeriac test").returncode == 0
    wait_for(lambda: done() == len(ids), timeout=60, interval=0.2, what="every task after the reconnect")
    w.wait_log("consuming again")
    wait_for(lambda: queue_counts(vhost, "celery") == (0, 0), timeout=10, what="nothing left on the queue")
    assert amqp_app.send_task("celeriac.test.add", args=[2, 2]).get(timeout=10) == 4
    assert w.proc.poll() is None


def test_rabbitmq_restarted_under_load_loses_nothing(amqp_app, amqp_url, vhost, start_worker, backend):
    w = start_worker("-Q", "celery", "--concurrency", "8", broker_url=amqp_url)
    ids = [amqp_app.send_task("celeriac.test.sleep", args=[0.02]).id for _ in range(300)]

    def done():
        return sum(1 for i in ids if (meta(backend, i) or {}).get("status") == "SUCCESS")

    wait_for(lambda: done() >= 30, timeout=30, what="the load to be under way")
    # The broker application stops (every connection drops) and starts again: Celery's messages
    # are persistent in durable queues, so what was queued or unacked is still there.
    try:
        assert rabbitmqctl("stop_app").returncode == 0
        stopped_with = done()
        time.sleep(2)
    finally:
        assert rabbitmqctl("start_app").returncode == 0
    assert stopped_with < len(ids), "messages must still be queued when RabbitMQ stops"
    wait_for(lambda: done() == len(ids), timeout=90, interval=0.2, what="every task after the restart")
    w.wait_log("consuming again")
    wait_for(lambda: queue_counts(vhost, "celery") == (0, 0), timeout=10, what="nothing left on the queue")
    assert amqp_app.send_task("celeriac.test.add", args=[3, 3]).get(timeout=15) == 6
    assert w.proc.poll() is None


def test_garbage_on_an_amqp_queue_is_set_aside(amqp_url, vhost, start_worker, amqp_app):
    start_worker("-Q", "celery", broker_url=amqp_url)
    with amqp_app.connection_for_write() as conn:
        producer = conn.Producer()
        producer.publish(b"\x00 not a task", exchange="celery", routing_key="celery",
                         content_type="application/x-garbage", content_encoding="binary", declare=[])
    wait_for(lambda: (queue_counts(vhost, "celeriac.rejected") or (0, 0))[0] == 1, timeout=15,
             interval=0.2, what="the message on celeriac.rejected")
    assert amqp_app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=10) == 2
    assert queue_counts(vhost, "celery") == (0, 0)
