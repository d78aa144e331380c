"""Connection loss: the worker reconnects with backoff and resumes consuming (a Python worker
can stay connected yet silent after a broker reconnect), and nothing is lost meanwhile."""

import json
import time

import redis

from support import wait_for


def results(backend, ids):
    try:
        done = 0
        for i in range(0, len(ids), 500):
            keys = [f"celery-task-meta-{t}" for t in ids[i:i + 500]]
            done += sum(1 for v in backend.mget(keys) if v and json.loads(v)["status"] == "SUCCESS")
        return done
    except redis.exceptions.ConnectionError:
        return 0


def test_redis_killed_and_restarted_under_load(app, redis_server, broker, backend, start_worker):
    ids = [app.send_task("celeriac.test.sleep", args=[0.01]).id for _ in range(600)]
    w = start_worker("--concurrency", "4")
    wait_for(lambda: results(backend, ids) >= 60, timeout=30, what="the load to be under way")
    assert broker.llen("celery") > 100, "messages must still be queued when Redis dies"
    redis_server.proc.kill()  # SIGKILL: no goodbye; the append-only file has every acknowledged write
    redis_server.proc.wait()
    time.sleep(2)
    redis_server.start()
    try:
        wait_for(lambda: results(backend, ids) == len(ids), timeout=60, what="every task done after the restart")
    except AssertionError as e:
        state = (f"{results(backend, ids)}/{len(ids)} done, {broker.llen('celery')} queued, "
                 f"{broker.hlen('unacked')} unacked, worker exit code {w.proc.poll()}")
        raise AssertionError(f"{e}: {state}") from None
    w.wait_log("consuming again")
    # Nothing left behind, nothing run that should not have been, and the worker still consumes.
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, what="all acked")
    assert broker.llen("celery") == 0
    assert app.send_task("celeriac.test.add", args=[2, 2]).get(timeout=10) == 4
    assert w.proc.poll() is None


def test_dropped_connections_are_re_established(app, redis_server, broker, start_worker):
    w = start_worker()
    assert app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=5) == 2
    for _ in range(3):
        broker.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        time.sleep(0.3)
    assert app.send_task("celeriac.test.add", args=[2, 3]).get(timeout=10) == 5
    assert w.proc.poll() is None


def test_worker_started_before_redis_waits_for_it(app, redis_server, start_worker):
    redis_server.stop()
    w = start_worker(ready=False)
    w.wait_log(r"cannot connect; retrying", timeout=10)
    redis_server.start()
    w.wait_ready(timeout=15)
    assert app.send_task("celeriac.test.add", args=[3, 4]).get(timeout=10) == 7
