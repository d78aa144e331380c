"""Tasks sent from a Rust handler (`ctx.send_task`, through `celeriac.test.spawn`) are what
Python's `send_task` inside a task sends: a real Python worker runs them and their `link`
callbacks, sees the spawning task as parent and root, honours the countdown, and the priority
picks Kombu's list."""

import datetime
import json
import uuid

from support import meta, wait_for


def queued(broker, key):
    return [json.loads(x) for x in broker.lrange(key, 0, -1)]


def test_a_python_worker_runs_what_a_handler_sends_with_its_link(app, broker, backend, start_worker,
                                                                 start_python_worker):
    start_worker("-Q", "default")
    link_id = str(uuid.uuid4())
    spawner = app.send_task("celeriac.test.spawn", queue="default",
                            kwargs={"task": "celeriac.test.add", "args": [2, 3], "queue": "py",
                                    "link": "celeriac.test.add", "link_args": [10], "link_id": link_id})
    child_id = spawner.get(timeout=10)
    asker = app.send_task("celeriac.test.spawn", queue="default",
                          kwargs={"task": "celeriac.test.request", "queue": "py", "countdown": 1.0})
    asker_child = asker.get(timeout=10)
    late = app.send_task("celeriac.test.spawn", queue="default",
                         kwargs={"task": "celeriac.test.add", "args": [1, 1], "queue": "py", "priority": 6})
    late_child = late.get(timeout=10)

    (env,) = queued(broker, "py\x06\x166")
    assert env["headers"]["id"] == late_child and env["properties"]["priority"] == 6
    by_id = {e["headers"]["id"]: e for e in queued(broker, "py")}
    sent = by_id[asker_child]["headers"]
    eta = datetime.datetime.fromisoformat(sent["eta"])
    assert eta.tzinfo is not None
    assert 0 < (eta - datetime.datetime.now(datetime.timezone.utc)).total_seconds() < 1.5
    assert sent["parent_id"] == asker.id and sent["root_id"] == asker.id
    assert sent["origin"].startswith("gen") and sent["ignore_result"] is None
    assert broker.sismember("_kombu.binding.py", "py\x06\x16\x06\x16py")

    start_python_worker("-Q", "py")
    assert app.AsyncResult(child_id).get(timeout=15) == 5
    assert app.AsyncResult(link_id).get(timeout=15) == 15  # add(5, 10), run by Python as the link
    request = app.AsyncResult(asker_child).get(timeout=15)
    assert request["ran_by"] == "python"
    assert request["parent_id"] == asker.id and request["root_id"] == asker.id
    assert request["eta"] is not None
    assert app.AsyncResult(late_child).get(timeout=15) == 2
    wait_for(lambda: meta(backend, link_id), what="the link's record")
