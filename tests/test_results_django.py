"""celeriac-worker's `--result-backend django-db`: results in django-celery-results' TaskResult
table, as its DatabaseBackend writes them.

The referee is a real Python Celery worker with CELERY_RESULT_BACKEND = "django-db" on the same
database: both run the same messages and their rows are compared column by column (ids,
timestamps and the worker's name aside), with and without result_extended. Then a Django process
with the django-db backend reads our results with AsyncResult(id).get(), and the Django admin
lists them. The database is a private MariaDB (tests/dbservers.py), migrated once per module
with django-celery-results' real migrations (tests/djangoresults/) and copied for each test.
"""

import datetime
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest

from support import ROOT, WORKER_BIN, make_app, wait_for

TESTS = ROOT / "tests"
TABLE = "django_celery_results_taskresult"
TEMPLATE = f"celeriac_results_template_{os.getpid()}"
HOST = socket.gethostname()

pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(importlib.util.find_spec("django_celery_results") is None,
                       reason="django-celery-results is installed in the Celery 5.7 venv only"),
]


def django_env(url):
    """The environment of a Django process of tests/djangoresults on the database at `url`."""
    return {"CELERIAC_DJANGO_DB_URL": url, "DJANGO_SETTINGS_MODULE": "djangoresults.settings"}


class ResultsDB:
    """A migrated django-celery-results database on the private MariaDB."""

    def __init__(self, server, name):
        self.server, self.name = server, name
        self.url = server.url(name)

    def connect(self):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.server.port, user="root", password="",
                               database=self.name, autocommit=True, connect_timeout=5, charset="utf8mb4",
                               cursorclass=pymysql.cursors.DictCursor)

    def row(self, task_id):
        """The task's row as a dict of columns, or None."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {TABLE} WHERE task_id = %s", (task_id,))
                return cur.fetchone()
        finally:
            conn.close()

    def wait_row(self, task_id, status, timeout=20.0):
        def seen():
            r = self.row(task_id)
            return r if r and r["status"] == status else None

        return wait_for(seen, timeout=timeout, interval=0.02, what=f"{status} row of {task_id}")

    def execute(self, sql):
        return self.server.execute(sql, self.name)


@pytest.fixture(scope="module")
def results_template(mariadb_server):
    """A database migrated by Django (admin, auth, sessions and django-celery-results)."""
    mariadb_server.drop_database(TEMPLATE)
    mariadb_server.create_database(TEMPLATE)
    out = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=TESTS,
                         env=dict(os.environ, PYTHONPATH=str(TESTS), **django_env(mariadb_server.url(TEMPLATE))),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    yield TEMPLATE
    mariadb_server.drop_database(TEMPLATE)


@pytest.fixture
def results_db(mariadb_server, results_template):
    name = f"results_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    mariadb_server.clone_database(results_template, name)
    yield ResultsDB(mariadb_server, name)
    mariadb_server.drop_database(name)


def start_ours(start_worker, url, *args, extended=False, env=None):
    flags = ["--task-track-started", *(["--result-extended"] if extended else []), *args]
    return start_worker("-Q", "rs", *flags, backend_url="django-db", env={"DATABASE_URL": url, **(env or {})})


def django_check(url, request, extended=True):
    """Runs tests/djangoresults/check.py (a Django process with the django-db backend)."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), CELERY_RESULT_EXTENDED="1" if extended else "0",
               **django_env(url))
    out = subprocess.run([sys.executable, "-m", "djangoresults.check"], cwd=TESTS, env=env,
                         input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def comparable(row, task_id, worker):
    """A row with what legitimately differs between two workers replaced: the task id (also in
    meta's children), the worker's name and pid, the traceback's text, the timestamps' values."""
    out = {}
    for k, v in row.items():
        if k == "id":
            continue
        if k.startswith("date_"):
            out[k] = "set" if v is not None else None
            continue
        if isinstance(v, str):
            v = v.replace(task_id, "<task id>").replace(worker, "<worker>")
        out[k] = v
    if out["traceback"] is not None:
        out["traceback"] = "<traceback>"
    if out["status"] == "STARTED":
        out["result"] = re.sub(r'"pid": \d+', '"pid": 0', out["result"])
    return out


def check_times(row, started):
    """Our timestamps: UTC, now, in order; date_started exactly when STARTED was stored."""
    now = utcnow()
    assert abs((row["date_done"] - now).total_seconds()) < 60, (row["date_done"], now)
    assert row["date_created"] <= row["date_done"]
    if started:
        assert row["date_started"] is not None
        assert row["date_created"] <= row["date_started"] <= row["date_done"]
    else:
        assert row["date_started"] is None


@pytest.mark.parametrize("extended", [False, True], ids=["basic", "result_extended"])
def test_rows_match_a_python_workers_column_by_column(app, redis_server, start_worker, start_python_worker,
                                                      results_db, extended):
    py = start_python_worker("-Q", "py", ready=False, extra_env={
        **django_env(results_db.url), "PYAPP_RESULT_BACKEND": "django-db",
        "PYAPP_RESULT_EXTENDED": "1" if extended else "0", "PYAPP_TRACK_STARTED": "1"})
    start_ours(start_worker, results_db.url, extended=extended)
    py.wait_ready(timeout=30)
    workers = {"py": f"py1@{HOST}", "rs": f"rs1@{HOST}"}
    v1 = make_app(redis_server, task_protocol=1)
    cases = {
        # name: (app, send_task arguments, final state, compare the result column)
        "sleep": (app, dict(name="celeriac.test.sleep", args=[2.0]), "SUCCESS", True),
        "add": (app, dict(name="celeriac.test.add", args=[2, 3]), "SUCCESS", True),
        "kwargs": (app, dict(name="celeriac.test.add", kwargs={"x": 2, "y": 3}), "SUCCESS", True),
        "fail": (app, dict(name="celeriac.test.fail", args=["boom \u2603"]), "FAILURE", True),
        "echo": (app, dict(name="celeriac.test.echo", args=["h\u00e9llo \U0001F600", 1.5, None],
                           kwargs={"k": [True, {"n": 7}]}, headers={"periodic_task_name": "nightly report"}),
                 "SUCCESS", True),
        # Its retry waits a minute: the row stays RETRY.
        "retrying": (app, dict(name="celeriac.test.retry", args=[1], kwargs={"countdown": 60}), "RETRY", True),
        # Retried once, then SUCCESS (the two task bodies return different values).
        "retried": (app, dict(name="celeriac.test.retry", args=[1], kwargs={"countdown": 0.1}), "SUCCESS", False),
        "unregistered": (app, dict(name="celeriac.test.nope", args=[1]), "FAILURE", True),
        "protocol1": (v1, dict(name="celeriac.test.add", args=[4, 5]), "SUCCESS", True),
    }
    ids = {}

    def send(case):
        a, kw, _, _ = cases[case]
        ids[case] = {q: a.send_task(queue=q, **kw).id for q in workers}

    # STARTED, while the sleep runs on each (watched together: they need not overlap).
    send("sleep")
    started = {}

    def both_started():
        for q in workers:
            row = results_db.row(ids["sleep"][q])
            if q not in started and row and row["status"] == "STARTED":
                started[q] = row
        return len(started) == len(workers)

    wait_for(both_started, timeout=20, interval=0.02, what="STARTED rows of the sleeps")
    assert comparable(started["rs"], ids["sleep"]["rs"], workers["rs"]) == \
        comparable(started["py"], ids["sleep"]["py"], workers["py"])
    assert started["rs"]["date_started"] is not None
    assert json.loads(started["rs"]["result"])["hostname"] == workers["rs"]

    for case in cases:
        if case != "sleep":
            send(case)
    for case, (_, _, state, same_result) in cases.items():
        rows = {q: results_db.wait_row(ids[case][q], state) for q in workers}
        ours = comparable(rows["rs"], ids[case]["rs"], workers["rs"])
        theirs = comparable(rows["py"], ids[case]["py"], workers["py"])
        if not same_result:
            ours.pop("result"), theirs.pop("result")
        assert ours == theirs, case
        check_times(rows["rs"], started=case != "unregistered")
        assert rows["rs"]["worker"] == (workers["rs"] if extended and case != "unregistered" else None), case

    # The extended columns themselves, as a Django user sees them.
    echo = results_db.row(ids["echo"]["rs"])
    if extended:
        assert echo["task_name"] == "celeriac.test.echo"
        assert json.loads(echo["task_args"]) == "['h\u00e9llo \U0001F600', 1.5, None]"
        assert echo["periodic_task_name"] == "nightly report"
        assert json.loads(results_db.row(ids["protocol1"]["rs"])["task_args"]) == [4, 5]
        assert "ValueError" in results_db.row(ids["fail"]["rs"])["traceback"]
    else:
        assert (echo["task_name"], echo["task_args"], echo["periodic_task_name"]) == (None, None, None)
    assert echo["result"] == ('{"args": ["h\\u00e9llo \\ud83d\\ude00", 1.5, null], '
                              '"kwargs": {"k": [true, {"n": 7}]}}')


def test_a_django_app_reads_our_results_and_its_admin_lists_them(app, start_worker, results_db):
    start_ours(start_worker, results_db.url, extended=True)
    send = lambda name, *args, **kwargs: app.send_task(name, args=args, kwargs=kwargs, queue="rs").id  # noqa: E731
    ids = {
        "add": send("celeriac.test.add", 2, 3),
        "fail": send("celeriac.test.fail", "boom"),
        "unregistered": send("celeriac.test.nope"),
        "running": send("celeriac.test.sleep", 30),
        "retrying": send("celeriac.test.retry", 1, countdown=60),
    }
    for case, state in [("add", "SUCCESS"), ("fail", "FAILURE"), ("unregistered", "FAILURE"),
                        ("running", "STARTED"), ("retrying", "RETRY")]:
        results_db.wait_row(ids[case], state)

    seen = django_check(results_db.url, {"get": [ids["add"], ids["fail"], ids["unregistered"]],
                                         "state": [ids["running"], ids["retrying"]],
                                         "admin": list(ids.values())})
    assert seen["backend"] == "django_celery_results.backends.database.DatabaseBackend"
    assert seen["get"][ids["add"]] == {"state": "SUCCESS", "value": 5}
    assert seen["get"][ids["fail"]] == {"state": "FAILURE", "raised": "ValueError", "module": "builtins",
                                        "args": ["boom"]}
    assert seen["get"][ids["unregistered"]] == {"state": "FAILURE", "raised": "NotRegistered",
                                                "module": "celery.exceptions", "args": ["celeriac.test.nope"]}
    assert seen["state"] == {ids["running"]: "STARTED", ids["retrying"]: "RETRY"}
    assert seen["changelist"] == {"status": 200, "listed": list(ids.values())}
    for task_id in ids.values():
        assert seen["change"][task_id] == {"status": 200, "has_id": True, "has_status": True}, task_id


def test_results_wait_unacked_while_the_database_is_down(app, broker, start_worker, results_db, mariadb_server):
    user, password = f"cr_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    results_db.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    results_db.execute(f"GRANT ALL ON `{results_db.name}`.* TO '{user}'@'%'")
    url = f"mysql://{user}:{password}@127.0.0.1:{mariadb_server.port}/{results_db.name}"
    w = start_ours(start_worker, url)
    results_db.wait_row(app.send_task("celeriac.test.add", args=[1, 1], queue="rs").id, "SUCCESS")

    mariadb_server.stop()
    try:
        ids = [app.send_task("celeriac.test.add", args=[i, i], queue="rs").id for i in range(2, 5)]
        w.wait_log(r"storing results failed; retrying", timeout=20)
        wait_for(lambda: broker.llen("rs") == 0 and broker.hlen("unacked") == 3, what="3 messages held")
        time.sleep(1.0)
        assert broker.hlen("unacked") == 3, "acked before the results were stored"
    finally:
        mariadb_server.start()
    for i, task_id in zip(range(2, 5), ids):
        assert results_db.wait_row(task_id, "SUCCESS", timeout=30)["result"] == str(2 * i)
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, what="all acked")
    log = w.log()
    assert password not in log
    assert f"mysql://{user}:***@127.0.0.1" in log


def test_a_row_the_database_refuses_costs_only_that_result(app, broker, start_worker, results_db):
    w = start_ours(start_worker, results_db.url)
    too_long = "x" * 300  # task_id is a VARCHAR(255)
    app.send_task("celeriac.test.add", args=[1, 2], queue="rs", task_id=too_long)
    good = app.send_task("celeriac.test.add", args=[3, 4], queue="rs").id
    assert results_db.wait_row(good, "SUCCESS")["result"] == "7"
    w.wait_log(r"result could not be stored; acking anyway", timeout=20)
    assert re.search(r"Data too long for column 'task_id'", w.log())
    wait_for(lambda: broker.hlen("unacked") == 0, timeout=10, what="both acked")
    assert results_db.row(too_long) is None
    after = app.send_task("celeriac.test.add", args=[5, 6], queue="rs").id
    assert results_db.wait_row(after, "SUCCESS")["result"] == "11"
    assert w.proc.poll() is None


@pytest.mark.parametrize("backend,env,complaint", [
    ("django-db", {"DATABASE_URL": ""}, "DATABASE_URL, which is not set"),
    ("django-db", {"DATABASE_URL": "postgres://u:s3cretpw@db.example/app"}, "is not a mysql:// URL"),
    ("django-cache", {}, "not a backend celeriac has"),
])
def test_unusable_result_backends_stop_the_worker_with_a_clear_message(backend, env, complaint):
    p = subprocess.run([WORKER_BIN, "--result-backend", backend], capture_output=True, text=True, timeout=10,
                       env=dict(os.environ, **env))
    assert p.returncode == 2
    assert complaint in p.stderr
    assert "s3cretpw" not in p.stderr
