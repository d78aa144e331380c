"""When and where tasks run: countdown/eta, expires, retries, queue routing and priorities, as
Celery defines them."""

import datetime as dt
import json
import time

import celery.exceptions
import pytest

from support import meta, wait_for


def parse(ts):
    return dt.datetime.fromisoformat(ts)


def test_countdown_holds_the_task_until_due(app, backend, broker, start_worker):
    start_worker()
    sent = dt.datetime.now(dt.timezone.utc)
    r = app.send_task("celeriac.test.request", countdown=1.5)
    time.sleep(0.5)
    assert r.state == "PENDING"
    # Held by the worker meanwhile: unacked, not on the queue.
    assert broker.llen("celery") == 0 and broker.hlen("unacked") == 1
    req = r.get(timeout=5)
    assert parse(meta(backend, r.id)["date_done"]) >= parse(req["eta"]) >= sent + dt.timedelta(seconds=1.4)


def test_eta_in_the_past_runs_at_once(app, start_worker):
    start_worker()
    eta = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    assert app.send_task("celeriac.test.add", args=[1, 1], eta=eta).get(timeout=5) == 2


def test_naive_eta_is_read_in_the_app_timezone(app, backend, start_worker):
    # 2 s ahead in Tokyo time (UTC+9), sent naive as Celery does for a naive datetime.
    start_worker("--timezone", "Asia/Tokyo")
    tokyo_now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=9)
    eta = (tokyo_now + dt.timedelta(seconds=2)).replace(tzinfo=None)
    r = app.send_task("celeriac.test.add", args=[2, 2], eta=eta)
    time.sleep(0.8)
    assert r.state == "PENDING", "a naive ETA read as UTC would be 9 h in the past and run at once"
    assert r.get(timeout=5) == 4
    done = parse(meta(backend, r.id)["date_done"])
    assert done.utcoffset() == dt.timedelta(hours=9), "date_done is written in the app time zone"
    assert done.replace(tzinfo=None) >= eta


def test_expired_task_is_revoked_not_run(app, backend, broker, start_worker):
    r = app.send_task("celeriac.test.add", args=[1, 2], expires=0.5)
    time.sleep(1.0)
    w = start_worker()
    with pytest.raises(celery.exceptions.TaskRevokedError, match="expired"):
        r.get(timeout=5)
    rec = meta(backend, r.id)
    assert rec["status"] == "REVOKED" and rec["traceback"] is None
    assert rec["result"] == {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}
    assert f"Discarding revoked task: celeriac.test.add[{r.id}]" in w.log()
    assert "succeeded" not in w.log()
    wait_for(lambda: broker.hlen("unacked") == 0, what="the expired message acked")


def test_expiry_is_checked_again_when_the_eta_comes(app, backend, start_worker):
    start_worker()
    r = app.send_task("celeriac.test.add", args=[1, 2], countdown=1.5, expires=0.5)
    with pytest.raises(celery.exceptions.TaskRevokedError):
        r.get(timeout=5)
    assert meta(backend, r.id)["status"] == "REVOKED"


def test_unexpired_task_runs(app, start_worker):
    start_worker()
    assert app.send_task("celeriac.test.add", args=[1, 2], expires=30).get(timeout=5) == 3


def test_retry_republishes_with_the_same_id_until_done(app, backend, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.retry", args=[3])
    assert r.get(timeout=10) == 3
    assert w.log().count(f"celeriac.test.retry[{r.id}] retry: Retry in 0.1s") == 3
    rec = meta(backend, r.id)
    assert rec["status"] == "SUCCESS" and rec["parent_id"] == r.id  # a retry is its own child


def test_retry_state_and_republished_message(app, backend, broker, start_worker):
    """Watch one retry closely: the RETRY record and the message sent back to the queue."""
    w = start_worker()
    r = app.send_task("celeriac.test.retry", args=[1], kwargs={"countdown": 3}, priority=3)
    wait_for(lambda: r.state == "RETRY", timeout=5, what="RETRY")
    rec = meta(backend, r.id)
    assert rec["result"] is None and rec["date_done"] is None
    assert rec["children"] == [[[r.id, None], None]]
    assert rec["traceback"].endswith("celery.exceptions.Retry: Retry in 3s\n")
    # The retry message is held by the worker until its ETA: read it from the unacked hash.
    wait_for(lambda: broker.hlen("unacked") == 1, what="the retry message held")
    [entry] = broker.hvals("unacked")
    env, exchange, routing_key = json.loads(entry)
    h = env["headers"]
    assert (exchange, routing_key) == ("", "celery")
    assert h["id"] == r.id and h["task"] == "celeriac.test.retry" and h["retries"] == 1
    assert h["parent_id"] == r.id and h["root_id"] == r.id and h["ignore_result"] is False
    assert h["argsrepr"] == "(1,)" and h["kwargsrepr"] == "{'countdown': 3}"
    assert parse(h["eta"]) > dt.datetime.now(dt.timezone.utc)
    assert env["properties"]["priority"] == 3 and env["properties"]["correlation_id"] == r.id
    assert "origin" in env["properties"]
    assert r.get(timeout=10) == 1
    assert w.log().count("retry: Retry in 3s") == 1


def test_retries_stop_at_max_retries(app, backend, start_worker):
    start_worker()
    r = app.send_task("celeriac.test.retry", args=[5], kwargs={"max_retries": 2})
    with pytest.raises(celery.exceptions.MaxRetriesExceededError) as err:
        r.get(timeout=10)
    assert str(err.value) == f"Can't retry celeriac.test.retry[{r.id}] args:(5,) kwargs:{{'max_retries': 2}}"
    rec = meta(backend, r.id)
    assert rec["status"] == "FAILURE" and rec["result"]["exc_module"] == "celery.exceptions"


def test_queues_route_tasks(app, broker, start_worker):
    start_worker("--queues", "default,media")
    a = app.send_task("celeriac.test.add", args=[1, 1], queue="default")
    b = app.send_task("celeriac.test.add", args=[2, 2], queue="media")
    c = app.send_task("celeriac.test.add", args=[3, 3], queue="other")
    assert a.get(timeout=5) == 2 and b.get(timeout=5) == 4
    time.sleep(0.5)
    assert c.state == "PENDING" and broker.llen("other") == 1
    # Kombu's bindings for the consumed queues exist, as a Python worker declares them.
    assert broker.smembers("_kombu.binding.media") == {b"media\x06\x16\x06\x16media"}


def test_priorities_are_served_lowest_number_first(app, backend, start_worker):
    """On Redis, Kombu serves priority 0 first and 9 last (the opposite of RabbitMQ)."""
    sent = [(p, app.send_task("celeriac.test.add", args=[p, 0], priority=p)) for p in (9, 6, 3, 0, 7, 1, 4)]
    start_worker("--concurrency", "1", "--prefetch-multiplier", "1")
    for _, r in sent:
        r.get(timeout=10)
    order = sorted(sent, key=lambda pr: parse(meta(backend, pr[1].id)["date_done"]))
    steps = [min(p // 3 * 3, 9) for p, _ in order]
    assert steps == sorted(steps), f"ran in priority order {[p for p, _ in order]}"


def test_queues_are_polled_round_robin(app, backend, start_worker):
    for i in range(6):
        app.send_task("celeriac.test.add", args=[i, 0], queue="a", task_id=f"a{i}")
        app.send_task("celeriac.test.add", args=[i, 0], queue="b", task_id=f"b{i}")
    start_worker("--queues", "a,b", "--concurrency", "1", "--prefetch-multiplier", "1")
    ids = [f"{q}{i}" for q in "ab" for i in range(6)]
    wait_for(lambda: all(meta(backend, i) for i in ids), what="all tasks")
    order = [i[0] for i in sorted(ids, key=lambda i: parse(meta(backend, i)["date_done"]))]
    assert order.count("a") == 6 and "aaaaaa" not in "".join(order), order
