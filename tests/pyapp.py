"""Python Celery versions of the celeriac.test.* tasks, for tests where a real Python worker
shares queues with celeriac-worker. Every run is recorded in the Redis list `runs:<task id>`,
so a test can count how many times (and where) a task ran."""

import os
import socket
import time

import redis
from celery import Celery

app = Celery("pyapp", broker=os.environ["PYAPP_BROKER"], backend=os.environ.get("PYAPP_BACKEND"))
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ.get("PYAPP_VT", "3600"))},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)
_runs = redis.Redis.from_url(os.environ["PYAPP_BROKER"])


def _record(task):
    _runs.rpush(f"runs:{task.request.id}", f"python@{socket.gethostname()}:{os.getpid()}")


@app.task(name="celeriac.test.add", bind=True)
def add(self, x, y):
    _record(self)
    return x + y


@app.task(name="celeriac.test.sleep", bind=True)
def sleep(self, seconds):
    _record(self)
    time.sleep(seconds)
    return seconds


@app.task(name="celeriac.test.request", bind=True)
def request(self):
    _record(self)
    r = self.request
    return {"id": r.id, "retries": r.retries, "root_id": r.root_id, "parent_id": r.parent_id,
            "group": r.group, "hostname": r.hostname, "delivery_info": r.delivery_info,
            "eta": r.eta, "expires": r.expires, "ran_by": "python"}


@app.task(name="celeriac.test.retry", bind=True, max_retries=None)
def retry(self, times, countdown=0.1, max_retries=None):
    _record(self)
    if self.request.retries < times:
        raise self.retry(countdown=countdown, max_retries=max_retries)
    return {"retries": self.request.retries, "ran_by": "python", "parent_id": self.request.parent_id,
            "root_id": self.request.root_id, "eta": self.request.eta}
