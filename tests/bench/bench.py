"""Throughput and memory of celeriac-worker against Python Celery, on the same Redis, in one run.

Run through scripts/bench.sh, which starts a private redis-server, builds the release binary
and calls this driver with --port, --worker-bin and --work-dir. Layout of that Redis:

* db 2: `bench.src`, N `celeriac.test.add(i, i)` messages sent once by real Celery (results
  on: the `ignore_result` header is not true), the same for every run;
* db 0: the broker; before each run it is emptied, the worker starts on the empty queue
  `bench`, a warm-up task proves it consumes and stores results, and then `COPY bench.src
  bench` (one atomic command) hands it all N messages at once and starts the clock;
* db 1: the result backend, emptied before each run; the clock stops when it holds N keys.

Every result is then read back and checked (SUCCESS, value 2*i); any wrong or missing result
fails the benchmark. The RSS of the worker's process tree (Python: the main process plus its
pool children, summed at each sample) is sampled while it drains; the peak is reported.

With `--broker amqp` (scripts/bench.sh --broker amqp) RabbitMQ is the broker of both workers,
in a private vhost that scripts/bench.sh creates and deletes; results stay in db 1 of the
private Redis. AMQP has no COPY, so the N messages are sent once by real Celery into the queue
`bench` of that vhost and read back (basic.get) into a list of captured messages: body and
properties exactly as RabbitMQ stored them. Before each run the driver publishes that list afresh,
unchanged (same task ids, arguments, headers, delivery mode), into the idle queue and waits until
RabbitMQ counts all N; only then is the worker started, on the full queue. The clock starts when
the first message is taken (the queue's ready count drops below N, polled every 2 ms) and stops
when db 1 holds N results; publishing and the worker's start-up are outside it. After the drain
the queue must hold nothing ready or unacked (rabbitmqctl list_queues).

The last line printed is a JSON object with all numbers.
"""

import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

import amqp
import celery
import kombu
import psutil
import redis
from celery import Celery

HERE = os.path.dirname(os.path.abspath(__file__))
TASK = "celeriac.test.add"
QUEUE = "bench"
SRC = "bench.src"
BROKER_DB, RESULT_DB, SRC_DB = 0, 1, 2
META = "celery-task-meta-"
# Commands the driver itself sends while a worker drains; left out of the per-task counts.
# Log lines that the benchmark's own SIGTERM causes.
EXPECTED_LOG = re.compile(r"SIGTERM received: warm shutdown")
DRIVER_COMMANDS = {"dbsize", "copy", "info", "config|resetstat", "select", "ping", "hello", "client|setinfo"}


class BenchError(Exception):
    """A run that cannot be measured or whose results are wrong."""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench.sh",
        description="Drain N celeriac.test.add tasks with Python Celery (prefork -c 2) and with "
        "celeriac-worker from identical pre-filled queues on a private Redis; report drain "
        "time, tasks/s, peak RSS and the ratios.",
    )
    p.add_argument("--tasks", "-n", type=int, default=20000, help="messages per run (default 20000)")
    # Throughput follows the prefetch window (concurrency x multiplier): 64 messages held give
    # ~12k tasks/s on 2 cores, 256 ~16k (more does not help); see the sweep in the bench notes.
    p.add_argument("--concurrency", "-c", type=int, default=64, help="celeriac-worker --concurrency (default 64)")
    p.add_argument("--prefetch-multiplier", "-m", type=int, default=4,
                   help="celeriac-worker --prefetch-multiplier (default 4)")
    p.add_argument("--loglevel", default="WARNING",
                   help="celeriac-worker --loglevel (default WARNING; INFO logs two lines per task)")
    p.add_argument("--python-concurrency", type=int, default=2, help="Python prefork pool size (default 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of each worker; the order alternates between rounds, medians are reported")
    p.add_argument("--only", choices=["python", "celeriac"], help="measure one worker only")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a drain may take (default 600)")
    p.add_argument("--stall-timeout", type=float, default=60.0,
                   help="fail when no result arrives for this long while the queue is empty (default 60)")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds a worker may take to run its warm-up task (default 60)")
    p.add_argument("--sample-interval", type=float, default=0.05, help="RSS sampling period, s (default 0.05)")
    p.add_argument("--poll-interval", type=float, default=0.01, help="result-count polling period, s (default 0.01)")
    # Set by scripts/bench.sh.
    p.add_argument("--broker", choices=["redis", "amqp"], default="redis",
                   help="broker of both workers: the private Redis (default), or RabbitMQ on 127.0.0.1:5672 "
                   "in a private vhost (results stay in the private Redis)")
    p.add_argument("--port", type=int, required=True, help=argparse.SUPPRESS)
    p.add_argument("--amqp-vhost", help=argparse.SUPPRESS)
    p.add_argument("--amqp-host", default="127.0.0.1:5672", help=argparse.SUPPRESS)
    p.add_argument("--worker-bin", required=True, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", required=True, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tasks < 1 or a.concurrency < 1 or a.prefetch_multiplier < 0 or a.rounds < 1 or a.python_concurrency < 1:
        p.error("--tasks, --concurrency, --rounds and --python-concurrency must be >= 1, --prefetch-multiplier >= 0")
    if a.broker == "amqp" and not a.amqp_vhost:
        p.error("--broker amqp needs the private vhost that scripts/bench.sh creates (--amqp-vhost)")
    return a


def scrub_env():
    """Celery reads CELERY_BROKER_URL / CELERY_RESULT_BACKEND behind the app's back and our worker
    reads CELERY_* / CELERIAC_* settings: none of the caller's may leak into a run."""
    for k in list(os.environ):
        if k.startswith(("CELERY_", "CELERIAC_", "BENCH_")) or k in ("C_FORCE_ROOT",):
            del os.environ[k]


def url(port, db):
    return f"redis://127.0.0.1:{port}/{db}"


def amqp_url(args):
    return f"amqp://guest:guest@{args.amqp_host}/{args.amqp_vhost}"


def broker_url(args):
    return amqp_url(args) if args.broker == "amqp" else url(args.port, BROKER_DB)


# ---------------------------------------------------------------------------------------------
# Filling


def fill(args, r_src):
    """Sends N messages with real Celery into db 2 and renames the queue to bench.src.
    The app has no result backend, so send_task subscribes to nothing; the messages are the same
    as with one (the backend is not part of a task message) and do not ask to ignore results."""
    n = args.tasks
    r_src.flushdb()
    app = Celery("bench-fill", broker=url(args.port, SRC_DB))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i, tid in enumerate(ids):
            app.send_task(TASK, args=[i, i], queue=QUEUE, task_id=tid, producer=producer)
    app.close()
    r_src.rename(QUEUE, SRC)
    took = time.perf_counter() - t0
    have = r_src.llen(SRC)
    if have != n:
        raise BenchError(f"filling: {SRC} holds {have} messages, expected {n}")
    # The first message to be taken (workers pop from the right) is task 0.
    first = json.loads(r_src.lindex(SRC, -1))
    h = first.get("headers", {})
    if h.get("task") != TASK or h.get("id") != ids[0]:
        raise BenchError(f"filling: unexpected first message headers {h!r}")
    if h.get("ignore_result"):
        raise BenchError(f"filling: messages say ignore_result={h.get('ignore_result')!r}; results must be on")
    log(f"filled {n} messages in {took:.1f}s ({n / took:.0f}/s); "
        f"headers.ignore_result={h.get('ignore_result')!r}, {len(r_src.lindex(SRC, -1))} bytes each")
    return ids, {"fill_seconds": took, "message_bytes": len(r_src.lindex(SRC, -1)),
                 "ignore_result_header": h.get("ignore_result")}


def hand_over(r_src):
    """Puts the pre-filled messages on the live queue in one atomic step (COPY, Redis >= 6.2)."""
    if not r_src.copy(SRC, QUEUE, destination_db=BROKER_DB, replace=True):
        raise BenchError(f"COPY {SRC} {QUEUE} failed")


# ---------------------------------------------------------------------------------------------
# RabbitMQ (--broker amqp): the same N messages, published afresh before each run


def amqp_connect(args):
    conn = amqp.Connection(args.amqp_host, userid="guest", password="guest", virtual_host=args.amqp_vhost,
                           connect_timeout=10)
    conn.connect()
    return conn


def rabbitmqctl(*argv):
    return subprocess.run(["rabbitmqctl", "-q", *argv], capture_output=True, text=True, timeout=120)


def amqp_counts(args, queue=QUEUE):
    """(ready, unacked) of a queue as RabbitMQ counts them, or None when it does not exist."""
    out = rabbitmqctl("list_queues", "-p", args.amqp_vhost, "name", "messages_ready", "messages_unacknowledged")
    if out.returncode != 0:
        raise BenchError(f"rabbitmqctl list_queues failed: {out.stderr.strip()}")
    for line in out.stdout.splitlines():
        f = line.split("\t")
        if len(f) == 3 and f[0] == queue and f[1].isdigit():
            return int(f[1]), int(f[2])
    return None


def rabbitmq_proc():
    """The Erlang VM of the RabbitMQ server (beam.smp), for its CPU time; None when not found."""
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] and p.info["name"].startswith("beam") and "rabbit" in " ".join(p.info["cmdline"] or []):
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return None


def proc_cpu(proc):
    if proc is None:
        return None
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class AmqpQueue:
    """The driver's own connection to the private vhost: passive declares of the bench queue
    (ready messages, consumers) and the publishing of the captured messages."""

    def __init__(self, args):
        self.conn = amqp_connect(args)
        self.ch = self.conn.channel()

    def counts(self):
        ok = self.ch.queue_declare(QUEUE, passive=True)
        return ok.message_count, ok.consumer_count

    def publish(self, captured, timeout=120):
        for body, props, exchange, routing_key in captured:
            self.ch.basic_publish(amqp.Message(body, **props), exchange=exchange, routing_key=routing_key)
        deadline = time.monotonic() + timeout
        while self.counts()[0] < len(captured):
            if time.monotonic() > deadline:
                raise BenchError(f"publishing: RabbitMQ holds {self.counts()[0]} of {len(captured)} messages "
                                 f"after {timeout:.0f}s")
            time.sleep(0.01)

    def close(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - best effort at the end of a run
            pass


def fill_amqp(args):
    """Sends N messages with real Celery into the queue `bench` of the private vhost (Celery
    declares it as it declares its queues: durable, on the default and the `bench` exchanges),
    then takes them back with basic.get: the list of (body, properties, exchange, routing key)
    that every run is given, unchanged. Results are on, as for Redis."""
    n = args.tasks
    app = Celery("bench-fill", broker=amqp_url(args))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i, tid in enumerate(ids):
            app.send_task(TASK, args=[i, i], queue=QUEUE, task_id=tid, producer=producer)
    app.close()
    took = time.perf_counter() - t0
    q = AmqpQueue(args)
    try:
        # Celery publishes without confirms: the last messages may still be on their way.
        deadline = time.monotonic() + 60
        have, consumers = q.counts()
        while have < n and time.monotonic() < deadline:
            time.sleep(0.05)
            have, consumers = q.counts()
        if have != n or consumers:
            raise BenchError(f"filling: {QUEUE} holds {have} messages ({consumers} consumers), expected {n}")
        captured = []
        while True:
            m = q.ch.basic_get(QUEUE, no_ack=True)
            if m is None:
                break
            captured.append((m.body, dict(m.properties), m.delivery_info["exchange"], m.delivery_info["routing_key"]))
        if q.counts()[0] != 0:
            raise BenchError("filling: messages left in the queue after capturing")
        server = q.conn.server_properties
    finally:
        q.close()
    if len(captured) != n:
        raise BenchError(f"filling: captured {len(captured)} messages, expected {n}")
    for (_, props, _, _), tid in zip(captured, ids):
        if props.get("application_headers", {}).get("id") != tid:
            raise BenchError("filling: captured messages are not in the order sent")
    h = captured[0][1].get("application_headers", {})
    if h.get("task") != TASK or h.get("id") != ids[0]:
        raise BenchError(f"filling: unexpected first message headers {h!r}")
    if h.get("ignore_result"):
        raise BenchError(f"filling: messages say ignore_result={h.get('ignore_result')!r}; results must be on")
    size = len(captured[0][0].encode() if isinstance(captured[0][0], str) else captured[0][0])
    log(f"filled and captured {n} messages in {took:.1f}s ({n / took:.0f}/s sent); "
        f"headers.ignore_result={h.get('ignore_result')!r}, {size} bytes of body each, "
        f"delivery_mode {captured[0][1].get('delivery_mode')}, exchange {captured[0][2]!r}, "
        f"routing key {captured[0][3]!r}")
    info = {"fill_seconds": took, "message_bytes": size, "ignore_result_header": h.get("ignore_result"),
            "rabbitmq_server": server.get("version"), "amqp_vhost": args.amqp_vhost}
    return ids, captured, info


# ---------------------------------------------------------------------------------------------
# Process-tree measurements


def tree(proc):
    try:
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree_rss(proc):
    total, count = 0, 0
    for p in tree(proc):
        try:
            total += p.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            pass
    return total, count


def tree_pss(proc):
    """Proportional set size summed over the tree: pages shared by the prefork children with
    their parent count once in all, where the RSS sum counts them once per process."""
    total = 0
    for p in tree(proc):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return total


def tree_cpu(proc):
    total = 0.0
    for p in tree(proc):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """Samples the RSS of a process tree (summed over its processes) until stopped."""

    def __init__(self, proc, interval):
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.stopping = threading.Event()
        self.peak, self.peak_pss, self.samples, self.max_procs = 0, 0, 0, 0

    def sample(self):
        rss, count = tree_rss(self.proc)
        self.peak = max(self.peak, rss)
        self.peak_pss = max(self.peak_pss, tree_pss(self.proc))
        self.max_procs = max(self.max_procs, count)
        self.samples += 1

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()
        self.sample()


# ---------------------------------------------------------------------------------------------
# Workers


def worker_command(kind, args):
    if kind == "python":
        celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
        return [celery_bin, "-A", "benchapp", "worker", "-P", "prefork", "-c", str(args.python_concurrency),
                "-Q", QUEUE, "-l", "warning", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    return [args.worker_bin, "--broker", broker_url(args), "--result-backend", url(args.port, RESULT_DB),
            "-Q", QUEUE, "--concurrency", str(args.concurrency), "--prefetch-multiplier",
            str(args.prefetch_multiplier), "-l", args.loglevel]


def worker_env(kind, args):
    env = dict(os.environ)
    if kind == "python":
        env["BENCH_BROKER_URL"] = broker_url(args)
        env["BENCH_RESULT_BACKEND"] = url(args.port, RESULT_DB)
        env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Worker:
    def __init__(self, kind, args, log_path):
        self.kind, self.args, self.log_path = kind, args, log_path
        self.cmd = worker_command(kind, args)
        self.popen = None
        self.pids_file = os.path.join(args.work_dir, "workers.pids")

    def start(self):
        self.logf = open(self.log_path, "wb")
        self.popen = subprocess.Popen(self.cmd, cwd=HERE, env=worker_env(self.kind, self.args),
                                      stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        # scripts/bench.sh kills this process group if the driver dies without stopping it.
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
        """SIGTERM to the main process (warm shutdown), then SIGKILL to its group."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.kind} worker did not stop within {grace:.0f}s of SIGTERM; killing it")
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the main process and any pool child left
        except ProcessLookupError:
            pass
        except PermissionError:
            pass
        code = self.popen.wait()
        self.logf.close()
        open(self.pids_file, "w").close()
        return code

    def log_problems(self):
        """Warning and error lines of the worker's log, less those our own SIGTERM causes."""
        pat = re.compile(r"\b(WARN|WARNING|ERROR|CRITICAL|FATAL)\b|Traceback|panicked")
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if pat.search(line) and not EXPECTED_LOG.search(line)]


def send_warmup(args, task_id):
    app = Celery("bench-warmup", broker=url(args.port, BROKER_DB))
    app.send_task(TASK, args=[-1, -2], queue=QUEUE, task_id=task_id)
    app.close()


def wait_until(cond, timeout, worker, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        worker.check_alive(f"while {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"{worker.kind} worker: timed out after {timeout:.0f}s {what}\n" + worker.log_tail())
        time.sleep(interval)


def command_stats(r):
    """Calls and microseconds per command since CONFIG RESETSTAT. Commands run by a script count
    both on their own and inside the script's EVALSHA time."""
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in r.info("commandstats").items()}


def redis_stats(r):
    s = r.info("stats")
    return s["total_reads_processed"], s["total_commands_processed"]


def redis_cpu(r):
    c = r.info("cpu")
    return c["used_cpu_user"] + c["used_cpu_sys"]


def verify(r_res, ids):
    """Reads every result back: each must be SUCCESS with 2*i. Returns (bad count, first few
    bad ones, the record of task 0)."""
    bad, examples, sample = 0, [], None
    for start in range(0, len(ids), 2000):
        chunk = ids[start:start + 2000]
        for off, raw in enumerate(r_res.mget([META + t for t in chunk])):
            i = start + off
            meta = json.loads(raw) if raw is not None else None
            if i == 0:
                sample = meta
            if meta is None or meta.get("status") != "SUCCESS" or meta.get("result") != 2 * i \
                    or meta.get("task_id") != chunk[off]:
                bad += 1
                if len(examples) < 5:
                    examples.append(f"task {i} ({chunk[off]}): " + ("no result" if raw is None else repr(raw[:300])))
    return bad, examples, sample


def record_drain(out, n, drain, sampler, hwm, worker_cpu, redis_cpu_seconds, stats, reads):
    """The drain's figures into `out`; `reads` are Redis' socket reads during it, less the polls."""
    out.update(drain_seconds=drain, tasks_per_second=n / drain, peak_rss=sampler.peak, peak_pss=sampler.peak_pss,
               rss_samples=sampler.samples, max_processes=sampler.max_procs, vm_hwm=hwm,
               worker_cpu_seconds=worker_cpu, redis_cpu_seconds=redis_cpu_seconds)
    worker_stats = {k: v for k, v in stats.items() if k not in DRIVER_COMMANDS}
    worker_calls = {k: calls for k, (calls, _) in worker_stats.items()}
    out["redis_calls"] = dict(sorted(worker_calls.items(), key=lambda kv: -kv[1]))
    out["redis_calls_per_task"] = sum(worker_calls.values()) / n
    # Microseconds per command (a script's or MULTI's time includes the commands inside it).
    out["redis_usec"] = {k: usec for k, (_, usec) in sorted(worker_stats.items(), key=lambda kv: -kv[1][1])}
    # Redis CPU per task: command execution plus the socket work of each round trip.
    out["redis_cpu_usec_per_task"] = redis_cpu_seconds / n * 1e6
    # Socket reads Redis served, less the driver's (COPY, INFO x2): about one per round trip of
    # the worker (a pipeline arrives in one read).
    out["redis_reads_per_task"] = max(0, reads - 3) / n


def record_results(out, r_res, ids):
    """Every result, checked."""
    bad, examples, sample = verify(r_res, ids)
    out["bad_results"] = bad
    out["sample_record"] = sample
    if bad:
        out["bad_examples"] = examples


def record_log(out, w):
    out["log"] = w.log_path
    problems = w.log_problems()
    out["log_problem_lines"] = len(problems)
    out["log_problem_examples"] = problems[:8]


def run_one(kind, rnd, args, ids, conns):
    r_broker, r_res, r_src = conns
    n = len(ids)
    r_broker.flushdb()
    r_res.flushdb()
    w = Worker(kind, args, os.path.join(args.work_dir, f"{kind}-round{rnd}.log"))
    out = {"worker": kind, "round": rnd, "command": shlex.join(w.cmd)}
    t_start = time.perf_counter()
    w.start()
    try:
        warm = f"bench-warmup-{kind}-{uuid.uuid4()}"
        send_warmup(args, warm)
        wait_until(lambda: r_res.exists(META + warm), args.ready_timeout, w, "waiting for the warm-up task's result")
        out["ready_seconds"] = time.perf_counter() - t_start
        meta = json.loads(r_res.get(META + warm))
        if meta.get("status") != "SUCCESS" or meta.get("result") != -3:
            raise BenchError(f"{kind} warm-up task: wrong result {meta!r}")
        # Idle: the warm-up message acked, nothing queued. Then an empty result db.
        wait_until(lambda: r_broker.llen(QUEUE) == 0 and r_broker.hlen("unacked") == 0, 30, w,
                   "waiting for the warm-up message to be acked")
        r_res.delete(META + warm)
        time.sleep(0.3)
        if r_res.dbsize() != 0:
            raise BenchError(f"result db holds unexpected keys after warm-up: {r_res.keys('*')[:5]!r}")
        out["idle_rss"], out["processes"] = tree_rss(w.proc)

        sampler = Sampler(w.proc, args.sample_interval)
        sampler.sample()
        r_broker.config_resetstat()
        cpu0, rcpu0 = tree_cpu(w.proc), redis_cpu(r_broker)
        reads0, _ = redis_stats(r_broker)
        sampler.start()
        t0 = time.perf_counter()
        hand_over(r_src)
        last_note, done, polls = t0, 0, 0
        last_done, last_progress = -1, t0
        while True:
            done = r_res.dbsize()
            polls += 1
            now = time.perf_counter()
            if done >= n:
                break
            if done != last_done:
                last_done, last_progress = done, now
            elif now - last_progress > args.stall_timeout and r_broker.llen(QUEUE) == 0:
                sampler.stop()
                raise BenchError(f"{kind} worker: results stalled at {done}/{n} for {args.stall_timeout:.0f}s with "
                                 f"the queue empty and {r_broker.hlen('unacked')} messages unacked: results lost?\n"
                                 + w.log_tail())
            if now - t0 > args.timeout:
                sampler.stop()
                raise BenchError(f"{kind} worker: drain timed out after {args.timeout:.0f}s with {done}/{n} results, "
                                 f"{r_broker.llen(QUEUE)} still queued, {r_broker.hlen('unacked')} unacked\n"
                                 + w.log_tail())
            if not w.alive():
                sampler.stop()
                w.check_alive(f"during the drain ({done}/{n} results)")
            if now - last_note > 5:
                log(f"  {kind}: {done}/{n} results after {now - t0:.0f}s")
                last_note = now
            time.sleep(args.poll_interval)
        t1 = time.perf_counter()
        sampler.stop()
        cpu1, rcpu1 = tree_cpu(w.proc), redis_cpu(r_broker)
        reads1, _ = redis_stats(r_broker)
        stats = command_stats(r_broker)
        hwm = vm_hwm(w.proc.pid) if kind == "celeriac" else None

        record_drain(out, n, t1 - t0, sampler, hwm, cpu1 - cpu0, rcpu1 - rcpu0, stats, reads1 - reads0 - polls)
        record_results(out, r_res, ids)
        # Everything acked, nothing left queued (acks may trail the results a little).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (r_broker.hlen("unacked") or r_broker.llen(QUEUE)):
            time.sleep(0.05)
        out["unacked_left"] = r_broker.hlen("unacked")
        out["queued_left"] = r_broker.llen(QUEUE)
        out["extra_result_keys"] = r_res.dbsize() - n
    finally:
        out["exit_code"] = w.stop()
    record_log(out, w)
    return out


def run_one_amqp(kind, rnd, args, ids, captured, r_res):
    """One run on RabbitMQ: the captured messages published into the idle queue, then the worker
    started on the full queue; the clock runs from the first message taken to the N-th result."""
    n = len(ids)
    r_res.flushdb()
    q = AmqpQueue(args)
    w = Worker(kind, args, os.path.join(args.work_dir, f"{kind}-round{rnd}.log"))
    out = {"worker": kind, "round": rnd, "command": shlex.join(w.cmd)}
    try:
        ready, consumers = q.counts()
        if ready or consumers:
            raise BenchError(f"queue {QUEUE} is not idle before the run: {ready} messages, {consumers} consumers")
        tp = time.perf_counter()
        q.publish(captured)
        out["publish_seconds"] = time.perf_counter() - tp
        if q.counts() != (n, 0):
            raise BenchError(f"queue {QUEUE} holds {q.counts()} (messages, consumers) after publishing, expected {n}")
        # A second of quiet: RabbitMQ's writes of the persistent messages end before the worker starts.
        time.sleep(1.0)
        beam = rabbitmq_proc()
        r_res.config_resetstat()
        rcpu0 = redis_cpu(r_res)
        reads0, _ = redis_stats(r_res)
        t_start = time.perf_counter()
        w.start()
        sampler = Sampler(w.proc, args.sample_interval)
        sampler.start()
        # The first message taken: RabbitMQ's ready count drops below N.
        deadline = time.monotonic() + args.ready_timeout
        while q.counts()[0] >= n:
            if not w.alive():
                sampler.stop()
                w.check_alive("before taking its first message")
            if time.monotonic() > deadline:
                sampler.stop()
                raise BenchError(f"{kind} worker took no message within {args.ready_timeout:.0f}s\n" + w.log_tail())
            time.sleep(0.002)
        t0 = time.perf_counter()
        cpu0, bcpu0 = tree_cpu(w.proc), proc_cpu(beam)
        # The started worker as it takes its first message: the counterpart of the idle RSS.
        out["idle_rss"], out["processes"] = tree_rss(w.proc)
        out["ready_seconds"] = t0 - t_start
        last_note, done, polls = t0, 0, 0
        last_done, last_progress = -1, t0
        while True:
            done = r_res.dbsize()
            polls += 1
            now = time.perf_counter()
            if done >= n:
                break
            if done != last_done:
                last_done, last_progress = done, now
            elif now - last_progress > args.stall_timeout and q.counts()[0] == 0:
                sampler.stop()
                raise BenchError(f"{kind} worker: results stalled at {done}/{n} for {args.stall_timeout:.0f}s with "
                                 f"the queue empty (ready, unacked: {amqp_counts(args)}): results lost?\n"
                                 + w.log_tail())
            if now - t0 > args.timeout:
                sampler.stop()
                raise BenchError(f"{kind} worker: drain timed out after {args.timeout:.0f}s with {done}/{n} results, "
                                 f"(ready, unacked): {amqp_counts(args)}\n" + w.log_tail())
            if not w.alive():
                sampler.stop()
                w.check_alive(f"during the drain ({done}/{n} results)")
            if now - last_note > 5:
                log(f"  {kind}: {done}/{n} results after {now - t0:.0f}s")
                last_note = now
            time.sleep(args.poll_interval)
        t1 = time.perf_counter()
        sampler.stop()
        cpu1, rcpu1, bcpu1 = tree_cpu(w.proc), redis_cpu(r_res), proc_cpu(beam)
        reads1, _ = redis_stats(r_res)
        stats = command_stats(r_res)
        # The whole server's CPU (other vhosts' clients included, if any) over the drain.
        out["rabbitmq_cpu_seconds"] = None if bcpu0 is None or bcpu1 is None else bcpu1 - bcpu0
        hwm = vm_hwm(w.proc.pid) if kind == "celeriac" else None

        # Redis is the result backend only here: its commands are the workers' result writes.
        record_drain(out, n, t1 - t0, sampler, hwm, cpu1 - cpu0, rcpu1 - rcpu0, stats, reads1 - reads0 - polls)
        record_results(out, r_res, ids)
        # Everything acked, nothing left ready (acks may trail the results a little).
        deadline = time.monotonic() + 15
        counts = amqp_counts(args)
        while time.monotonic() < deadline and counts != (0, 0):
            time.sleep(0.5)
            counts = amqp_counts(args)
        if counts is None:
            raise BenchError(f"queue {QUEUE} vanished during the run")
        out["queued_left"], out["unacked_left"] = counts
        out["extra_result_keys"] = r_res.dbsize() - n
    finally:
        out["exit_code"] = w.stop()
        q.close()
    # Whatever the worker held at its exit is back on the queue: the next run needs it empty.
    left = amqp_counts(args)
    if left and left[0]:
        log(f"  {kind}: {left[0]} messages back on the queue after the worker stopped; purging them")
        out["queued_left"] = max(out.get("queued_left", 0), left[0])
        rabbitmqctl("purge_queue", "-p", args.amqp_vhost, QUEUE)
    record_log(out, w)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def mib(b):
    return None if b is None else b / 1048576


def fmt_run(r):
    hwm = f", VmHWM {mib(r['vm_hwm']):.1f} MiB" if r.get("vm_hwm") else ""
    on_amqp = "publish_seconds" in r
    idle = "at first message" if on_amqp else "idle"
    ready = (f"published in {r['publish_seconds']:.2f}s (not timed), first message taken {r['ready_seconds']:.2f}s "
             f"after start" if on_amqp else f"ready in {r['ready_seconds']:.2f}s")
    redis_what = "redis (results only)" if on_amqp else "redis"
    if on_amqp and r.get("rabbitmq_cpu_seconds") is not None:
        ready += (f"; RabbitMQ CPU {r['rabbitmq_cpu_seconds']:.2f}s over the drain "
                  f"({r['rabbitmq_cpu_seconds'] / r['tasks_per_second'] / r['drain_seconds'] * 1e6:.0f} us/task)")
    lines = [
        f"  {r['worker']:<9} round {r['round']}: drain {r['drain_seconds']:.3f}s  "
        f"{r['tasks_per_second']:.0f} tasks/s  peak RSS {mib(r['peak_rss']):.1f} MiB "
        f"({idle} {mib(r['idle_rss']):.1f} MiB, {r['max_processes']} process(es), {r['rss_samples']} samples{hwm}; "
        f"peak PSS {mib(r['peak_pss']):.1f} MiB)",
        f"            CPU: worker {r['worker_cpu_seconds']:.2f}s ({r['worker_cpu_seconds'] / r['drain_seconds'] * 100:.0f}% of one core), "
        f"redis {r['redis_cpu_seconds']:.2f}s; {ready}; exit code {r['exit_code']}",
        f"            {redis_what}: {r['redis_cpu_usec_per_task']:.1f} us CPU/task, "
        f"{r['redis_reads_per_task']:.2f} client reads (~round trips)/task, "
        f"{r['redis_calls_per_task']:.2f} commands/task incl. in scripts: "
        + ", ".join(f"{k} {v}" for k, v in list(r["redis_calls"].items())[:8]),
        f"            results: {r['bad_results']} wrong/missing, {r['extra_result_keys']} extra keys; "
        f"left unacked {r['unacked_left']}, left queued {r['queued_left']}; "
        f"{r['log_problem_lines']} warning/error log lines",
    ]
    for ex in r.get("bad_examples", []):
        lines.append(f"            BAD: {ex}")
    for ex in r["log_problem_examples"][:3]:
        lines.append(f"            log: {ex[:200]}")
    return "\n".join(lines)


def summarize(runs, kind):
    mine = [r for r in runs if r["worker"] == kind]
    if not mine:
        return None
    drain = statistics.median(r["drain_seconds"] for r in mine)
    return {
        "runs": len(mine),
        "drain_seconds": drain,
        "tasks_per_second": mine[0]["tasks_per_second"] * mine[0]["drain_seconds"] / drain,
        "peak_rss_bytes": max(r["peak_rss"] for r in mine),
        "peak_rss_mib": mib(max(r["peak_rss"] for r in mine)),
        "peak_pss_bytes": max(r["peak_pss"] for r in mine),
        "peak_pss_mib": mib(max(r["peak_pss"] for r in mine)),
        "idle_rss_mib": mib(max(r["idle_rss"] for r in mine)),
        "vm_hwm_mib": mib(max((r["vm_hwm"] or 0) for r in mine)) or None,
        "worker_cpu_seconds": statistics.median(r["worker_cpu_seconds"] for r in mine),
        "redis_cpu_seconds": statistics.median(r["redis_cpu_seconds"] for r in mine),
        **({"rabbitmq_cpu_seconds": statistics.median(r["rabbitmq_cpu_seconds"] for r in mine)}
           if all(r.get("rabbitmq_cpu_seconds") is not None for r in mine) else {}),
        "redis_calls_per_task": statistics.median(r["redis_calls_per_task"] for r in mine),
        "redis_reads_per_task": statistics.median(r["redis_reads_per_task"] for r in mine),
        "redis_cpu_usec_per_task": statistics.median(r["redis_cpu_usec_per_task"] for r in mine),
        "command": mine[0]["command"],
    }


def record_shape(rec):
    return None if rec is None else {k: type(v).__name__ for k, v in rec.items()}


def main(argv):
    args = parse_args(argv)
    scrub_env()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.work_dir = os.path.abspath(args.work_dir)
    r_broker = redis.Redis(port=args.port, db=BROKER_DB, decode_responses=True)
    r_res = redis.Redis(port=args.port, db=RESULT_DB, decode_responses=True)
    r_src = redis.Redis(port=args.port, db=SRC_DB, decode_responses=True)
    server = r_broker.info("server")
    redis_version = server["redis_version"]
    if tuple(int(x) for x in redis_version.split(".")[:2]) < (6, 2):
        raise BenchError(f"redis-server {redis_version} has no COPY (needs >= 6.2)")
    try:
        celeriac_version = subprocess.run([args.worker_bin, "--version"], capture_output=True, text=True,
                                          check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise BenchError(f"cannot run {args.worker_bin}: {e}") from e
    try:
        rev = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip() or None
    except OSError:
        rev = None
    nproc = len(os.sched_getaffinity(0))
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), platform.machine())
    env = {
        "broker": args.broker, "tasks": args.tasks, "nproc": nproc, "cpu": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "celery": celery.__version__, "kombu": kombu.__version__,
        "redis_py": redis.__version__, "redis_server": redis_version, "celeriac": celeriac_version,
        "git": rev, "concurrency": args.concurrency, "prefetch_multiplier": args.prefetch_multiplier,
        "celeriac_loglevel": args.loglevel, "python_concurrency": args.python_concurrency,
        "rounds": args.rounds,
    }
    print(f"celeriac bench: N={args.tasks} tasks of {TASK}(i, i), nproc={nproc} ({cpu_model}), "
          f"{env['memory_gib']} GiB", flush=True)
    print(f"  Python {env['python']}, Celery {env['celery']}, kombu {env['kombu']}, redis-py {env['redis_py']}, "
          f"redis-server {redis_version} (private, 127.0.0.1:{args.port}); {celeriac_version} (release, git {rev})",
          flush=True)
    if args.broker == "amqp":
        print(f"  broker: RabbitMQ at {args.amqp_host}, private vhost {args.amqp_vhost!r} (py-amqp {amqp.__version__}); "
              f"results in the private Redis", flush=True)
        env["py_amqp"] = amqp.__version__
        ids, captured, fill_info = fill_amqp(args)
    else:
        ids, fill_info = fill(args, r_src)
    env.update(fill_info)
    kinds = [args.only] if args.only else ["python", "celeriac"]
    runs = []
    for rnd in range(1, args.rounds + 1):
        order = kinds if rnd % 2 == 1 else kinds[::-1]
        for kind in order:
            log(f"round {rnd}: {kind} worker draining {args.tasks} tasks")
            if args.broker == "amqp":
                r = run_one_amqp(kind, rnd, args, ids, captured, r_res)
            else:
                r = run_one(kind, rnd, args, ids, (r_broker, r_res, r_src))
            runs.append(r)
            log(f"  {kind}: {r['drain_seconds']:.2f}s, {r['tasks_per_second']:.0f} tasks/s, "
                f"peak RSS {mib(r['peak_rss']):.1f} MiB")

    print("\nworker commands:", flush=True)
    for kind in kinds:
        print(f"  {kind:<9} {next(r['command'] for r in runs if r['worker'] == kind)}")
    print("\nruns:")
    for r in runs:
        print(fmt_run(r))

    summary = {k: summarize(runs, k) for k in kinds}
    ratios = {}
    on = " on RabbitMQ" if args.broker == "amqp" else ""
    print(f"\nsummary{on} (median drain over {args.rounds} round(s), max peak RSS), N={args.tasks}:")
    for kind in kinds:
        s = summary[kind]
        hwm = f", VmHWM {s['vm_hwm_mib']:.1f} MiB" if s["vm_hwm_mib"] else ""
        if s.get("rabbitmq_cpu_seconds") is not None:
            hwm += f"; RabbitMQ CPU {s['rabbitmq_cpu_seconds']:.2f}s"
        print(f"  {kind:<9} drain {s['drain_seconds']:8.3f}s  {s['tasks_per_second']:8.0f} tasks/s  "
              f"peak RSS {s['peak_rss_mib']:7.1f} MiB (PSS {s['peak_pss_mib']:.1f} MiB){hwm}")
    if len(kinds) == 2:
        py, rs = summary["python"], summary["celeriac"]
        ratios = {
            "throughput_celeriac_over_python": rs["tasks_per_second"] / py["tasks_per_second"],
            "peak_rss_celeriac_over_python": rs["peak_rss_bytes"] / py["peak_rss_bytes"],
            "peak_rss_python_over_celeriac": py["peak_rss_bytes"] / rs["peak_rss_bytes"],
            "peak_pss_celeriac_over_python": rs["peak_pss_bytes"] / py["peak_pss_bytes"],
            "cpu_celeriac_over_python": rs["worker_cpu_seconds"] / py["worker_cpu_seconds"],
        }
        print(f"  throughput celeriac/python: {ratios['throughput_celeriac_over_python']:.2f}x")
        print(f"  peak RSS   celeriac/python: {ratios['peak_rss_celeriac_over_python']:.3f} "
              f"(Python uses {ratios['peak_rss_python_over_celeriac']:.1f}x the memory; "
              f"PSS ratio {ratios['peak_pss_celeriac_over_python']:.3f})")
        print(f"  worker CPU celeriac/python: {ratios['cpu_celeriac_over_python']:.2f} "
              f"({rs['worker_cpu_seconds']:.2f}s vs {py['worker_cpu_seconds']:.2f}s for the drain)")
        shapes = {k: record_shape(next(r["sample_record"] for r in runs if r["worker"] == k)) for k in kinds}
        if shapes["python"] != shapes["celeriac"]:
            print(f"  note: result records differ in shape: python {shapes['python']} vs celeriac {shapes['celeriac']}")

    failures = [r for r in runs if r["bad_results"] or r["unacked_left"] or r["queued_left"]]
    for r in runs:
        r.pop("sample_record", None)
    print(json.dumps({"bench": "celeriac-vs-celery", **env, "summary": summary, "ratios": ratios, "runs": runs,
                      "ok": not failures}), flush=True)
    if failures:
        for r in failures:
            print(f"FAILED: {r['worker']} round {r['round']}: {r['bad_results']} wrong or missing results, "
                  f"{r['unacked_left']} messages left unacked, {r['queued_left']} left queued", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
