"""Fixtures of the interop suite: a private Redis per test session, real Python Celery as the
client (and sometimes as a second worker), and the celeriac-worker binary under test.

Every test starts from empty Redis databases. The Redis server is this suite's own (a free
loopback port, append-only file on), so the suite never touches a Redis the user runs and can
restart its server without losing queued messages. Helpers live in `support.py`.
"""

import atexit
import os
import shutil
import sys

import pytest

from support import (BEAT_BIN, EXAMPLE_WORKER_BIN, ROOT, WORKER_BIN, CeleriacBeat, CeleriacWorker, PythonWorker,
                     RedisServer, make_app)

# The benchmark lives beside the suite but is a script, not tests.
collect_ignore = ["bench"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the end of every worker log it started."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for w in getattr(item, "worker_processes", []):
            report.sections.append((f"log {w.log_path.name}", w.log()[-6000:]))


def pytest_collection_modifyitems(config, items):
    """Tests marked `once` do not depend on the Python Celery version: the compatibility pass
    (CELERIAC_COMPAT_PASS=1, set by scripts/test.sh) skips them."""
    if os.environ.get("CELERIAC_COMPAT_PASS"):
        skip = pytest.mark.skip(reason="runs in the main pass only")
        for item in items:
            if "once" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.exit("redis-server is not installed (scripts/test.sh installs it)", returncode=2)
    if not os.path.exists(WORKER_BIN):
        pytest.exit(f"{WORKER_BIN} is missing: run scripts/test.sh, which builds it", returncode=2)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    # Stopped at interpreter exit, not now: pytest's final garbage collection drops the last
    # AsyncResult objects, whose finalizers unsubscribe from Redis and would otherwise retry a
    # stopped server for a long time.
    atexit.register(server.stop)


@pytest.fixture(autouse=True)
def _clean_redis(redis_server):
    if redis_server.proc.poll() is not None:  # a test stopped it
        redis_server.start()
    redis_server.client().flushall()
    yield


@pytest.fixture
def broker(redis_server):
    return redis_server.client(0)


@pytest.fixture
def backend(redis_server):
    return redis_server.client(1)


@pytest.fixture
def app(redis_server):
    app = make_app(redis_server)
    yield app
    app.close()


def _register(request, proc):
    """Remembers a worker on the test item, for the failure report."""
    request.node.__dict__.setdefault("worker_processes", []).append(proc)


@pytest.fixture
def start_worker(redis_server, tmp_path, request):
    """Starts celeriac-worker: start_worker("-Q", "default", ...) -> CeleriacWorker (ready)."""
    started = []

    def start(*args, ready=True, env=None, broker_url=None, backend_url=None, name=None, loglevel="INFO",
              binary=None):
        """backend_url="" runs without a result backend; `binary` replaces celeriac-worker."""
        n = len(started) + 1
        argv = [binary or WORKER_BIN,
                "--broker", broker_url or redis_server.url(0),
                "--result-backend", redis_server.url(1) if backend_url is None else backend_url,
                "--hostname", name or f"rs{n}@%h",
                "--loglevel", loglevel, *args]
        full_env = dict(os.environ, **(env or {}))
        w = CeleriacWorker(argv, tmp_path / f"celeriac-{n}.log", env=full_env).start()
        started.append(w)
        _register(request, w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
def example_worker(start_worker):
    """Starts the README's example binary (examples/custom-worker/src/main.rs) on the `media` queue:
    example_worker({"DATABASE_URL": ...}); DATABASE_URL and the S3 bucket are unset unless given."""
    if not os.path.exists(EXAMPLE_WORKER_BIN):
        pytest.exit(f"{EXAMPLE_WORKER_BIN} is missing: scripts/test.sh builds it", returncode=2)

    def start(env=None):
        env = dict(env or {})
        env.setdefault("DATABASE_URL", "")
        env.setdefault("AWS_STORAGE_BUCKET_NAME", "")
        return start_worker("-Q", "media", binary=EXAMPLE_WORKER_BIN, env=env)

    return start


@pytest.fixture
def start_python_worker(redis_server, tmp_path, request):
    """Starts a real Celery worker running tests/pyapp.py's tasks."""
    started = []

    def start(*args, vt=3600, pool=("--pool", "solo"), ready=True, extra_env=None):
        n = len(started) + 1
        env = dict(os.environ, PYAPP_BROKER=redis_server.url(0), PYAPP_BACKEND=redis_server.url(1),
                   PYAPP_VT=str(vt), PYTHONPATH=str(ROOT / "tests"), **(extra_env or {}))
        argv = [sys.executable, "-m", "celery", "-A", "pyapp", "worker", *pool, "-n", f"py{n}@%h",
                "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "INFO", *args]
        w = PythonWorker(argv, tmp_path / f"python-{n}.log", env=env, cwd=str(ROOT / "tests")).start()
        started.append(w)
        _register(request, w)
        if ready:
            w.wait_ready(timeout=30)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
def start_beat(redis_server, tmp_path, request):
    """Starts celeriac-beat on a schedule file's text: start_beat(toml, "--lease-ttl", "2")."""
    if not os.path.exists(BEAT_BIN):
        pytest.exit(f"{BEAT_BIN} is missing: run scripts/test.sh, which builds it", returncode=2)
    started = []

    def start(schedule, *args, broker_url=None, ready=True, env=None, loglevel="INFO", schedule_file=True):
        """schedule_file=False passes no --schedule (the source is then in `args`)."""
        n = len(started) + 1
        source = []
        if schedule_file:
            path = tmp_path / f"schedule-{n}.toml"
            path.write_text(schedule)
            source = ["--schedule", str(path)]
        argv = [BEAT_BIN, "--broker", broker_url or redis_server.url(0), *source,
                "--loglevel", loglevel, *args]
        b = CeleriacBeat(argv, tmp_path / f"beat-{n}.log", env=dict(os.environ, **(env or {}))).start()
        started.append(b)
        _register(request, b)
        if ready:
            b.wait_ready()
        return b

    yield start
    for b in started:
        b.kill()


# django-celery-beat databases for celeriac-beat's --django-db (tests/dbservers.py, tests/django_support.py).
def _db_server(kind, tmp_path_factory, **kwargs):
    from dbservers import MariaDBServer, PostgresServer

    cls = {"mariadb": MariaDBServer, "postgres": PostgresServer}[kind]
    if cls.missing():
        pytest.fail(f"{cls.missing()}: scripts/test.sh installs it (ensure_db_tools)", pytrace=False)
    return cls(tmp_path_factory.mktemp(kind), **kwargs).start()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory):
    server = _db_server("mariadb", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_tls_server(tmp_path_factory):
    """A second private MariaDB that refuses TCP clients without TLS; `.tls.ca` is the CA of its
    certificate (for localhost and 127.0.0.1), `.tls.other_ca` an unrelated CA."""
    from dbservers import make_test_pki

    pki = make_test_pki(tmp_path_factory.mktemp("pki"))
    server = _db_server("mariadb", tmp_path_factory, tls=pki)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = _db_server("postgres", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(params=["mariadb", "postgres"])
def django_beat_db(request, tmp_path):
    """A fresh, migrated django-celery-beat database -> DjangoBeatDB (.url for --django-db, .orm(code))."""
    from django_support import new_django_beat_db

    server = request.getfixturevalue(f"{request.param}_server")
    db, name = new_django_beat_db(server, request.param, tmp_path)
    _register(request, db)
    yield db
    db.close()
    server.drop_database(name)
