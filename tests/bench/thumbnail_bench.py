"""Thumbnails of 12-megapixel photos: celeriac-worker's `media.thumbnail` against the same task in
Python (tests/bench/pythumbs.py: Pillow and boto3 on a Python Celery prefork worker), on the same
S3, MySQL and Redis, in one run.

Run through scripts/bench_thumbnails.sh, which starts a private redis-server, builds the release
binary and calls this driver with --port, --worker-bin and --work-dir. The driver starts the
rest, all private to the run, on free loopback ports: a MariaDB (tests/dbservers.py) holding
`media_mediaasset` as Django 5.2 creates it, and the moto S3 server (from PyPI) holding the
originals under AWS_LOCATION. Redis: db 0 is the broker, db 1 the result backend.

Photos (tests/bench/thumbphotos.py): N photo-like JPEGs of 4000x3000 (some portrait through
EXIF orientation 6 or 8, some stored 3000x4000), quality 90, about 3 MB each, made once and kept
in ~/.cache/celeriac/bench-photos/. Photo n is asset n + 1, `originals/<n>.jpg`.

Each run: every row is set back to `pending` and every thumbnail deleted, both Redis dbs are
emptied, the worker starts, a warm-up (celeriac.test.add, then one thumbnail of an extra asset)
proves that it consumes, stores results and reaches S3 and MySQL; then the N tasks are sent
(`send_task("media.thumbnail", args=[id], queue="media")`) and the clock runs from the first
send to the last result stored. Every result must be SUCCESS with the thumbnails the contract
gives (sizes as Pillow's `Image.thumbnail` rounds them, Pillow as the referee), every row
`ready` with the oriented size and the same `thumbnails`, every object in the bucket, a few of
them decoded; both workers must give the same sizes. The RSS of the worker's process tree
(Python: the main process and its pool children, summed) is sampled every 50 ms.

Then, unless --no-profile: how fast moto alone serves the N originals (boto3 GETs from as many
threads as the Python pool has processes: the ceiling of any worker on this S3), and what the
Python task's image work alone costs per photo in one process.

The last line printed is a JSON object with all numbers.
"""

import argparse
import concurrent.futures
import datetime
import io
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

import boto3
import celery
import psutil
import redis
from celery import Celery
import PIL
import PIL.features
from PIL import Image, ImageChops, ImageStat

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)

from bench import tree, tree_cpu, tree_pss, tree_rss, vm_hwm  # noqa: E402  (tests/bench/bench.py)
from dbservers import MariaDBServer, _die_with_parent  # noqa: E402
from support import free_port  # noqa: E402

import thumbphotos  # noqa: E402

TASK = "media.thumbnail"
QUEUE = "media"
BROKER_DB, RESULT_DB = 0, 1
META = "celery-task-meta-"
DBNAME = "bench"
BUCKET = "bench-media"
LOCATION = "bench/media/"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_S3_REGION_NAME": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
# Django 5.2's CREATE TABLE for the contract's model (docs/media-tasks.md) on MariaDB, as
# `manage.py sqlmigrate` prints it for tests/djangosite: MariaDB makes the JSONField's `json` a
# longtext (utf8mb4_bin) with a json_valid check; PositiveIntegerField is unsigned with a check.
DDL = ("CREATE TABLE `media_mediaasset` (`id` bigint AUTO_INCREMENT NOT NULL PRIMARY KEY, "
       "`original` varchar(100) NOT NULL, `status` varchar(16) NOT NULL, "
       "`width` integer UNSIGNED NULL CHECK (`width` >= 0), `height` integer UNSIGNED NULL CHECK (`height` >= 0), "
       "`thumbnails` json NOT NULL, `error` longtext NOT NULL, `created_at` datetime(6) NOT NULL, "
       "`updated_at` datetime(6) NOT NULL)")
EXPECTED_LOG = ("SIGTERM received: warm shutdown",)


class Sampler(threading.Thread):
    """Samples the RSS of a process tree (summed over its processes) until stopped, and its PSS
    every `pss_every` samples only: reading smaps costs milliseconds of CPU for each process, taken
    from the worker being measured on a small machine."""

    def __init__(self, proc, interval, pss_every=20, tree_every=20):
        super().__init__(daemon=True)
        self.proc, self.interval, self.pss_every, self.tree_every = proc, interval, pss_every, tree_every
        self.stopping = threading.Event()
        self.peak, self.peak_pss, self.samples, self.max_procs = 0, 0, 0, 0
        self.procs = tree(proc)

    def sample(self, full=True):
        # Finding the children scans all of /proc: done every `tree_every` samples (a prefork
        # pool replaces a child rarely), the RSS of the known ones (statm) every time.
        if full or self.samples % self.tree_every == 0:
            self.procs = tree(self.proc)
        rss, count = 0, 0
        for p in self.procs:
            try:
                rss += p.memory_info().rss
                count += 1
            except psutil.NoSuchProcess:
                pass
        self.peak = max(self.peak, rss)
        if full or self.samples % self.pss_every == 0:
            self.peak_pss = max(self.peak_pss, tree_pss(self.proc))
        self.max_procs = max(self.max_procs, count)
        self.samples += 1

    def run(self):
        while not self.stopping.is_set():
            self.sample(full=False)
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()
        self.sample()


class BenchError(Exception):
    """A run that cannot be measured or whose results are wrong."""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench_thumbnails.sh",
        description="Thumbnails of N 12-megapixel JPEGs with celeriac-worker's media.thumbnail and with the same "
        "task in Python (Pillow, boto3, PyMySQL) on a Python Celery prefork worker, on the same private moto S3, "
        "MariaDB and Redis; reports time, photos/s and peak RSS per worker and the ratios.",
    )
    p.add_argument("--photos", "-n", type=int, default=200, help="photos (tasks) per run (default 200)")
    p.add_argument("--only", choices=["python", "celeriac"], help="measure one worker only")
    p.add_argument("--concurrency", "-c", type=int, default=os.cpu_count(),
                   help=f"Python prefork pool size (default os.cpu_count() = {os.cpu_count()})")
    p.add_argument("--celeriac-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for celeriac-worker (repeatable; its --concurrency is 2 x CPUs "
                        "unless given here), e.g. --celeriac-arg=--concurrency=8")
    p.add_argument("--sizes", default="128,512", help="CELERIAC_THUMBNAIL_SIZES for both workers (default 128,512)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of each worker; the order alternates between rounds, medians are reported")
    p.add_argument("--photo-dir", default=os.path.join(os.environ.get("CELERIAC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "celeriac"), "bench-photos"),
        help="where the generated photos are cached (default ~/.cache/celeriac/bench-photos)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the moto-alone and Pillow-alone measurements after the runs")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases) after the run")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take (default 900)")
    p.add_argument("--stall-timeout", type=float, default=120.0,
                   help="fail when no result arrives for this long (default 120)")
    p.add_argument("--ready-timeout", type=float, default=90.0,
                   help="seconds a worker may take to finish its warm-up (default 90)")
    p.add_argument("--sample-interval", type=float, default=0.05, help="RSS sampling period, s (default 0.05)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="result polling period, s (default 0.05)")
    # Set by scripts/bench_thumbnails.sh.
    p.add_argument("--port", type=int, required=True, help=argparse.SUPPRESS)
    p.add_argument("--worker-bin", required=True, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", required=True, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        a.size_list = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: not a comma-separated list of integers: {a.sizes!r}")
    if a.photos < 1 or a.concurrency < 1 or a.rounds < 1 or not a.size_list or min(a.size_list) < 1:
        p.error("--photos, --concurrency, --rounds and the sizes must be >= 1")
    return a


def scrub_env():
    """Celery reads CELERY_*, celeriac-worker CELERY_* / CELERIAC_*, both workers the AWS SDK's and
    the contract's variables: none of the caller's may leak into a run."""
    for k in list(os.environ):
        if k.startswith(("CELERY_", "CELERIAC_", "BENCH_", "AWS_")) or k in ("C_FORCE_ROOT", "DATABASE_URL"):
            del os.environ[k]


def url(port, db):
    return f"redis://127.0.0.1:{port}/{db}"


def mib(b):
    return None if b is None else b / 1048576


def pid_note(work_dir, pid):
    """scripts/bench_thumbnails.sh kills these process groups if the driver dies without it."""
    with open(os.path.join(work_dir, "services.pids"), "a") as f:
        f.write(f"{pid}\n")


def proc_cpu(pid):
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def system_busy():
    """CPU seconds all processes used (all cores), from /proc/stat."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def self_cpu():
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------------
# Services


class Moto:
    """The moto S3 server of this run."""

    def __init__(self, work_dir):
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        if not os.access(exe, os.X_OK):
            raise BenchError(f"{exe} is missing: the venv needs moto[server] (tests/requirements.txt)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(work_dir, "moto.log")
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent(signal.SIGTERM))
        pid_note(work_dir, self.proc.pid)
        deadline = time.monotonic() + 30
        import urllib.request
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"moto_server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"moto_server did not answer within 30s; see {self.log_path}") from None
                time.sleep(0.1)

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def key(name):
    return LOCATION + name


def setup_data(args, db, s3, photos):
    """The table with N + 1 rows and the originals in the bucket; returns the expected outcome of
    each asset: {id: (oriented width, height, {size: (w, h)})}."""
    db.create_database(DBNAME)
    db.execute(DDL, DBNAME)
    s3.create_bucket(Bucket=BUCKET)
    n = args.photos
    t0 = time.monotonic()
    names = [f"originals/{i}.jpg" for i in range(n)]

    def put(i):
        with open(photos[i], "rb") as f:
            s3.put_object(Bucket=BUCKET, Key=key(names[i]), Body=f.read(), ContentType="image/jpeg")

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(put, range(n)))
    with open(photos[0], "rb") as f:
        s3.put_object(Bucket=BUCKET, Key=key("originals/warmup.jpg"), Body=f.read(), ContentType="image/jpeg")
    conn = db._connect(DBNAME)
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO media_mediaasset (id, original, status, width, height, thumbnails, error, "
                            "created_at, updated_at) VALUES (%s, %s, 'pending', NULL, NULL, '{}', '', "
                            "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
                            [(i + 1, names[i]) for i in range(n)] + [(n + 1, "originals/warmup.jpg")])
    finally:
        conn.close()
    log(f"uploaded {n} originals to s3://{BUCKET}/{LOCATION}originals/ and made {n + 1} rows "
        f"in {time.monotonic() - t0:.1f}s")
    expected = {}
    for i in range(n):
        _, _, (w, h) = thumbphotos.layout(i)
        expected[i + 1] = (w, h, {s: pillow_fit(w, h, s) for s in args.size_list})
    return expected


def pillow_fit(w, h, size):
    """The referee: what Pillow's Image.thumbnail makes of a w x h image in a size x size box."""
    im = Image.new("1", (w, h))
    im.thumbnail((size, size))
    return im.size


def expected_thumbs(asset_id, sizes):
    return {str(s): {"key": f"thumbnails/{asset_id}/{s}.jpg", "width": w, "height": h} for s, (w, h) in sizes.items()}


def reset(db, s3):
    conn = db._connect(DBNAME)
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE media_mediaasset SET status = 'pending', width = NULL, height = NULL, "
                        "thumbnails = '{}', error = '', updated_at = UTC_TIMESTAMP(6)")
    finally:
        conn.close()
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key("thumbnails/")):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for start in range(0, len(objs), 1000):
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objs[start:start + 1000], "Quiet": True})
            deleted += len(objs[start:start + 1000])
    return deleted


# ---------------------------------------------------------------------------------------------
# Workers


def worker_command(kind, args):
    if kind == "python":
        celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
        return [celery_bin, "-A", "pythumbs", "worker", "-Q", QUEUE, "--concurrency", str(args.concurrency),
                "--pool", "prefork", "-l", "warning", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    # Tasks in flight: twice the CPUs, so downloads and uploads overlap the image work, which the
    # worker's CPU pool keeps at one decode per CPU (a --celeriac-arg=--concurrency=N overrides).
    concurrency = [] if any(a.startswith(("--concurrency", "-c")) for a in args.celeriac_arg) else [
        "--concurrency", str(2 * (os.cpu_count() or 1))]
    return [args.worker_bin, "--broker", url(args.port, BROKER_DB), "--result-backend", url(args.port, RESULT_DB),
            "-Q", QUEUE, *concurrency, *args.celeriac_arg]


def worker_env(kind, args, services_env):
    env = dict(os.environ, **services_env)
    if kind == "python":
        env["BENCH_BROKER_URL"] = url(args.port, BROKER_DB)
        env["BENCH_RESULT_BACKEND"] = url(args.port, RESULT_DB)
        env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Worker:
    def __init__(self, kind, args, services_env, log_path):
        self.kind, self.args, self.log_path = kind, args, log_path
        self.cmd = worker_command(kind, args)
        self.env = worker_env(kind, args, services_env)
        self.popen = None
        self.pids_file = os.path.join(args.work_dir, "workers.pids")

    def start(self):
        self.logf = open(self.log_path, "wb")
        self.popen = subprocess.Popen(self.cmd, cwd=HERE, env=self.env, stdin=subprocess.DEVNULL, stdout=self.logf,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.pids_file, "w") as f:
            f.write(f"{self.popen.pid}\n")
        self.proc = psutil.Process(self.popen.pid)

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self, during):
        if not self.alive():
            raise BenchError(f"{self.kind} worker exited with code {self.popen.returncode} {during}:\n"
                             + self.log_tail())

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace=30.0):
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.kind} worker did not stop within {grace:.0f}s of SIGTERM; killing it")
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.popen.wait()
        self.logf.close()
        open(self.pids_file, "w").close()
        return code

    def log_problems(self):
        import re

        pat = re.compile(r"\b(WARN|WARNING|ERROR|CRITICAL|FATAL)\b|Traceback|panicked")
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if pat.search(line) and not any(e in line for e in EXPECTED_LOG)]


def wait_until(cond, timeout, worker, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        worker.check_alive(f"while {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"{worker.kind} worker: timed out after {timeout:.0f}s {what}\n" + worker.log_tail())
        time.sleep(interval)


def final_meta(r_res, task_id):
    raw = r_res.get(META + task_id)
    if raw is None:
        return None
    meta = json.loads(raw)
    return meta if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED") else None


# ---------------------------------------------------------------------------------------------
# One run


def check_results(r_res, ids, expected, sizes):
    bad, examples, sample = 0, [], None
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for (asset_id, tid), raw in zip(chunk, r_res.mget([META + t for _, t in chunk])):
            meta = json.loads(raw) if raw is not None else None
            if sample is None:
                sample = meta
            want = expected_thumbs(asset_id, expected[asset_id][2])
            if meta is None or meta.get("status") != "SUCCESS" or meta.get("result") != want:
                bad += 1
                if len(examples) < 5:
                    examples.append(f"asset {asset_id} ({tid}): " + ("no result" if raw is None else raw[:400]))
    return bad, examples, sample


def check_rows(db, expected, since):
    conn = db._connect(DBNAME)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, status, width, height, thumbnails, error, updated_at FROM media_mediaasset "
                        "WHERE id <= %s ORDER BY id", (len(expected),))
            rows = cur.fetchall()
    finally:
        conn.close()
    bad, examples = 0, []
    if len(rows) != len(expected):
        return len(expected), [f"{len(rows)} rows, expected {len(expected)}"]
    for asset_id, status, w, h, thumbs, error, updated in rows:
        ew, eh, sizes = expected[asset_id]
        problems = []
        if status != "ready":
            problems.append(f"status {status!r}")
        if (w, h) != (ew, eh):
            problems.append(f"size {w}x{h}, expected {ew}x{eh}")
        try:
            if json.loads(thumbs) != expected_thumbs(asset_id, sizes):
                problems.append(f"thumbnails {thumbs}")
        except ValueError:
            problems.append(f"thumbnails not JSON: {thumbs!r}")
        if error != "":
            problems.append(f"error {error!r}")
        if updated is None or updated < since:
            problems.append(f"updated_at {updated} before the run ({since})")
        if problems:
            bad += 1
            if len(examples) < 5:
                examples.append(f"row {asset_id}: " + "; ".join(problems))
    return bad, examples


SAMPLE_PHOTOS = (0, 2, 4)  # landscape; portrait by orientation 6; landscape by orientation 8


def check_objects(s3, expected, sizes):
    """All thumbnails listed; a few fetched and decoded. Returns (problems, total bytes, samples)."""
    listed = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key("thumbnails/")):
        for o in page.get("Contents", []):
            listed[o["Key"]] = o["Size"]
    problems = []
    want = {key(f"thumbnails/{i}/{s}.jpg") for i in expected for s in sizes}
    missing = want - set(listed)
    if missing:
        problems.append(f"{len(missing)} thumbnails missing in the bucket, e.g. {sorted(missing)[:3]}")
    samples = {}
    for n in SAMPLE_PHOTOS:
        asset_id = n + 1
        if asset_id not in expected:
            continue
        for s in sizes:
            k = key(f"thumbnails/{asset_id}/{s}.jpg")
            if k not in listed:
                continue
            obj = s3.get_object(Bucket=BUCKET, Key=k)
            body = obj["Body"].read()
            if obj.get("ContentType") != "image/jpeg":
                problems.append(f"{k}: Content-Type {obj.get('ContentType')!r}")
            im = Image.open(io.BytesIO(body))
            im.load()
            if im.format != "JPEG" or im.size != expected[asset_id][2][s]:
                problems.append(f"{k}: {im.format} {im.size}, expected JPEG {expected[asset_id][2][s]}")
            samples[k] = body
    mine = {k: v for k, v in listed.items() if k in want}  # not the warm-up asset's
    sizes_by_thumb = {s: [v for k2, v in mine.items() if k2.endswith(f"/{s}.jpg")] for s in sizes}
    mean_bytes = {s: (statistics.mean(v) if v else 0) for s, v in sizes_by_thumb.items()}
    return problems, sum(mine.values()), mean_bytes, samples


def run_one(kind, rnd, args, ctx):
    r_broker, r_res, db, s3, expected = ctx["r_broker"], ctx["r_res"], ctx["db"], ctx["s3"], ctx["expected"]
    n = args.photos
    deleted = reset(db, s3)
    r_broker.flushdb()
    r_res.flushdb()
    w = Worker(kind, args, ctx["services_env"], os.path.join(args.work_dir, f"{kind}-round{rnd}.log"))
    out = {"worker": kind, "round": rnd, "command": shlex.join(w.cmd), "thumbnails_deleted_before": deleted}
    # No result backend on the sending side: with one, send_task subscribes to each task's result
    # channel, CPU taken from the worker being measured; the messages are the same.
    sender = Celery(f"bench-send-{kind}", broker=url(args.port, BROKER_DB))
    t_start = time.perf_counter()
    w.start()
    try:
        # Warm-up: consumes and stores results, then one thumbnail through S3 and MySQL.
        probe = sender.send_task("celeriac.test.add", args=[-1, -2], queue=QUEUE).id
        meta = wait_until(lambda: final_meta(r_res, probe), args.ready_timeout, w, "waiting for the warm-up task")
        if meta.get("status") != "SUCCESS" or meta.get("result") != -3:
            raise BenchError(f"{kind} warm-up task: wrong result {meta!r}")
        warm = sender.send_task(TASK, args=[n + 1], queue=QUEUE).id
        meta = wait_until(lambda: final_meta(r_res, warm), args.ready_timeout, w,
                          f"waiting for the warm-up thumbnail (does this worker have {TASK}?)")
        if meta.get("status") != "SUCCESS" or not isinstance(meta.get("result"), dict):
            raise BenchError(f"{kind} warm-up thumbnail: {json.dumps(meta)[:1000]}\n" + w.log_tail())
        out["ready_seconds"] = time.perf_counter() - t_start
        wait_until(lambda: r_broker.llen(QUEUE) == 0 and r_broker.hlen("unacked") == 0, 30, w,
                   "waiting for the warm-up messages to be acked")
        r_res.flushdb()
        time.sleep(0.5)
        out["idle_rss"], out["processes"] = tree_rss(w.proc)

        since = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        sampler = Sampler(w.proc, args.sample_interval)
        sampler.sample()
        load0 = os.getloadavg()
        cpu0 = (tree_cpu(w.proc), proc_cpu(ctx["moto"].proc.pid), proc_cpu(db.proc.pid), redis_cpu(r_broker),
                system_busy(), self_cpu())
        sampler.start()
        ids = []
        t0 = time.perf_counter()
        with sender.producer_or_acquire() as producer:
            for asset_id in range(1, n + 1):
                ids.append((asset_id, sender.send_task(TASK, args=[asset_id], queue=QUEUE, producer=producer).id))
        t_sent = time.perf_counter()
        last_note, last_done, last_progress = t0, -1, t0
        while True:
            done = r_res.dbsize()
            now = time.perf_counter()
            if done >= n:
                metas = r_res.mget([META + t for _, t in ids])
                if all(m is not None and json.loads(m).get("status") in ("SUCCESS", "FAILURE") for m in metas):
                    break
            if done != last_done:
                last_done, last_progress = done, now
            elif now - last_progress > args.stall_timeout:
                sampler.stop()
                raise BenchError(f"{kind} worker: results stalled at {done}/{n} for {args.stall_timeout:.0f}s, "
                                 f"{r_broker.llen(QUEUE)} queued, {r_broker.hlen('unacked')} unacked\n" + w.log_tail())
            if now - t0 > args.timeout:
                sampler.stop()
                raise BenchError(f"{kind} worker: timed out after {args.timeout:.0f}s with {done}/{n} results\n"
                                 + w.log_tail())
            if not w.alive():
                sampler.stop()
                w.check_alive(f"during the run ({done}/{n} results)")
            if now - last_note > 10:
                log(f"  {kind}: {done}/{n} results after {now - t0:.0f}s")
                last_note = now
            time.sleep(args.poll_interval)
        t1 = time.perf_counter()
        sampler.stop()
        cpu1 = (tree_cpu(w.proc), proc_cpu(ctx["moto"].proc.pid), proc_cpu(db.proc.pid), redis_cpu(r_broker),
                system_busy(), self_cpu())
        load1 = os.getloadavg()
        hwm = vm_hwm(w.proc.pid) if kind == "celeriac" else None
        took = t1 - t0
        d = [b - a for a, b in zip(cpu0, cpu1)]
        others = max(0.0, d[4] - d[0] - d[1] - d[2] - d[3] - d[5])
        out.update(seconds=took, send_seconds=t_sent - t0, photos_per_second=n / took, peak_rss=sampler.peak,
                   peak_pss=sampler.peak_pss, rss_samples=sampler.samples, max_processes=sampler.max_procs,
                   vm_hwm=hwm, worker_cpu_seconds=d[0], moto_cpu_seconds=d[1], mariadb_cpu_seconds=d[2],
                   redis_cpu_seconds=d[3], driver_cpu_seconds=d[5], other_cpu_seconds=others,
                   system_cpu_seconds=d[4], loadavg_before=load0, loadavg_after=load1)

        bad, examples, sample = check_results(r_res, ids, expected, args.size_list)
        out["bad_results"], out["sample_result"] = bad, sample
        if bad:
            out["bad_examples"] = examples
        bad_rows, row_examples = check_rows(db, expected, since)
        out["bad_rows"] = bad_rows
        if bad_rows:
            out["bad_row_examples"] = row_examples
        problems, total, mean_bytes, samples = check_objects(s3, expected, args.size_list)
        out["object_problems"] = problems
        out["thumbnail_bytes"] = total
        out["mean_thumbnail_bytes"] = {str(k): v for k, v in mean_bytes.items()}
        out["samples"] = samples
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (r_broker.hlen("unacked") or r_broker.llen(QUEUE)):
            time.sleep(0.05)
        out["unacked_left"] = r_broker.hlen("unacked")
        out["queued_left"] = r_broker.llen(QUEUE)
    finally:
        out["exit_code"] = w.stop()
        sender.close()
    out["log"] = w.log_path
    lp = w.log_problems()
    out["log_problem_lines"] = len(lp)
    out["log_problem_examples"] = lp[:8]
    return out


def redis_cpu(r):
    c = r.info("cpu")
    return c["used_cpu_user"] + c["used_cpu_sys"]


# ---------------------------------------------------------------------------------------------
# Where the time goes


def moto_ceiling(args, moto, threads):
    """The N originals fetched with boto3 from `threads` threads (one client each), bodies read."""
    local = threading.local()

    def get(i):
        if not hasattr(local, "s3"):
            local.s3 = moto.client()
        return len(local.s3.get_object(Bucket=BUCKET, Key=key(f"originals/{i}.jpg"))["Body"].read())

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        list(ex.map(get, range(min(threads, args.photos))))  # clients made and connected
        c0, m0, b0 = self_cpu(), proc_cpu(moto.proc.pid), system_busy()
        t0 = time.perf_counter()
        total = sum(ex.map(get, range(args.photos)))
        took = time.perf_counter() - t0
        c1, m1, b1 = self_cpu(), proc_cpu(moto.proc.pid), system_busy()
    return {"threads": threads, "seconds": took, "photos_per_second": args.photos / took,
            "mib_per_second": total / took / 1048576, "moto_cpu_seconds": m1 - m0, "client_cpu_seconds": c1 - c0,
            "other_cpu_seconds": max(0.0, (b1 - b0) - (m1 - m0) - (c1 - c0))}


def pillow_alone(args, photos, count):
    """The Python task's image work alone (pythumbs.render), in this process, on `count` photos
    read from disk: CPU ms per photo (process time, so other load on the machine matters little),
    then the same steps one by one: decode at reduced scale (draft), orient (exif_transpose: a
    rotation, or a copy when there is nothing to turn), resize, encode."""
    sys.path.insert(0, HERE)
    import pythumbs
    from PIL import ImageOps

    parts = {"total_ms": [], "decode_ms": [], "orient_ms": [], "resize_ms": [], "encode_ms": []}
    for i in range(count):
        with open(photos[i], "rb") as f:
            body = f.read()
        t0 = time.process_time()
        pythumbs.render(i + 1, "x", body, args.size_list)
        t1 = time.process_time()
        im = Image.open(io.BytesIO(body))
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
        im.draft(None, (int(max(args.size_list) * pythumbs.REDUCING_GAP),) * 2)
        im.load()
        t2 = time.process_time()
        im = ImageOps.exif_transpose(im)
        t3 = time.process_time()
        thumbs = [im.resize(pythumbs.fit(w, h, s), Image.BICUBIC, reducing_gap=pythumbs.REDUCING_GAP)
                  for s in args.size_list]
        t4 = time.process_time()
        for t in thumbs:
            t.save(io.BytesIO(), "JPEG", quality=pythumbs.QUALITY)
        t5 = time.process_time()
        for k, v in (("total_ms", t1 - t0), ("decode_ms", t2 - t1), ("orient_ms", t3 - t2), ("resize_ms", t4 - t3),
                     ("encode_ms", t5 - t4)):
            parts[k].append(v * 1000)
    return {"photos": count, **{k: statistics.mean(v) for k, v in parts.items()}}


def full_decode_ms(photos, count):
    """CPU ms of a full-scale decode of the same photos (what the task would cost without draft)."""
    ms = []
    for i in range(count):
        with open(photos[i], "rb") as f:
            body = f.read()
        t0 = time.process_time()
        Image.open(io.BytesIO(body)).load()
        ms.append((time.process_time() - t0) * 1000)
    return statistics.mean(ms)


# ---------------------------------------------------------------------------------------------
# Report


def fmt_run(r):
    hwm = f", VmHWM {mib(r['vm_hwm']):.1f} MiB" if r.get("vm_hwm") else ""
    cores = r["worker_cpu_seconds"] / r["seconds"]
    lines = [
        f"  {r['worker']:<9} round {r['round']}: {r['seconds']:.2f}s  {r['photos_per_second']:.2f} photos/s  "
        f"peak RSS {mib(r['peak_rss']):.1f} MiB (idle {mib(r['idle_rss']):.1f} MiB, {r['max_processes']} "
        f"process(es), {r['rss_samples']} samples{hwm}; peak PSS {mib(r['peak_pss']):.1f} MiB)",
        f"            CPU s: worker {r['worker_cpu_seconds']:.1f} ({cores:.2f} cores), moto {r['moto_cpu_seconds']:.1f}, "
        f"mariadb {r['mariadb_cpu_seconds']:.1f}, redis {r['redis_cpu_seconds']:.1f}, driver "
        f"{r['driver_cpu_seconds']:.1f}, other processes {r['other_cpu_seconds']:.1f}; load average "
        f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}",
        f"            ready in {r['ready_seconds']:.1f}s; {r['send_seconds'] * 1000:.0f} ms to send; exit code "
        f"{r['exit_code']}; thumbnails {mib(r['thumbnail_bytes']):.1f} MiB (mean "
        + ", ".join(f"{s}: {b / 1024:.1f} KiB" for s, b in r["mean_thumbnail_bytes"].items()) + ")",
        f"            checks: {r['bad_results']} wrong/missing results, {r['bad_rows']} wrong rows, "
        f"{len(r['object_problems'])} bucket problems; left unacked {r['unacked_left']}, queued "
        f"{r['queued_left']}; {r['log_problem_lines']} warning/error log lines",
    ]
    for ex in r.get("bad_examples", []) + r.get("bad_row_examples", []) + r["object_problems"][:5]:
        lines.append(f"            BAD: {ex}")
    for ex in r["log_problem_examples"][:3]:
        lines.append(f"            log: {ex[:200]}")
    return "\n".join(lines)


def summarize(runs, kind):
    mine = [r for r in runs if r["worker"] == kind]
    if not mine:
        return None
    secs = statistics.median(r["seconds"] for r in mine)
    return {
        "runs": len(mine), "seconds": secs, "photos_per_second": mine[0]["photos"] / secs,
        "peak_rss_bytes": max(r["peak_rss"] for r in mine), "peak_rss_mib": mib(max(r["peak_rss"] for r in mine)),
        "peak_pss_mib": mib(max(r["peak_pss"] for r in mine)), "idle_rss_mib": mib(max(r["idle_rss"] for r in mine)),
        "worker_cpu_seconds": statistics.median(r["worker_cpu_seconds"] for r in mine),
        "moto_cpu_seconds": statistics.median(r["moto_cpu_seconds"] for r in mine),
        "other_cpu_seconds": statistics.median(r["other_cpu_seconds"] for r in mine),
        "command": mine[0]["command"],
    }


def compare_samples(runs):
    """Mean absolute difference (0-255) between the two workers' sample thumbnails."""
    py = next((r["samples"] for r in runs if r["worker"] == "python"), None)
    rs = next((r["samples"] for r in runs if r["worker"] == "celeriac"), None)
    if not py or not rs:
        return None
    out = {}
    for k in sorted(set(py) & set(rs)):
        a, b = Image.open(io.BytesIO(py[k])).convert("RGB"), Image.open(io.BytesIO(rs[k])).convert("RGB")
        if a.size != b.size:
            out[k.removeprefix(LOCATION)] = f"sizes differ: {a.size} vs {b.size}"
            continue
        out[k.removeprefix(LOCATION)] = round(statistics.mean(ImageStat.Stat(ImageChops.difference(a, b)).mean), 2)
    return out


def main(argv):
    args = parse_args(argv)
    scrub_env()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.work_dir = os.path.abspath(args.work_dir)
    kinds = [args.only] if args.only else ["python", "celeriac"]
    r_broker = redis.Redis(port=args.port, db=BROKER_DB, decode_responses=True)
    r_res = redis.Redis(port=args.port, db=RESULT_DB, decode_responses=True)
    redis_version = r_broker.info("server")["redis_version"]
    celeriac_version = None
    if "celeriac" in kinds:
        try:
            celeriac_version = subprocess.run([args.worker_bin, "--version"], capture_output=True, text=True,
                                              check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            raise BenchError(f"cannot run {args.worker_bin}: {e}") from e
    rev = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip() or None
    nproc = len(os.sched_getaffinity(0))
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), platform.machine())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    photos = thumbphotos.ensure(args.photo_dir, args.photos, log=log)
    photo_bytes = [os.path.getsize(p) for p in photos]
    portrait = sum(1 for i in range(args.photos) if thumbphotos.layout(i)[2][0] < thumbphotos.layout(i)[2][1])
    rotated = sum(1 for i in range(args.photos) if thumbphotos.layout(i)[1] != 1)

    log("starting a private MariaDB and the moto S3 server")
    db = MariaDBServer(os.path.join(args.work_dir, "mariadb"))
    moto = None
    try:
        db.start()
        pid_note(args.work_dir, db.proc.pid)
        mariadb_version = db.execute("SELECT VERSION()")[0][0]
        moto = Moto(args.work_dir)
        import moto as moto_pkg

        s3 = moto.client()
        expected = setup_data(args, db, s3, photos)
        services_env = dict(S3_KEYS, DATABASE_URL=db.url(DBNAME), AWS_STORAGE_BUCKET_NAME=BUCKET,
                            AWS_LOCATION=LOCATION, AWS_S3_ENDPOINT_URL=moto.url,
                            CELERIAC_THUMBNAIL_SIZES=args.sizes)
        env = {
            "photos": args.photos, "sizes": args.size_list, "nproc": nproc, "cpu": cpu_model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "uptime_before": uptime,
            "photo_mean_bytes": statistics.mean(photo_bytes), "photo_min_bytes": min(photo_bytes),
            "photo_max_bytes": max(photo_bytes), "portrait_photos": portrait, "exif_rotated_photos": rotated,
            "python": platform.python_version(), "celery": celery.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": PIL.features.version("libjpeg_turbo"), "boto3": boto3.__version__,
            "moto": moto_pkg.__version__, "mariadb": mariadb_version, "redis_server": redis_version,
            "celeriac": celeriac_version, "git": rev, "python_concurrency": args.concurrency,
            "celeriac_args": args.celeriac_arg, "rounds": args.rounds,
        }
        print(f"celeriac thumbnail bench: N={args.photos} photos of 12 MP (JPEG q{thumbphotos.QUALITY}, "
              f"{statistics.mean(photo_bytes) / 1e6:.2f} MB mean, {min(photo_bytes) / 1e6:.2f}-"
              f"{max(photo_bytes) / 1e6:.2f} MB; {portrait} portrait, {rotated} through EXIF orientation), "
              f"sizes {args.sizes}; nproc={nproc} ({cpu_model}), {env['memory_gib']} GiB", flush=True)
        print(f"  Python {env['python']}, Celery {env['celery']}, Pillow {env['pillow']} (libjpeg-turbo "
              f"{env['libjpeg_turbo']}), boto3 {env['boto3']}; moto_server {env['moto']} (127.0.0.1:{moto.port}), "
              f"MariaDB {mariadb_version} (127.0.0.1:{db.port}), redis-server {redis_version} (127.0.0.1:{args.port}), "
              f"all private; {celeriac_version or 'celeriac-worker not run'} (release, git {rev})", flush=True)
        print(f"  machine before the runs: {uptime}", flush=True)

        ctx = {"r_broker": r_broker, "r_res": r_res, "db": db, "s3": s3, "expected": expected, "moto": moto,
               "services_env": services_env}
        runs = []
        for rnd in range(1, args.rounds + 1):
            order = kinds if rnd % 2 == 1 else kinds[::-1]
            for kind in order:
                log(f"round {rnd}: {kind} worker, {args.photos} thumbnail tasks")
                r = run_one(kind, rnd, args, ctx)
                r["photos"] = args.photos
                runs.append(r)
                log(f"  {kind}: {r['seconds']:.1f}s, {r['photos_per_second']:.2f} photos/s, "
                    f"peak RSS {mib(r['peak_rss']):.1f} MiB")

        profile = None
        if not args.no_profile:
            log("profile: moto alone serving the originals, and Pillow alone")
            profile = {"moto_get": [moto_ceiling(args, moto, 1), moto_ceiling(args, moto, args.concurrency)]}
            count = min(args.photos, 30)
            profile["pillow"] = pillow_alone(args, photos, count)
            profile["pillow"]["full_decode_ms"] = full_decode_ms(photos, count)
    finally:
        if moto is not None:
            moto.stop()
        db.stop()

    print("\nworker commands:", flush=True)
    for kind in kinds:
        print(f"  {kind:<9} {next(r['command'] for r in runs if r['worker'] == kind)}")
    print("\nruns:")
    for r in runs:
        print(fmt_run(r))

    summary = {k: summarize(runs, k) for k in kinds}
    ratios = {}
    print(f"\nsummary (median time over {args.rounds} round(s), max peak RSS), N={args.photos} photos, "
          f"sizes {args.sizes}:")
    for kind in kinds:
        s = summary[kind]
        print(f"  {kind:<9} {s['seconds']:7.2f}s  {s['photos_per_second']:6.2f} photos/s  peak RSS "
              f"{s['peak_rss_mib']:7.1f} MiB (PSS {s['peak_pss_mib']:.1f} MiB)")
    if len(kinds) == 2:
        py, rs = summary["python"], summary["celeriac"]
        ratios = {
            "throughput_celeriac_over_python": rs["photos_per_second"] / py["photos_per_second"],
            "peak_rss_celeriac_over_python": rs["peak_rss_bytes"] / py["peak_rss_bytes"],
            "cpu_celeriac_over_python": rs["worker_cpu_seconds"] / py["worker_cpu_seconds"],
        }
        t, m = ratios["throughput_celeriac_over_python"], ratios["peak_rss_celeriac_over_python"]
        print(f"  throughput celeriac/python: {t:.2f}x (target >= 2x: {'met' if t >= 2 else 'NOT met'})")
        print(f"  peak RSS   celeriac/python: {m:.3f} (target <= 0.5: {'met' if m <= 0.5 else 'NOT met'}; "
              f"Python uses {1 / m:.1f}x the memory)")
        print(f"  worker CPU celeriac/python: {ratios['cpu_celeriac_over_python']:.2f} "
              f"({rs['worker_cpu_seconds']:.1f}s vs {py['worker_cpu_seconds']:.1f}s)")
        diff = compare_samples(runs)
        ratios["sample_mean_abs_diff"] = diff
        if diff:
            print("  same sizes from both; mean absolute pixel difference of sample thumbnails (0-255): "
                  + ", ".join(f"{k} {v}" for k, v in diff.items()))
    if profile:
        print("\nwhere the time goes:")
        for g in profile["moto_get"]:
            print(f"  moto alone: the {args.photos} originals GET by boto3 from {g['threads']} thread(s) in "
                  f"{g['seconds']:.2f}s = {g['photos_per_second']:.1f} photos/s ({g['mib_per_second']:.0f} MiB/s; "
                  f"CPU s: moto {g['moto_cpu_seconds']:.1f}, boto3 client {g['client_cpu_seconds']:.1f})")
        p = profile["pillow"]
        print(f"  Pillow alone (pythumbs.render), one process, mean of {p['photos']} photos: {p['total_ms']:.0f} ms CPU "
              f"a photo; step by step: decode at reduced scale {p['decode_ms']:.0f} ms, orient {p['orient_ms']:.0f} ms, "
              f"resize {p['resize_ms']:.0f} ms, encode {p['encode_ms']:.1f} ms (a full-scale decode alone: "
              f"{p['full_decode_ms']:.0f} ms)")
        get_ms = min(g["moto_cpu_seconds"] for g in profile["moto_get"]) / args.photos * 1000
        print(f"  moto's CPU for a GET alone: {get_ms:.0f} ms a photo; the rest of its share in the runs below is "
              f"the two PUTs")
        for s in runs:
            per = s["worker_cpu_seconds"] / s["photos"] * 1000
            busy = s["system_cpu_seconds"] / (s["seconds"] * nproc) * 100
            print(f"  {s['worker']:<9} round {s['round']}: CPU a photo: worker {per:.0f} ms, moto "
                  f"{s['moto_cpu_seconds'] / s['photos'] * 1000:.0f} ms, mariadb + redis "
                  f"{(s['mariadb_cpu_seconds'] + s['redis_cpu_seconds']) / s['photos'] * 1000:.0f} ms; "
                  f"the {nproc} CPUs were {busy:.0f}% busy (other processes: {s['other_cpu_seconds']:.1f}s)")
    print(f"  machine after the runs: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")

    failures = [r for r in runs if r["bad_results"] or r["bad_rows"] or r["object_problems"] or r["unacked_left"]
                or r["queued_left"]]
    if len(kinds) == 2 and ratios.get("sample_mean_abs_diff"):
        if any(isinstance(v, str) for v in ratios["sample_mean_abs_diff"].values()):
            failures.append({"worker": "both", "round": "-", "why": "sample thumbnail sizes differ"})
    for r in runs:
        r.pop("samples", None)
    if args.keep:
        print(f"  work folder kept: {args.work_dir}")
    print(json.dumps({"bench": "celeriac-thumbnails-vs-celery", **env, "summary": summary, "ratios": ratios,
                      "profile": profile, "runs": runs, "ok": not failures}, default=str), flush=True)
    if failures:
        for r in failures:
            print(f"FAILED: {r['worker']} round {r['round']}: {r.get('why') or 'wrong or missing results'}",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
