"""Helpers of the media end-to-end tests (tests/test_media.py): the moto S3 server, a TCP proxy
that can cut a worker off from S3 or MySQL, the Django process of tests/djangosite/, a
recorder of every result record the backend publishes, and image makers.

Nothing here imports Django: the Django side is a subprocess of the venv's Python.
"""

import io
import json
import os
import pathlib
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

from support import free_port, wait_for

TESTS = pathlib.Path(__file__).resolve().parent
SITE = TESTS / "djangosite"


# --- S3 ----------------------------------------------------------------------------------------

class MotoServer:
    """The moto server from PyPI on a free loopback port."""

    def __init__(self, log_path):
        self.log_path = pathlib.Path(log_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        import requests

        exe = shutil.which("moto_server") or str(pathlib.Path(sys.executable).parent / "moto_server")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
            try:
                return requests.get(self.url + "/", timeout=1).status_code < 500
            except requests.RequestException:
                return False

        wait_for(answers, timeout=30, what="the moto server")
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def s3_keys(s3, bucket, prefix=""):
    """Every key in `bucket` under `prefix`."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(out)


# --- a TCP proxy that can fail ------------------------------------------------------------------

def _rst_close(sock):
    """Closes with a TCP RST instead of a FIN (SO_LINGER 0), as a crashed peer or a reset does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, and fails on demand:

      down("refuse")  nothing listens on the port any more: connect() gets ECONNREFUSED;
      down("reset")   connections are accepted and at once reset (RST);
      either way every connection open at that moment is reset, so pooled connections die too;
      up()            listens and forwards again, on the same port.

    `accepted` counts the connections forwarded so far (to prove a client really goes through).
    """

    def __init__(self, target_port, target_host="127.0.0.1", name="proxy"):
        self.target = (target_host, target_port)
        self.name = name
        self.port = free_port()
        self.mode = "up"
        self.accepted = 0
        self._lock = threading.Lock()
        self._listener = None
        self._pairs = {}  # thread -> its wake-up socket
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"{name}-accept", daemon=True)

    def start(self):
        self._listen()
        self._thread.start()
        return self

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.setblocking(False)
        self._listener = s

    def _serve(self):
        sel = selectors.DefaultSelector()
        while not self._stopping:
            client = None
            with self._lock:  # the listener is opened and closed only under the lock
                if self._listener is not None:
                    key = self._listener
                    sel.register(key, selectors.EVENT_READ)
                    try:
                        if sel.select(0):
                            try:
                                client, _ = key.accept()
                            except OSError:
                                client = None
                    finally:
                        sel.unregister(key)
                mode = self.mode
            if client is None:
                time.sleep(0.005)
                continue
            client.setblocking(True)
            if mode != "up":
                _rst_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _rst_close(client)
                continue
            upstream.settimeout(None)
            self.accepted += 1
            wake_r, wake_w = socket.socketpair()
            t = threading.Thread(target=self._pump, args=(client, upstream, wake_r, wake_w),
                                 name=f"{self.name}-pump", daemon=True)
            with self._lock:
                self._pairs[t] = wake_w
            t.start()
        sel.close()

    def _pump(self, a, b, wake_r, wake_w):
        sel = selectors.DefaultSelector()
        for s in (a, b, wake_r):
            sel.register(s, selectors.EVENT_READ)
        reset = False
        try:
            while True:
                for key, _ in sel.select():
                    s = key.fileobj
                    if s is wake_r:
                        reset = True
                        return
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            reset = True
        finally:
            sel.close()
            for s in (a, b):
                if reset:
                    _rst_close(s)
                else:
                    s.close()
            wake_r.close()
            with self._lock:
                self._pairs.pop(threading.current_thread(), None)
            wake_w.close()

    def drop(self):
        """Resets every open connection (both sides) and waits until they are gone."""
        with self._lock:
            pairs = list(self._pairs.items())
        for _, wake in pairs:
            try:
                wake.send(b"x")
            except OSError:
                pass
        for t, _ in pairs:
            t.join(timeout=5)

    def down(self, how="refuse"):
        assert how in ("refuse", "reset"), how
        with self._lock:
            self.mode = how
            if how == "refuse" and self._listener is not None:
                self._listener.close()
                self._listener = None
        self.drop()

    def up(self):
        with self._lock:
            if self._listener is None:
                self._listen()
            self.mode = "up"

    def close(self):
        self._stopping = True
        self._thread.join(timeout=5)
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.drop()


# --- the result records the backend publishes --------------------------------------------------

class ResultRecorder:
    """Every result record stored on the Redis result backend, as it is PUBLISHed on its key
    (Celery's Redis backend publishes each state it sets, RETRY included), in order, per task id.
    Subscribed before any task is sent, so no state is missed even when it lasts a millisecond."""

    def __init__(self, redis_client):
        self._client = redis_client  # held: a collected client closes the pool its pubsub uses
        self._pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("celery-task-meta-*")
        self._records = {}
        self._cond = threading.Condition()
        self._stop = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="result-recorder", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                msg = self._pubsub.get_message(timeout=0.2)
            except Exception as e:  # the connection went away with the server: stop recording
                self.error = e
                return
            if not msg or msg["type"] != "pmessage":
                continue
            rec = json.loads(msg["data"])
            rec["_seen"] = time.monotonic()
            with self._cond:
                self._records.setdefault(rec["task_id"], []).append(rec)
                self._cond.notify_all()

    def records(self, task_id):
        with self._cond:
            return list(self._records.get(task_id, []))

    def statuses(self, task_id):
        return [r["status"] for r in self.records(task_id)]

    def wait(self, task_id, predicate, timeout, what):
        """Waits until predicate(records of task_id) is truthy; returns the records."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                recs = list(self._records.get(task_id, []))
                if predicate(recs):
                    return recs
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; records so far: "
                                         f"{[r['status'] for r in recs]} ({len(self._records)} task(s) recorded; "
                                         f"recorder alive: {self._thread.is_alive()}, error: {self.error!r})")
                self._cond.wait(left)

    def wait_status(self, task_id, status, count=1, timeout=15.0):
        return self.wait(task_id, lambda rs: sum(r["status"] == status for r in rs) >= count, timeout,
                         f"{count} {status} record(s) of {task_id}")

    def wait_ready(self, task_id, timeout=15.0):
        """Waits for the final record (SUCCESS or FAILURE); returns all the records."""
        return self.wait(task_id, lambda rs: any(r["status"] in ("SUCCESS", "FAILURE") for r in rs), timeout,
                         f"task {task_id} to finish")

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        try:
            self._pubsub.close()
        except Exception:
            pass


# --- the Django project (tests/djangosite/) ----------------------------------------------------

class DjangoError(AssertionError):
    """The code sent to the driver raised; the message is its traceback."""


class DjangoSite:
    """A process of tests/djangosite/ (its driver.py), migrated on start, with `env` on top of
    the environment (DATABASE_URL, AWS_*, CELERY_BROKER_URL, CELERY_RESULT_BACKEND):

        site.run("result = row(%d)" % asset_id)
    """

    def __init__(self, env, log_path, timeout=60.0):
        self.log_path = pathlib.Path(log_path)
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ, DJANGO_SETTINGS_MODULE="djangosite.settings", PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(SITE), **env)
        self.proc = subprocess.Popen([sys.executable, str(SITE / "driver.py")], cwd=str(SITE), env=full_env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     bufsize=0, start_new_session=True)
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        first = self._read(timeout, "the driver's migrate")
        if "ready" not in first:
            self.close()
            raise RuntimeError(f"the Django driver failed to start:\n{first.get('error', first)}")
        self.migrate_seconds = first["migrate_seconds"]

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _read(self, timeout, what):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the Django driver gave no answer within {timeout}s to {what}; "
                                     f"its log:\n{self.log()[-4000:]}")
            if self._sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    self.proc.wait(timeout=10)
                    raise AssertionError(f"the Django driver exited ({self.proc.returncode}) during {what}; "
                                         f"its log:\n{self.log()[-4000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, code, timeout=30.0, **values):
        """Runs `code` (dedented) with `values` (JSON, bytes as base64) bound as variables;
        returns its variable `result`. Raises DjangoError if it raised."""
        import base64

        code = textwrap.dedent(code).strip("\n")
        prologue = "".join(
            f"{k} = base64.b64decode({base64.b64encode(v).decode()!r})\n" if isinstance(v, bytes)
            else f"{k} = json.loads({json.dumps(v)!r})\n"
            for k, v in values.items())
        self.proc.stdin.write((json.dumps({"exec": prologue + code}) + "\n").encode())
        reply = self._read(timeout, f"run({code[:200]!r})")
        if "error" in reply:
            raise DjangoError(f"Django code raised:\n{code}\n--- traceback from the driver ---\n{reply['error']}")
        return reply["ok"]

    def create_asset(self, name, data):
        """media.services.create_asset(name, data) -> the new row, with `task_id`: the id of the
        media.thumbnail message its on_commit published."""
        return self.run("""
            before = len(published)
            asset = services.create_asset(name, data)
            sent = published[before:]
            assert len(sent) == 1, sent
            result = dict(row(asset.id), task_id=sent[0]["id"], message=sent[0])
        """, name=name, data=data)

    def row(self, asset_id):
        return self.run("result = row(asset_id)", asset_id=asset_id)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._sel.close()
        self.proc.stdout.close()
        self._log.close()


# --- images ------------------------------------------------------------------------------------

def encode(img, fmt, **params):
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def open_image(data):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width, height):
    """A PNG of a few dozen bytes whose IHDR promises width x height RGB pixels, with one
    scanline's worth of compressed data: a decoder that trusted it would allocate it all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * min(width * 3, 4096))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_with_promised_size(jpeg, width, height):
    """A real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(jpeg)
    i = data.index(b"\xff\xc0")
    # FFC0, length (2), precision (1), height (2), width (2)
    data[i + 5:i + 7] = struct.pack(">H", height)
    data[i + 7:i + 9] = struct.pack(">H", width)
    return bytes(data)
