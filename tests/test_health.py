"""/healthz, /readyz and /metrics of both binaries, and their JSON log lines (issue 7).

Liveness must fail while the worker is stuck on its broker (paused with CLIENT PAUSE, or
stopped) and recover when the broker is back; counters move when tasks run; a scrape never
reaches the broker, however busy the worker is; readiness drops during a drain. Beat says
whether it leads."""

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from support import free_port, wait_for

# Python Celery is only the client here: the Celery 5.3 pass skips these.
pytestmark = pytest.mark.once


def get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value} of a Prometheus text page."""
    out = {}
    rx = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    for line in text.splitlines():
        m = rx.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        out[(m[1], labels)] = float(m[3])
    return out


def value(page, name, **labels):
    return samples(page).get((name, frozenset(labels.items())), 0.0)


def metrics(port):
    status, body = get(port, "/metrics")
    assert status == 200, body
    return body


@pytest.fixture
def http_worker(start_worker):
    """start_http_worker(*args) -> (worker, port): celeriac-worker serving its endpoints."""

    def start(*args, **kwargs):
        port = free_port()
        w = start_worker("--http-addr", f"127.0.0.1:{port}", *args, **kwargs)
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=10, what="/readyz to answer 200")
        return w, port

    return start


def test_counters_move_with_tasks_and_labels_never_carry_ids(app, broker, http_worker):
    w, port = http_worker("-Q", "default,media")
    status, body = get(port, "/healthz")
    assert status == 200 and body.startswith("consuming"), body
    ok = [app.send_task("celeriac.test.add", args=[i, 1], queue="default") for i in range(5)]
    bad = [app.send_task("celeriac.test.fail", args=["boom"], queue="media") for _ in range(2)]
    stray = app.send_task("no.such.task", queue="media")
    assert [r.get(timeout=10) for r in ok] == [1, 2, 3, 4, 5]
    for r in bad:
        with pytest.raises(Exception):
            r.get(timeout=10)
    wait_for(lambda: value(metrics(port), "celeriac_tasks_failed_total", task="unregistered", queue="media") == 1,
             timeout=10, what="the unregistered task to be counted")
    page = metrics(port)
    assert value(page, "celeriac_tasks_received_total", task="celeriac.test.add", queue="default") == 5
    assert value(page, "celeriac_tasks_succeeded_total", task="celeriac.test.add", queue="default") == 5
    assert value(page, "celeriac_tasks_failed_total", task="celeriac.test.fail", queue="media") == 2
    assert value(page, "celeriac_task_runtime_seconds_count", task="celeriac.test.add", queue="default") == 5
    assert value(page, "celeriac_result_store_seconds_count") >= 1
    assert "# TYPE celeriac_task_runtime_seconds histogram" in page
    for r in ok + bad + [stray]:
        assert r.id not in page, "a task id reached a label"
    assert "no.such.task" not in page, "a producer's task name reached a label"
    assert get(port, "/nope")[0] == 404


def test_gauges_show_running_held_and_waiting_messages(app, broker, http_worker):
    w, port = http_worker("-Q", "slow", "--concurrency", "2", "--prefetch-multiplier", "2")
    for _ in range(10):
        app.send_task("celeriac.test.sleep", args=[8], queue="slow")
    # Two run, two more are prefetched, six wait in Redis (for 8 s); the length is read every 5 s.
    wait_for(lambda: value(metrics(port), "celeriac_queue_length", queue="slow") == 6, timeout=12,
             what="celeriac_queue_length to show the 6 waiting messages")
    page = metrics(port)
    assert value(page, "celeriac_tasks_running") == 2
    assert value(page, "celeriac_messages_held") == 4
    # Every slot of the window is taken: idle by choice, still live and ready.
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 200


def test_a_scrape_of_a_busy_worker_never_reaches_the_broker(app, broker, http_worker):
    w, port = http_worker("-Q", "a,b", "--concurrency", "8")
    for _ in range(400):
        app.send_task("celeriac.test.sleep", args=[0.02], queue="a")
    wait_for(lambda: value(metrics(port), "celeriac_tasks_succeeded_total", task="celeriac.test.sleep", queue="a") > 20,
             timeout=10, what="the worker to be busy")

    def llen_calls():
        stats = broker.info("commandstats")
        return stats.get("cmdstat_llen", {}).get("calls", 0)

    before, began = llen_calls(), time.monotonic()
    pages = [metrics(port) for _ in range(200)]
    elapsed = time.monotonic() - began
    after = llen_calls()
    # The only LLENs are the periodic read: 4 priority lists x 2 queues every 5 s.
    periodic = 4 * 2 * (int(elapsed / 5) + 2)
    assert after - before <= periodic, f"{after - before} LLENs during 200 scrapes in {elapsed:.1f}s"
    assert value(pages[-1], "celeriac_tasks_running") <= 8
    assert max(len(p) for p in pages) < 64_000, "the page grows with the number of tasks"
    wait_for(lambda: value(metrics(port), "celeriac_tasks_succeeded_total", task="celeriac.test.sleep", queue="a") == 400,
             timeout=30, what="all 400 tasks")


def test_liveness_fails_while_the_broker_is_paused_and_recovers(app, broker, http_worker):
    w, port = http_worker("--stall-timeout", "2")
    assert app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=5) == 2
    # CLIENT PAUSE holds every client's commands: the worker's poll gets no reply.
    broker.execute_command("CLIENT", "PAUSE", "7000")
    paused_at = time.monotonic()
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
                            timeout=6, interval=0.2, what="/healthz to fail while Redis is paused")
    assert body.startswith("stuck: no broker reply"), body
    assert time.monotonic() - paused_at < 7, "it must fail while the pause lasts"
    wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=15, interval=0.2,
             what="/healthz to recover after the pause")
    assert app.send_task("celeriac.test.add", args=[2, 2]).get(timeout=10) == 4
    assert w.proc.poll() is None


def test_liveness_and_readiness_fail_while_redis_is_down_and_recover(app, redis_server, http_worker):
    w, port = http_worker("--stall-timeout", "2")
    redis_server.stop()
    wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=5, interval=0.2, what="/readyz to fail")
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/healthz")),
                            timeout=8, interval=0.2, what="/healthz to fail while Redis is down")
    assert "unreachable" in body, body
    redis_server.start()
    wait_for(lambda: get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200, timeout=20,
             interval=0.2, what="both probes to recover")
    assert app.send_task("celeriac.test.add", args=[3, 4]).get(timeout=10) == 7
    assert value(metrics(port), "celeriac_broker_reconnects_total") >= 1


def test_readiness_drops_during_a_drain_while_liveness_holds(app, backend, http_worker):
    w, port = http_worker()
    r = app.send_task("celeriac.test.sleep", args=[2])
    wait_for(lambda: value(metrics(port), "celeriac_tasks_running") == 1, timeout=5, what="the task to run")
    w.signal(signal.SIGTERM)
    wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=3, interval=0.05, what="/readyz to drop")
    status, body = get(port, "/healthz")
    assert status == 200 and body.startswith("draining"), body
    assert w.wait(timeout=30) == 0
    assert r.get(timeout=5) == 2


def test_json_logs_give_one_line_per_outcome_with_its_fields(app, start_worker):
    w = start_worker("-Q", "celery,media", env={"CELERIAC_LOG_FORMAT": "json"})
    ok = app.send_task("celeriac.test.add", args=[2, 3])
    failed = app.send_task("celeriac.test.fail", args=["no"], queue="media")
    assert ok.get(timeout=5) == 5
    with pytest.raises(Exception):
        failed.get(timeout=5)
    wait_for(lambda: failed.id in w.log(), timeout=5, what="the failure's log line")
    time.sleep(0.3)
    lines = [json.loads(line) for line in w.log().splitlines() if line.strip()]
    assert all({"timestamp", "level", "message"} <= set(line) for line in lines)
    outcomes = [line for line in lines if line.get("target") == "celeriac::outcome"]
    by_id = {line["task_id"]: line for line in outcomes}
    assert set(by_id) == {ok.id, failed.id}, outcomes
    assert by_id[ok.id]["state"] == "SUCCESS" and by_id[ok.id]["task"] == "celeriac.test.add"
    assert by_id[ok.id]["queue"] == "celery" and by_id[ok.id]["runtime"] >= 0
    assert by_id[failed.id]["state"] == "FAILURE" and by_id[failed.id]["queue"] == "media"
    assert by_id[failed.id]["level"] == "ERROR"


def test_text_logs_keep_celerys_outcome_lines(app, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.add", args=[1, 2])
    assert r.get(timeout=5) == 3
    w.wait_log(rf"Task celeriac\.test\.add\[{r.id}\] succeeded in [0-9.]+s: 3$|"
               rf"Task celeriac\.test\.add\[{r.id}\] succeeded in [0-9.]+s: 3\n")
    line = next(line for line in w.log().splitlines() if f"[{r.id}] succeeded" in line)
    assert "task_id=" not in line, line


def test_a_taken_port_is_a_startup_error(start_worker):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        w = start_worker("--http-addr", f"127.0.0.1:{port}", ready=False)
        assert w.wait(timeout=10) == 2
    assert "--http-addr" in w.log() and "cannot listen" in w.log()


ONE_EVERY_SECOND = """
[entries.tick]
task = "celeriac.test.add"
args = [1, 1]
every = 1
queue = "beat"
"""


def test_beat_says_who_leads_and_counts_its_ticks(start_beat):
    p1, p2 = free_port(), free_port()
    leader = start_beat(ONE_EVERY_SECOND, "--http-addr", f"127.0.0.1:{p1}")
    wait_for(lambda: get(p1, "/readyz") == (200, "leader: this process sends the schedule\n"), timeout=10,
             what="the first beat to lead")
    standby = start_beat(ONE_EVERY_SECOND, "--http-addr", f"127.0.0.1:{p2}")
    wait_for(lambda: get(p2, "/readyz")[1].startswith("standby"), timeout=10, what="the second beat to stand by")
    assert get(p1, "/healthz")[0] == 200 and get(p2, "/healthz")[0] == 200
    wait_for(lambda: value(metrics(p1), "celeriac_beat_ticks_sent_total", entry="tick") >= 2, timeout=10,
             what="ticks to be counted")
    page = metrics(p1)
    assert value(page, "celeriac_beat_leader") == 1
    assert value(page, "celeriac_beat_lateness_seconds_count") >= 2
    assert value(metrics(p2), "celeriac_beat_leader") == 0
    assert value(metrics(p2), "celeriac_beat_ticks_sent_total", entry="tick") == 0
    # The leader stops: the standby takes over and says so.
    leader.signal(signal.SIGTERM)
    assert leader.wait(timeout=10) == 0
    wait_for(lambda: get(p2, "/readyz")[1].startswith("leader"), timeout=10, what="the standby to take over")
    wait_for(lambda: value(metrics(p2), "celeriac_beat_ticks_sent_total", entry="tick") >= 1, timeout=10,
             what="the new leader's ticks")


def test_beat_liveness_fails_while_redis_is_paused(broker, start_beat):
    port = free_port()
    start_beat(ONE_EVERY_SECOND, "--http-addr", f"127.0.0.1:{port}", "--stall-timeout", "2")
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=10, what="beat to be ready")
    broker.execute_command("CLIENT", "PAUSE", "6000")
    wait_for(lambda: get(port, "/healthz")[0] == 503, timeout=6, interval=0.2, what="beat's /healthz to fail")
    wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=15, interval=0.2, what="beat's /healthz to recover")
