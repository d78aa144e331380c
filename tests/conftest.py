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

from support import ROOT, WORKER_BIN, CeleriacWorker, PythonWorker, RedisServer, make_app

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

    def start(*args, ready=True, env=None, broker_url=None, backend_url=None, name=None, loglevel="INFO"):
        """backend_url="" runs without a result backend."""
        n = len(started) + 1
        argv = [WORKER_BIN,
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
