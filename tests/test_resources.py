"""A user's own worker binary (the README's example, examples/custom-worker/src/main.rs) with its
resources: a handler reaches the state it was given at startup, the MySQL pool the worker builds
from DATABASE_URL, and the S3 storage it builds from django-storages' settings (against the moto
server); without them, the tasks that need them are named at startup and fail with the reason,
stored as Python's RuntimeError, while the worker carries on."""

import pathlib
import signal

import pytest

from support import EXAMPLE_WORKER_BIN


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
    assert "task reports.tasks.count_since is unavailable" not in worker.log()
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


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """The moto server from PyPI on a free loopback port, as the S3 of these tests."""
    import shutil
    import subprocess
    import sys

    import requests

    from support import free_port, wait_for

    exe = shutil.which("moto_server") or str(pathlib.Path(sys.executable).parent / "moto_server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)

    def answers():
        try:
            return requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code < 500
        except requests.RequestException:
            return False

    try:
        wait_for(answers, timeout=30, what="the moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_S3_REGION_NAME": "us-east-1", "AWS_STORAGE_BUCKET_NAME": "media-test",
          "AWS_LOCATION": "site/media/", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.once
def test_the_storage_comes_from_django_storages_settings(app, example_worker, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="media-test")
    worker = example_worker(dict(S3_ENV, AWS_S3_ENDPOINT_URL=s3_server))
    assert f"S3 bucket media-test, prefix site/media/, endpoint {s3_server}" in worker.log()
    out = app.send_task("media.tasks.store_text", args=["notes/hello.txt", "hello, S3"],
                        queue="media").get(timeout=20)
    assert out == {"key": "site/media/notes/hello.txt", "size": 9}
    obj = s3.get_object(Bucket="media-test", Key="site/media/notes/hello.txt")
    assert obj["Body"].read() == b"hello, S3" and obj["ContentType"] == "text/plain"


def test_without_a_bucket_the_storage_task_fails_with_the_reason(app, example_worker):
    worker = example_worker({"AWS_STORAGE_BUCKET_NAME": ""})
    assert "task media.tasks.store_text is unavailable on this worker" in worker.log()
    r = app.send_task("media.tasks.store_text", args=["a.txt", "x"], queue="media")
    with pytest.raises(RuntimeError, match="Storage is unavailable: AWS_STORAGE_BUCKET_NAME is not set"):
        r.get(timeout=10)


@pytest.mark.once
def test_the_readmes_handler_example_is_the_example_crate():
    """The README's program is examples/custom-worker/src/main.rs, word for word, so what the
    suite builds and runs is what the README shows."""
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Writing your own handlers"):]
    shown = re.search(r"```rust\n(.*?)```", section, re.S).group(1)
    source = (root / "examples" / "custom-worker" / "src" / "main.rs").read_text()
    code = "\n".join(line for line in source.splitlines() if not line.startswith("//!"))
    assert shown.strip() == code.strip()
