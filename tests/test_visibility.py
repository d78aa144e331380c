"""Kombu's visibility timeout, shared with Python workers: a message left unacked by a dead
worker (Python or ours) is restored and run by the other kind; and, beyond Celery, a message
our worker holds (waiting for its ETA) stays fresh so it never runs twice."""

import time

from support import meta, wait_for


def runs(broker, task_id):
    return [x.decode() for x in broker.lrange(f"runs:{task_id}", 0, -1)]


def test_kill_9_mid_task_is_redelivered(app, broker, backend, start_worker):
    a = start_worker()
    r = app.send_task("celeriac.test.sleep", args=[1.5])
    a.wait_log(rf"celeriac.test.sleep\[{r.id}\] received")
    a.kill()
    assert broker.hlen("unacked") == 1 and meta(backend, r.id) is None
    b = start_worker("--visibility-timeout", "1")
    assert r.get(timeout=10) == 1.5
    b.wait_log(r"restored 1 messages")


def test_a_redelivered_message_says_so(app, broker, start_worker):
    a = start_worker()
    r = app.send_task("celeriac.test.request", countdown=2)
    wait_for(lambda: broker.hlen("unacked") == 1, what="the ETA message held")
    a.kill()
    start_worker("--visibility-timeout", "1")
    req = r.get(timeout=10)
    assert req["delivery_info"]["redelivered"] is True


def test_python_worker_killed_mid_task_is_finished_by_celeriac(app, broker, start_python_worker, start_worker):
    py = start_python_worker(vt=3600, pool=("-P", "prefork", "-c", "1"))
    r = app.send_task("celeriac.test.sleep", args=[2])
    wait_for(lambda: runs(broker, r.id), timeout=10, what="the Python worker to start the task")
    py.kill()
    assert broker.hlen("unacked") == 1, "acks_late: the message is still unacked"
    ours = start_worker("--visibility-timeout", "1")
    assert r.get(timeout=15) == 2
    assert len(runs(broker, r.id)) == 1, "the second run was ours (ours do not record in runs:)"
    ours.wait_log(rf"celeriac.test.sleep\[{r.id}\] succeeded")


def test_celeriac_killed_mid_task_is_finished_by_a_python_worker(app, broker, start_worker, start_python_worker):
    ours = start_worker()
    r = app.send_task("celeriac.test.sleep", args=[2])
    ours.wait_log(rf"celeriac.test.sleep\[{r.id}\] received")
    ours.kill()
    time.sleep(1.2)
    # A Python worker restores stale unacked messages when it starts consuming.
    start_python_worker(vt=1)
    assert r.get(timeout=15) == 2
    assert len(runs(broker, r.id)) == 1


def test_an_eta_longer_than_the_visibility_timeout_runs_once(app, broker, backend, start_worker, start_python_worker):
    """Python Celery runs such a task twice (see the control test below); we keep it fresh."""
    holder = start_worker("--visibility-timeout", "2")
    r = app.send_task("celeriac.test.request", countdown=7)
    wait_for(lambda: broker.hlen("unacked") == 1, what="the ETA message held")
    time.sleep(3)  # past the visibility timeout
    # Two restorers: a Python worker (scans at start) and another celeriac worker (every second).
    py = start_python_worker(vt=2)
    other = start_worker("--visibility-timeout", "2")
    req = r.get(timeout=15)
    time.sleep(2.5)  # let any duplicate run happen
    assert req["hostname"].startswith("rs1@") and req["delivery_info"]["redelivered"] is False
    assert runs(broker, r.id) == [], "the Python worker must not have run it"
    assert f"celeriac.test.request[{r.id}] succeeded" not in other.log()
    assert holder.log().count(f"celeriac.test.request[{r.id}] succeeded") == 1
    assert "restored" not in py.log().lower() or r.id not in py.log()


def test_control_python_celery_runs_a_long_eta_task_twice(app, broker, start_python_worker):
    """The flaw the previous test guards against, shown with Python workers only: this is what
    makes that test able to fail."""
    start_python_worker(vt=2)
    r = app.send_task("celeriac.test.request", countdown=6)
    wait_for(lambda: broker.hlen("unacked") == 1, what="the ETA message held")
    time.sleep(3)
    start_python_worker(vt=2)  # restores the stale entry at start, then runs it too
    wait_for(lambda: len(runs(broker, r.id)) == 2, timeout=15, what="the second run")
