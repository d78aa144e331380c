"""A user's own worker binary (the README's example, worker/examples/custom_worker.rs) with its
resources: a handler reaches the state it was given at startup and the MySQL pool the worker
builds from DATABASE_URL; without DATABASE_URL, the task that needs the pool is named at startup
and fails with the reason, stored as Python's RuntimeError, while the worker carries on."""

import os
import signal

import pytest

from support import EXAMPLE_WORKER_BIN


@pytest.fixture
def example_worker(start_worker):
    if not os.path.exists(EXAMPLE_WORKER_BIN):
        pytest.exit(f"{EXAMPLE_WORKER_BIN} is missing: scripts/test.sh builds it", returncode=2)

    def start(env=None):
        env = dict(env or {})
        env.setdefault("DATABASE_URL", "")
        return start_worker("-Q", "media", binary=EXAMPLE_WORKER_BIN, env=env)

    return start


def test_a_handler_reaches_its_resource_and_a_missing_one_fails_with_the_reason(app, example_worker):
    worker = example_worker()
    log = worker.log()
    assert "task reports.tasks.count_since is unavailable on this worker" in log
    assert "DATABASE_URL is not set" in log
    ok = app.send_task("media.tasks.thumbnail", args=[42, 320], queue="media")
    assert ok.get(timeout=10) == "thumbs/42-320-q85.jpg"
    missing = app.send_task("reports.tasks.count_since", args=[30], queue="media")
    with pytest.raises(RuntimeError, match="Pool<MySql> is unavailable: DATABASE_URL is not set"):
        missing.get(timeout=10)
    assert missing.state == "FAILURE"
    after = app.send_task("media.tasks.thumbnail", kwargs={"image_id": 1, "width": 64, "quality": 90},
                          queue="media")
    assert after.get(timeout=10) == "thumbs/1-64-q90.jpg"


@pytest.mark.once
def test_the_mysql_pool_comes_from_database_url(app, example_worker, mariadb_server):
    mariadb_server.create_database("celeriac_pool")
    worker = example_worker({"DATABASE_URL": mariadb_server.url("celeriac_pool"),
                             "CELERIAC_DATABASE_POOL_SIZE": "2"})
    assert "MySQL pool: mysql://root@127.0.0.1" in worker.log()
    assert "up to 2 connections" in worker.log()
    assert "unavailable on this worker" not in worker.log()
    count = app.send_task("reports.tasks.count_since", args=[30], queue="media").get(timeout=15)
    assert isinstance(count, int) and count >= 0


@pytest.mark.once
def test_a_database_password_never_reaches_the_log(example_worker, mariadb_server):
    url = mariadb_server.url("celeriac_pool").replace("://root@", "://root:s3cretpw@")
    worker = example_worker({"DATABASE_URL": url})
    worker.signal(signal.SIGTERM)
    worker.wait(10)
    assert "mysql://root:***@" in worker.log()
    assert "s3cretpw" not in worker.log()


def test_a_bad_pool_size_is_a_startup_error(start_worker):
    worker = start_worker("-Q", "media", binary=EXAMPLE_WORKER_BIN, ready=False,
                          env={"DATABASE_URL": "mysql://u@127.0.0.1:1/db", "CELERIAC_DATABASE_POOL_SIZE": "0"})
    assert worker.wait(10) == 2
    assert "CELERIAC_DATABASE_POOL_SIZE" in worker.log()
