"""Celery semantics of the runtime itself: concurrency and prefetch limits, late acks,
Celery's guard against overwriting a stored SUCCESS, Reject, and Kombu's restore lock."""

import datetime as dt
import json
import re
import time

import celery.exceptions
import pytest

from support import meta, wait_for


def spans(log, ids):
    """(start, end) of each task from the DEBUG log's `started` and `succeeded` lines."""
    stamp = r"^(\S+)\s+\S+\s+Task celeriac\.test\.sleep\[{}\] {}"
    out = []
    for i in ids:
        s = re.search(stamp.format(re.escape(i), "started"), log, re.M)
        e = re.search(stamp.format(re.escape(i), "succeeded"), log, re.M)
        out.append((dt.datetime.fromisoformat(s.group(1)), dt.datetime.fromisoformat(e.group(1))))
    return out


def test_concurrency_bounds_running_tasks(app, start_worker):
    w = start_worker("--concurrency", "2", loglevel="DEBUG")
    sent = [app.send_task("celeriac.test.sleep", args=[0.4]) for _ in range(6)]
    for r in sent:
        r.get(timeout=10)
    s = spans(w.log(), [r.id for r in sent])
    most = max(sum(1 for a, b in s if a <= t < b) for t, _ in s)
    assert most == 2, f"{most} tasks ran at once with --concurrency 2"


def test_prefetch_is_bounded_by_the_multiplier(app, broker, start_worker):
    start_worker("--concurrency", "1", "--prefetch-multiplier", "2")
    running = app.send_task("celeriac.test.sleep", args=[1.5])
    rest = [app.send_task("celeriac.test.add", args=[i, 0]) for i in range(5)]
    wait_for(lambda: broker.hlen("unacked") == 2, what="the prefetch window filled")
    time.sleep(0.5)
    assert broker.hlen("unacked") == 2 and broker.llen("celery") == 4
    assert running.get(timeout=5) == 1.5 and [r.get(timeout=5) for r in rest] == list(range(5))


def test_ack_comes_only_after_the_result_is_stored(app, broker, backend, start_worker):
    """Late acks: while a task runs its message stays unacked; once acked, its result exists."""
    w = start_worker()
    r = app.send_task("celeriac.test.sleep", args=[0.8])
    w.wait_log(rf"celeriac.test.sleep\[{r.id}\] received")
    assert broker.hlen("unacked") == 1 and meta(backend, r.id) is None
    wait_for(lambda: broker.hlen("unacked") == 0, what="the ack")
    assert meta(backend, r.id)["status"] == "SUCCESS"


def test_a_stored_success_is_never_overwritten(app, backend, start_worker):
    """Celery's guard: a redelivered duplicate must not replace a SUCCESS with another state."""
    r = app.send_task("celeriac.test.fail", args=["late duplicate"])
    first = {"status": "SUCCESS", "result": 1, "traceback": None, "children": [],
             "date_done": "2026-01-01T00:00:00+00:00", "task_id": r.id}
    backend.set(f"celery-task-meta-{r.id}", json.dumps(first))
    w = start_worker()
    w.wait_log(rf"celeriac.test.fail\[{r.id}\] raised unexpected")
    time.sleep(0.3)
    assert meta(backend, r.id) == first


def test_reject_without_requeue_fails_with_reject(app, backend, broker, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.reject", kwargs={"reason": "nope"})
    with pytest.raises(celery.exceptions.Reject):
        r.get(timeout=5)
    assert meta(backend, r.id)["result"] == {"exc_type": "Reject", "exc_message": ["nope", False],
                                             "exc_module": "celery.exceptions"}
    assert "reject requeue=False: nope" in w.log()
    wait_for(lambda: broker.hlen("unacked") == 0 and broker.llen("celery") == 0, what="dropped")


def test_reject_with_requeue_puts_the_message_behind_the_others(app, backend, start_worker):
    first = app.send_task("celeriac.test.reject", kwargs={"requeue": True, "unless_redelivered": True})
    others = [app.send_task("celeriac.test.add", args=[i, 0]) for i in range(3)]
    w = start_worker("--concurrency", "1", "--prefetch-multiplier", "1")
    assert first.get(timeout=10) is True
    assert w.log().count(f"celeriac.test.reject[{first.id}] reject requeue=True") == 1
    done = {r.id: dt.datetime.fromisoformat(meta(backend, r.id)["date_done"]) for r in [first, *others]}
    assert done[first.id] > max(done[r.id] for r in others), "requeued with LPUSH: behind the others"


def test_restore_respects_kombus_lock(app, broker, start_worker):
    """While another worker holds `unacked_mutex`, no restore runs; afterwards it does."""
    a = start_worker()
    r = app.send_task("celeriac.test.sleep", args=[0.2], countdown=1)
    wait_for(lambda: broker.hlen("unacked") == 1, what="held")
    a.kill()
    broker.set("unacked_mutex", "someone-else", px=300000)
    b = start_worker("--visibility-timeout", "1")
    time.sleep(2.5)
    assert broker.hlen("unacked") == 1 and r.state == "PENDING"
    broker.delete("unacked_mutex")
    assert r.get(timeout=10) == 0.2
    b.wait_log("restored 1 messages")
