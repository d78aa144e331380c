"""Both directions on shared queues: a message our worker publishes (a retry) is consumed by a
real Python Celery worker, one a Python worker publishes is consumed by ours, and both kinds
of worker can drain one queue together."""

import signal

from support import wait_for


def runs(broker, task_id):
    return [x.decode() for x in broker.lrange(f"runs:{task_id}", 0, -1)]


def test_our_retry_message_is_run_by_a_python_worker(app, broker, backend, start_worker, start_python_worker):
    ours = start_worker()
    r = app.send_task("celeriac.test.retry", args=[1], kwargs={"countdown": 2})
    wait_for(lambda: r.state == "RETRY", timeout=5, what="our worker to retry")
    # Our worker holds the retry message until its ETA; stopping it hands the message back.
    ours.signal(signal.SIGTERM)
    assert ours.wait(timeout=10) == 0
    assert broker.llen("celery") == 1
    start_python_worker()
    result = r.get(timeout=15)
    assert result["ran_by"] == "python"
    assert result["retries"] == 1 and result["parent_id"] == r.id and result["root_id"] == r.id
    assert result["eta"] is not None
    assert len(runs(broker, r.id)) == 1


def test_a_python_retry_message_is_run_by_us(app, broker, start_worker, start_python_worker):
    py = start_python_worker()
    r = app.send_task("celeriac.test.retry", args=[1], kwargs={"countdown": 2})
    wait_for(lambda: r.state == "RETRY", timeout=10, what="the Python worker to retry")
    py.signal(signal.SIGTERM)  # warm shutdown: Python restores its prefetched ETA message
    py.wait(timeout=15)
    wait_for(lambda: broker.llen("celery") == 1, timeout=5, what="the retry message back on the queue")
    start_worker()
    assert r.get(timeout=15) == 1  # our celeriac.test.retry returns the retry count
    assert len(runs(broker, r.id)) == 1


def test_python_and_celeriac_workers_share_a_queue(app, broker, backend, start_worker, start_python_worker):
    start_python_worker()
    ours = start_worker()
    sent = [app.send_task("celeriac.test.add", args=[i, 1]) for i in range(200)]
    assert [r.get(timeout=20) for r in sent] == [i + 1 for i in range(200)]
    by_python = sum(1 for r in sent if runs(broker, r.id))
    by_us = ours.log().count("succeeded in")
    assert by_python + by_us == 200, (by_python, by_us)
    assert by_us > 0
    assert broker.hlen("unacked") == 0
