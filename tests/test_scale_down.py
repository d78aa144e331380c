"""The scale-down drill of issue 7: what an HPA scale-down does to a worker pod.

200 tasks of 1 s are queued for two workers; one gets SIGTERM while both are busy. Every task
must complete exactly once (started once, succeeded once, across both workers' logs), the
stopped worker's unstarted messages must go straight back to the queue for the other (none
waits out the visibility timeout), and the stopped worker exits 0 after its running tasks end.
Run with `-s` to see how long the drain took."""

import collections
import re
import signal
import time

import pytest

from support import meta, wait_for

pytestmark = pytest.mark.once

TASKS = 200


def done(backend, ids):
    return sum(1 for i in ids if (meta(backend, i) or {}).get("status") == "SUCCESS")


def test_sigterm_to_one_of_two_busy_workers_loses_and_repeats_nothing(app, broker, backend, start_worker):
    ids = [app.send_task("celeriac.test.sleep", args=[1]).id for _ in range(TASKS)]
    common = ("--concurrency", "10", "--visibility-timeout", "3600", "--shutdown-timeout", "25")
    leaving = start_worker(*common, loglevel="DEBUG")
    staying = start_worker(*common, loglevel="DEBUG")
    wait_for(lambda: done(backend, ids) >= 40, timeout=30, what="both workers to be busy")
    held = broker.hlen("unacked")
    began = time.monotonic()
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(timeout=60) == 0
    drain = time.monotonic() - began
    wait_for(lambda: done(backend, ids) == TASKS, timeout=60, interval=0.2,
             what="every task to complete after the scale-down")
    finished = time.monotonic() - began
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, what="nothing left unacked")
    assert broker.llen("celery") == 0

    started, succeeded = collections.Counter(), collections.Counter()
    for w in (leaving, staying):
        log = w.log()
        started.update(re.findall(r"Task celeriac\.test\.sleep\[([0-9a-f-]+)\] started", log))
        succeeded.update(re.findall(r"Task celeriac\.test\.sleep\[([0-9a-f-]+)\] succeeded", log))
    assert set(started) == set(ids) and set(succeeded) == set(ids)
    twice = [i for i in ids if started[i] != 1 or succeeded[i] != 1]
    assert not twice, f"{len(twice)} tasks ran more or less than once, e.g. {twice[:3]}"
    handed_back = re.search(r"shutting down: .*\((\d+) messages held\)", leaving.log())
    assert handed_back, leaving.log()[-2000:]
    # A running 1 s task is all the stopped worker waits for.
    assert drain < 25, f"the drain took {drain:.1f}s"
    print(f"\nscale-down drill: {held} messages unacked across both workers at SIGTERM; the stopped worker "
          f"held {handed_back[1]} and exited 0 after {drain:.2f}s; all {TASKS} tasks done "
          f"{finished:.1f}s after SIGTERM, each started and succeeded exactly once")
