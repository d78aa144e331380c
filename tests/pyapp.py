"""Python Celery versions of the celeriac.test.* tasks, for tests where a real Python worker
shares queues with celeriac-worker. Every run is recorded in the Redis list `runs:<task id>`,
so a test can count how many times (and where) a task ran.

PYAPP_RESULT_BACKEND=django-db replaces the Redis backend of PYAPP_BACKEND with
django-celery-results' (Django set up from tests/djangoresults, its database from
CELERIAC_DJANGO_DB_URL); PYAPP_RESULT_EXTENDED=1 and PYAPP_TRACK_STARTED=1 turn on Celery's
result_extended and task_track_started."""

import os
import socket
import time

import redis
from celery import Celery

_backend = os.environ.get("PYAPP_RESULT_BACKEND") or os.environ.get("PYAPP_BACKEND")
if _backend == "django-db":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoresults.settings")
    import django

    django.setup()

app = Celery("pyapp", broker=os.environ["PYAPP_BROKER"], backend=_backend)
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ.get("PYAPP_VT", "3600"))},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    result_extended=os.environ.get("PYAPP_RESULT_EXTENDED") == "1",
    task_track_started=os.environ.get("PYAPP_TRACK_STARTED") == "1",
)
_runs = redis.Redis.from_url(os.environ["PYAPP_BROKER"])


def _record(task):
    _runs.rpush(f"runs:{task.request.id}", f"python@{socket.gethostname()}:{os.getpid()}")


@app.task(name="celeriac.test.add", bind=True)
def add(self, x, y):
    _record(self)
    return x + y


@app.task(name="celeriac.test.echo", bind=True)
def echo(self, *args, **kwargs):
    _record(self)
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="celeriac.test.fail", bind=True)
def fail(self, message):
    _record(self)
    raise ValueError(message if isinstance(message, str) else str(message))


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
