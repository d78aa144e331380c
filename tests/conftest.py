"""Fixtures of the interop suite: a private Redis per test session, real Python Celery as the
client (and sometimes as a second worker), and the celeriac-worker binary under test.

Every test starts from empty Redis databases. The Redis server is this suite's own (a free
loopback port, append-only file on), so the suite never touches a Redis the user runs and can
restart its server without losing queued messages.
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
from celery import Celery

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WORKER_BIN = os.environ.get("CELERIAC_WORKER_BIN") or str(TARGET / "debug" / "celeriac-worker")
DEAD_LETTER = "celeriac.rejected"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls `predicate` until it returns something truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server of our own, with an append-only file so a restart keeps the queues."""

    def __init__(self, workdir, port=None, extra=()):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.password = None
        if "--requirepass" in self.extra:
            self.password = self.extra[self.extra.index("--requirepass") + 1]
        self.proc = None

    def start(self):
        log = open(self.dir / "redis.log", "ab")
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", *self.extra]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._pings, timeout=10, what=f"redis-server on port {self.port}")

    def _pings(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
        try:
            return self.client().ping()
        except redis.exceptions.RedisError:
            return False

    def stop(self):
        """Stops the server cleanly (it writes its append-only file)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def url(self, db=0):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db=0):
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=10)


class Process:
    """A worker process whose combined output goes to a log file."""

    ready_pattern = None

    def __init__(self, args, log_path, env=None, cwd=None):
        self.args = args
        self.log_path = pathlib.Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        return self

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern, timeout=15.0):
        rx = re.compile(pattern)

        def seen():
            if rx.search(self.log()):
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited ({self.proc.returncode}) before /{pattern}/:\n{self.log()[-4000:]}")
            return False

        wait_for(seen, timeout=timeout, what=f"/{pattern}/ in {self.log_path.name}")

    def wait_ready(self, timeout=20.0):
        self.wait_log(self.ready_pattern, timeout)
        return self

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL to the whole process group (prefork children included)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def wait(self, timeout=30.0):
        return self.proc.wait(timeout=timeout)

    @property
    def pid(self):
        return self.proc.pid


class CeleriacWorker(Process):
    ready_pattern = r" ready: consuming "


class PythonWorker(Process):
    ready_pattern = r"ready\."


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.exit("redis-server is not installed (scripts/test.sh installs it)", returncode=2)
    if not os.path.exists(WORKER_BIN):
        pytest.exit(f"{WORKER_BIN} is missing: run scripts/test.sh, which builds it", returncode=2)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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


def make_app(redis_server, **conf):
    app = Celery("interop", broker=redis_server.url(0), backend=redis_server.url(1))
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


@pytest.fixture
def app(redis_server):
    app = make_app(redis_server)
    yield app
    app.close()


@pytest.fixture
def start_worker(redis_server, tmp_path):
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
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
def start_python_worker(redis_server, tmp_path):
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
        if ready:
            w.wait_ready(timeout=30)
        return w

    yield start
    for w in started:
        w.kill()


def meta(backend, task_id):
    """The stored result record of a task, or None."""
    import json

    raw = backend.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else None


def dead_letters(broker):
    """The dead-letter records, each with `raw`: the exact bytes that were set aside."""
    import base64
    import json

    out = []
    for x in broker.lrange(DEAD_LETTER, 0, -1):
        rec = json.loads(x)
        rec["raw"] = rec["payload"].encode() if "payload" in rec else base64.b64decode(rec["payload_base64"])
        out.append(rec)
    return out


def unacked_count(broker):
    return broker.hlen("unacked"), broker.zcard("unacked_index")
