"""The Python Celery side of scripts/bench.sh: a plain Celery app with the benchmark's task.

Run by the benchmark as `celery -A benchapp worker ...` from this folder. The broker and the
result backend come from BENCH_BROKER_URL and BENCH_RESULT_BACKEND (not Celery's own
CELERY_* variables, which Celery reads behind the app's back and which the benchmark scrubs).
Everything else is Celery's defaults, so the Python worker is measured as people run it.
"""

import os

from celery import Celery

app = Celery(
    "benchapp",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_RESULT_BACKEND") or None,
)


@app.task(name="celeriac.test.add")
def add(x, y):
    return x + y
