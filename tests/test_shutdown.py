"""Graceful shutdown: on SIGTERM the worker stops fetching, hands unstarted messages back at
once, lets running tasks finish, and exits 0; a second signal exits at once with everything
still recoverable; tasks that outlive the grace period are handed back, not left for an hour."""

import json
import signal
import time

from support import meta, wait_for


def queued(broker, queue="celery"):
    return [json.loads(x) for x in broker.lrange(queue, 0, -1)]


def test_sigterm_finishes_running_tasks_and_hands_back_the_rest(app, broker, backend, start_worker):
    w = start_worker("--concurrency", "1", "--prefetch-multiplier", "4")
    later = app.send_task("celeriac.test.add", args=[9, 9], countdown=60)  # held outside the window
    running = app.send_task("celeriac.test.sleep", args=[3])
    waiting = [app.send_task("celeriac.test.add", args=[i, i]) for i in range(3)]
    w.wait_log(rf"celeriac.test.sleep\[{running.id}\] received")
    wait_for(lambda: broker.hlen("unacked") == 5, what="all five messages prefetched")
    time.sleep(0.3)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    # Unstarted messages go back at once, while the running task is still running.
    wait_for(lambda: broker.llen("celery") == 4, timeout=2.5, what="unstarted messages handed back")
    assert running.state == "PENDING"
    assert w.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 8, "it waited for the running task only"
    assert running.get(timeout=1) == 3
    assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0
    back = queued(broker)
    assert {m["headers"]["id"] for m in back} == {r.id for r in waiting + [later]}
    assert all(m["headers"]["redelivered"] and m["properties"]["delivery_info"]["redelivered"] for m in back)
    for r in waiting + [later]:
        assert meta(backend, r.id) is None
    # The next worker runs them; the handed-back ones come first.
    start_worker("--concurrency", "1")
    assert [r.get(timeout=5) for r in waiting] == [0, 2, 4]
    assert "warm shutdown" in w.log() and "stopped" in w.log()


def test_a_second_signal_exits_at_once_and_nothing_is_lost(app, broker, start_worker):
    w = start_worker("--shutdown-timeout", "60")
    r = app.send_task("celeriac.test.sleep", args=[3])
    w.wait_log(rf"celeriac.test.sleep\[{r.id}\] received")
    w.signal(signal.SIGTERM)
    time.sleep(0.3)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=5) == 143
    assert time.monotonic() - t0 < 2.5, "the task (3 s) was not waited for"
    assert "cold shutdown" in w.log()
    # Still recoverable: unacked, and restored by the next worker once the visibility timeout passes.
    assert broker.hlen("unacked") == 1 and broker.zcard("unacked_index") == 1
    start_worker("--visibility-timeout", "1")
    assert r.get(timeout=10) == 3


def test_tasks_outliving_the_grace_period_are_handed_back(app, broker, backend, start_worker):
    w = start_worker("--shutdown-timeout", "1")
    r = app.send_task("celeriac.test.sleep", args=[30])
    w.wait_log(rf"celeriac.test.sleep\[{r.id}\] received")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 8, "the 30 s task was not waited for"
    assert "shutdown timeout reached" in w.log()
    [back] = queued(broker)
    assert back["headers"]["id"] == r.id and back["headers"]["redelivered"] is True
    assert broker.hlen("unacked") == 0
    assert meta(backend, r.id) is None


def test_sigint_is_a_warm_shutdown_too(app, start_worker):
    w = start_worker()
    assert app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=5) == 2
    w.signal(signal.SIGINT)
    assert w.wait(timeout=5) == 0
