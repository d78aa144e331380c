"""Tasks sent by Python Celery run on celeriac-worker, and their results (values, failures,
states) read back through `AsyncResult` exactly as if a Python worker had stored them."""

import time

import celery.exceptions
import pytest

from support import meta, wait_for


def test_the_quickstart_call(app, start_worker):
    start_worker("--queues", "default,media", "--concurrency", "8")
    r = app.send_task("celeriac.test.add", args=[2, 3], queue="default")
    assert r.get(timeout=5) == 5


def test_test_tasks_return_what_python_would(app, start_worker):
    start_worker()
    assert app.send_task("celeriac.test.add", args=[2.5, 3]).get(timeout=5) == 5.5
    assert app.send_task("celeriac.test.add", kwargs={"x": 1, "y": 2}).get(timeout=5) == 3
    assert app.send_task("celeriac.test.add", args=[1], kwargs={"y": 41}).get(timeout=5) == 42
    assert app.send_task("celeriac.test.mul", args=[6, 7]).get(timeout=5) == 42
    assert app.send_task("celeriac.test.xsum", args=[[1, 2, 3.5]]).get(timeout=5) == 6.5
    echoed = app.send_task("celeriac.test.echo", args=[1, "two", None], kwargs={"k": {"n": [1]}}).get(timeout=5)
    assert echoed == {"args": [1, "two", None], "kwargs": {"k": {"n": [1]}}}
    assert app.send_task("celeriac.test.sleep", args=[0.2]).get(timeout=5) == 0.2


def test_success_record_has_celerys_layout_and_ttl(app, backend, start_worker):
    start_worker()
    r = app.send_task("celeriac.test.add", args=[2, 3])
    r.get(timeout=5)
    rec = meta(backend, r.id)
    assert list(rec) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert rec["status"] == "SUCCESS" and rec["result"] == 5 and rec["traceback"] is None
    assert rec["children"] == [] and rec["task_id"] == r.id
    assert rec["date_done"].endswith("+00:00")
    ttl = backend.ttl(f"celery-task-meta-{r.id}")
    assert 86390 <= ttl <= 86400, ttl
    assert r.state == "SUCCESS" and r.successful()


def test_result_expiry_is_configurable(app, backend, start_worker):
    start_worker("--result-expires", "120")
    r = app.send_task("celeriac.test.add", args=[1, 1])
    r.get(timeout=5)
    assert 100 <= backend.ttl(f"celery-task-meta-{r.id}") <= 120
    r.forget()


def test_result_without_expiry(app, backend, start_worker):
    start_worker("--result-expires", "0")
    r = app.send_task("celeriac.test.add", args=[1, 1])
    r.get(timeout=5)
    assert backend.ttl(f"celery-task-meta-{r.id}") == -1


def test_failure_raises_the_python_exception_type(app, backend, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.fail", args=["bad value"])
    with pytest.raises(ValueError, match="bad value"):
        r.get(timeout=5)
    rec = meta(backend, r.id)
    assert rec["status"] == "FAILURE"
    assert rec["result"] == {"exc_type": "ValueError", "exc_message": ["bad value"], "exc_module": "builtins"}
    assert "ValueError: bad value" in rec["traceback"]
    assert r.traceback and "ValueError: bad value" in r.traceback
    assert "raised unexpected: ValueError: bad value" in w.log()


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ([1], {}, "missing 1 required positional argument: 'y'"),
        ([1, 2, 3], {}, "takes 2 positional arguments but 3 were given"),
        ([1, 2], {"z": 5}, "got an unexpected keyword argument 'z'"),
        ([1], {"x": 2}, "got multiple values for argument 'x'"),
    ],
)
def test_wrong_arguments_fail_with_type_error(app, start_worker, args, kwargs, message):
    start_worker()
    with pytest.raises(TypeError, match=message):
        app.send_task("celeriac.test.add", args=args, kwargs=kwargs).get(timeout=5)


def test_unknown_task_is_not_registered_and_the_worker_carries_on(app, broker, backend, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.nope", args=[1])
    with pytest.raises(celery.exceptions.NotRegistered):
        r.get(timeout=5)
    rec = meta(backend, r.id)
    assert rec["result"] == {"exc_type": "NotRegistered", "exc_message": ["celeriac.test.nope"],
                             "exc_module": "celery.exceptions"}
    assert rec["traceback"] is None
    assert "unregistered task of type 'celeriac.test.nope'" in w.log()
    # Discarded: not requeued, not left unacked; and the next task runs.
    assert broker.llen("celery") == 0
    assert app.send_task("celeriac.test.add", args=[1, 2]).get(timeout=5) == 3
    wait_for(lambda: broker.hlen("unacked") == 0, what="acks")


def test_ignore_result_stores_nothing(app, backend, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.add", args=[1, 2], ignore_result=True)
    marker = app.send_task("celeriac.test.add", args=[3, 4])
    assert marker.get(timeout=5) == 7
    w.wait_log(rf"celeriac.test.add\[{r.id}\] succeeded")
    assert backend.exists(f"celery-task-meta-{r.id}") == 0


def test_no_result_backend_means_no_results(app, broker, backend, start_worker):
    w = start_worker(backend_url="")
    r = app.send_task("celeriac.test.add", args=[1, 2])
    w.wait_log(rf"celeriac.test.add\[{r.id}\] succeeded")
    wait_for(lambda: broker.hlen("unacked") == 0, what="the ack")
    assert backend.dbsize() == 0
    assert "results disabled" in w.log()


def test_started_state_is_stored_while_the_task_runs(app, backend, start_worker):
    start_worker("--task-track-started")
    r = app.send_task("celeriac.test.sleep", args=[1.5])
    wait_for(lambda: r.state == "STARTED", timeout=5, what="STARTED")
    rec = meta(backend, r.id)
    assert rec["result"]["hostname"].startswith("rs1@")
    assert isinstance(rec["result"]["pid"], int) and rec["date_done"] is None
    assert r.get(timeout=5) == 1.5


def test_started_state_is_off_by_default(app, backend, start_worker):
    start_worker()
    r = app.send_task("celeriac.test.sleep", args=[0.8])
    time.sleep(0.4)
    assert r.state == "PENDING"
    assert r.get(timeout=5) == 0.8


def test_request_fields(app, start_worker):
    start_worker("-Q", "default")
    r = app.send_task("celeriac.test.request", queue="default", priority=3, expires=60)
    req = r.get(timeout=5)
    assert req["id"] == r.id and req["root_id"] == r.id
    assert req["retries"] == 0 and req["parent_id"] is None and req["group"] is None
    assert req["hostname"].startswith("rs1@")
    assert req["delivery_info"] == {"exchange": "", "routing_key": "default", "priority": 3, "redelivered": False}
    assert req["eta"] is None and req["expires"].endswith("+00:00")


def test_canvas_is_not_silently_dropped(app, start_worker):
    """Callbacks and chains are not run yet: the task runs and the log says what was skipped."""
    w = start_worker()
    r = app.send_task("celeriac.test.add", args=[1, 1], link=app.signature("celeriac.test.echo"))
    assert r.get(timeout=5) == 2
    assert f"celeriac.test.add[{r.id}] carries link which celeriac does not run yet" in w.log()


def test_group_members_run_and_carry_their_group_id(app, backend, start_worker):
    """A group needs nothing from the worker but the group id in each record."""
    from celery import group

    start_worker()
    g = group(app.signature("celeriac.test.add", (i, i)) for i in range(5)).apply_async()
    assert g.get(timeout=10) == [0, 2, 4, 6, 8]
    assert {meta(backend, r.id)["group_id"] for r in g.results} == {g.id}
