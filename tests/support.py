"""Helpers of the interop suite: the private Redis server, worker processes, polling, and
readers of what workers leave in Redis."""

import base64
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import redis
from celery import Celery

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WORKER_BIN = os.environ.get("CELERIAC_WORKER_BIN") or str(TARGET / "debug" / "celeriac-worker")
BEAT_BIN = os.environ.get("CELERIAC_BEAT_BIN") or str(TARGET / "debug" / "celeriac-beat")
# The README's example of a user's own worker binary (built by `cargo test`).
EXAMPLE_WORKER_BIN = str(pathlib.Path(WORKER_BIN).parent / "custom-worker")
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
        self._log.close()

    def wait(self, timeout=30.0):
        return self.proc.wait(timeout=timeout)

    @property
    def pid(self):
        return self.proc.pid


class CeleriacWorker(Process):
    ready_pattern = r" ready: consuming "


class CeleriacBeat(Process):
    ready_pattern = r"celeriac-beat starting"

    def sent_lines(self):
        """(entry, tick, lateness_ms) of every tick this beat logged as sent."""
        rx = re.compile(r" sent entry=(\S+) .*? tick=(\S+ \S+) UTC lateness_ms=(-?\d+)")
        return [(m[1], m[2], int(m[3])) for m in rx.finditer(self.log())]


class PythonWorker(Process):
    ready_pattern = r"ready\."


def make_app(redis_server, **conf):
    app = Celery("interop", broker=redis_server.url(0), backend=redis_server.url(1))
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


def meta(backend, task_id):
    """The stored result record of a task, or None."""
    raw = backend.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else None


def dead_letters(broker):
    """The dead-letter records, each with `raw`: the exact bytes that were set aside."""
    out = []
    for x in broker.lrange(DEAD_LETTER, 0, -1):
        rec = json.loads(x)
        rec["raw"] = rec["payload"].encode() if "payload" in rec else base64.b64decode(rec["payload_base64"])
        out.append(rec)
    return out



def beat_listing(schedule_path, after, count):
    """The records of `celeriac-beat schedule --format json` for a schedule file: the next `count`
    fire times of every entry strictly after the aware datetime `after` (entries left out would
    carry "error", and fail the caller's test)."""
    out = subprocess.run(
        [BEAT_BIN, "schedule", "--schedule", str(schedule_path), "--count", str(count),
         "--after", after.isoformat().replace("+00:00", "Z"), "--format", "json"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, CELERY_TIMEZONE="UTC"))
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    for rec in records:
        assert "error" not in rec, rec
        assert len(rec["fires"]) == count, rec
    return records
