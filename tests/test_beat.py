"""celeriac-beat against real Celery: its messages are those Python beat sends and both kinds
of worker run them; with two beat processes every tick is sent exactly once, also across a
`kill -9` of the leader and a graceful stop; a restart neither repeats nor skips a tick."""

import datetime
import json
import os
import signal
import sys
import time

import pytest

from support import ROOT, meta, wait_for

EVERY_SECOND = """
[entries.tick]
task = "celeriac.test.add"
args = [2, 3]
every = 1
queue = "beat"
catch_up = "{catch_up}"
"""


def messages(broker, key):
    """The envelopes on a list, oldest first."""
    return [json.loads(x) for x in reversed(broker.lrange(key, 0, -1))]


def parse_tick(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc)


def ticks_of(*beats):
    """Every (entry, tick) logged as sent by these beats, as a sorted list."""
    return sorted((e, parse_tick(t)) for b in beats for (e, t, _) in b.sent_lines())


def leader_of(beats):
    leaders = [b for b in beats if b.proc.poll() is None and "took the beat lease" in b.log()
               and b.log().rfind("took the beat lease") > b.log().rfind("standing by")]
    return leaders[-1] if leaders else None


# ------------------------------------------------------------------------------------------
# The referee: messages of real Python beat and of ours, entry by entry

PY_BEAT_APP = '''
import datetime, os
from celery import Celery
app = Celery("beatref", broker=os.environ["BEATREF_BROKER"])
app.conf.update(timezone=os.environ.get("BEATREF_TZ", "UTC"), broker_connection_retry_on_startup=True,
                beat_max_loop_interval=0.2)
app.conf.beat_schedule = {
    "plain": {"task": "celeriac.test.add", "schedule": 1.0, "args": [2, 3]},
    "kw": {"task": "celeriac.test.echo", "schedule": 1.0, "args": [1], "kwargs": {"k": "v"}},
    "media": {"task": "celeriac.test.add", "schedule": 1.0, "args": [1, 1], "options": {"queue": "media"}},
    "prio": {"task": "celeriac.test.add", "schedule": 1.0, "args": [1, 2], "options": {"priority": 5}},
    "exp": {"task": "celeriac.test.add", "schedule": 1.0, "args": [1, 3], "options": {"expires": 30}},
    "hdr": {"task": "celeriac.test.add", "schedule": 1.0, "args": [1, 4],
            "options": {"headers": {"x-source": "beat"}}},
    "noargs": {"task": "celeriac.test.request", "schedule": 1.0},
    "exrk": {"task": "celeriac.test.add", "schedule": 1.0, "args": [9, 9],
             "options": {"exchange": "ex1", "routing_key": "rk1"}},
    "expat": {"task": "celeriac.test.add", "schedule": 1.0, "args": [1, 5],
              "options": {"expires": datetime.datetime.fromisoformat("2030-06-01T12:00:00.123456+02:00")}},
}
'''

OUR_SCHEDULE = """
[entries.plain]
task = "celeriac.test.add"
every = 1
args = [2, 3]
[entries.kw]
task = "celeriac.test.echo"
every = 1
args = [1]
kwargs = { k = "v" }
[entries.media]
task = "celeriac.test.add"
every = 1
args = [1, 1]
queue = "media"
[entries.prio]
task = "celeriac.test.add"
every = 1
args = [1, 2]
priority = 5
[entries.exp]
task = "celeriac.test.add"
every = 1
args = [1, 3]
expires = 30
[entries.hdr]
task = "celeriac.test.add"
every = 1
args = [1, 4]
headers = { x-source = "beat" }
[entries.noargs]
task = "celeriac.test.request"
every = 1
[entries.exrk]
task = "celeriac.test.add"
every = 1
args = [9, 9]
exchange = "ex1"
routing_key = "rk1"
[entries.expat]
task = "celeriac.test.add"
every = 1
args = [1, 5]
expires = 2030-06-01T12:00:00.123456+02:00
"""

LISTS = ["celery", "media", "celery\x06\x163", "q1"]
ENTRIES = 9
EX1_BINDING = "rk1\x06\x16\x06\x16q1"  # queue q1 bound to exchange ex1 with routing key rk1


def collect_by_args(broker):
    """{argsrepr: (list key, envelope)} for everything queued."""
    out = {}
    for key in LISTS:
        for env in messages(broker, key):
            out.setdefault(env["headers"]["argsrepr"], (key, env))
    return out


def shape(value):
    """A value's type and, for objects, their keys in order: what must match."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    return type(value).__name__


@pytest.mark.once
def test_messages_have_the_shape_python_beat_gives_them(redis_server, broker, start_beat, tmp_path):
    """Celery 5.7's beat is the referee. (5.3's beat sends no `celery_beat_task` header and
    `ignore_result: false`; in the 5.3 pass, its worker running our messages is the check.)"""
    (tmp_path / "beatref.py").write_text(PY_BEAT_APP)
    broker.sadd("_kombu.binding.ex1", EX1_BINDING)
    env = dict(os.environ, BEATREF_BROKER=redis_server.url(0), PYTHONPATH=str(tmp_path))
    log = open(tmp_path / "python-beat.log", "wb")
    py = __import__("subprocess").Popen(
        [sys.executable, "-m", "celery", "-A", "beatref", "beat", "-s", str(tmp_path / "celerybeat-schedule"),
         "-l", "INFO"], cwd=str(tmp_path), env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: len(collect_by_args(broker)) == ENTRIES, timeout=30, what="all of Python beat's entries")
    finally:
        py.kill()
        py.wait(10)
        log.close()
    python = collect_by_args(broker)
    broker.flushdb()
    broker.sadd("_kombu.binding.ex1", EX1_BINDING)
    beat = start_beat(OUR_SCHEDULE)
    wait_for(lambda: len(collect_by_args(broker)) == ENTRIES, timeout=15, what="all our entries")
    beat.signal(signal.SIGTERM)
    ours = collect_by_args(broker)
    for argsrepr, (py_key, py_env) in python.items():
        our_key, our_env = ours[argsrepr]
        assert our_key == py_key, argsrepr
        assert shape(our_env) == shape(py_env), argsrepr
        for field in ("task", "argsrepr", "kwargsrepr", "ignore_result", "celery_beat_task", "retries", "timelimit",
                      "x-source", "lang", "stamps"):
            assert our_env["headers"].get(field) == py_env["headers"].get(field), (argsrepr, field)
        assert our_env["headers"]["root_id"] == our_env["headers"]["id"]
        for field in ("delivery_info", "priority", "delivery_mode", "body_encoding"):
            assert our_env["properties"][field] == py_env["properties"][field], (argsrepr, field)
        assert our_env["content-type"] == py_env["content-type"] == "application/json"
        body = lambda e: json.loads(__import__("base64").b64decode(e["body"]))
        assert body(our_env) == body(py_env), argsrepr
    assert ours["[1, 5]"][1]["headers"]["expires"] == python["[1, 5]"][1]["headers"]["expires"]
    _, exp = ours["[1, 3]"]
    assert exp["properties"]["expiration"] == "30000"
    sent = datetime.datetime.fromisoformat(exp["headers"]["expires"]) - datetime.timedelta(seconds=30)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - sent).total_seconds()) < 10


def test_python_and_celeriac_workers_run_what_beat_sends(broker, backend, start_beat, start_worker,
                                                         start_python_worker):
    start_beat(EVERY_SECOND.format(catch_up="once"))
    python = start_python_worker("-Q", "beat")
    wait_for(lambda: backend.keys("celery-task-meta-*"), timeout=15, what="a result from the Python worker")
    python.kill()
    first = {k for k in backend.keys("celery-task-meta-*")}
    assert all(meta(backend, k.decode().removeprefix("celery-task-meta-"))["result"] == 5 for k in first)
    start_worker("-Q", "beat")
    wait_for(lambda: len(set(backend.keys("celery-task-meta-*")) - first) >= 2, timeout=15,
             what="results from celeriac-worker")
    for k in set(backend.keys("celery-task-meta-*")) - first:
        record = meta(backend, k.decode().removeprefix("celery-task-meta-"))
        assert record["status"] == "SUCCESS" and record["result"] == 5


# ------------------------------------------------------------------------------------------
# Exactly once with several beats


@pytest.mark.once
@pytest.mark.timeout(150)
def test_two_beats_send_every_tick_once_through_a_kill_and_a_stop(broker, start_beat):
    """Two beats for about 60 s on a 1 s entry: a `kill -9` of the leader at ~20 s (the killed one
    comes back as a standby), a graceful stop of the leader at ~45 s. The ticks inside the
    takeover window are caught up (catch_up = "all"), none is sent twice."""
    schedule = EVERY_SECOND.format(catch_up="all")
    a = start_beat(schedule)
    wait_for(lambda: "took the beat lease" in a.log(), timeout=10, what="a leader")
    b = start_beat(schedule)
    beats = [a, b]
    time.sleep(20)
    leader = leader_of(beats)
    assert leader is a
    standby = b
    killed_at = time.time()
    leader.kill()
    wait_for(lambda: "took the beat lease" in standby.log(), timeout=8, what="the standby to take over")
    takeover = time.time() - killed_at
    c = start_beat(schedule)
    beats.append(c)
    time.sleep(20)
    assert leader_of(beats) is standby
    stopped_at = time.time()
    standby.signal(signal.SIGTERM)
    wait_for(lambda: "took the beat lease" in c.log(), timeout=5, what="the third beat to take over")
    handover = time.time() - stopped_at
    time.sleep(15)
    c.signal(signal.SIGTERM)
    c.wait(10)
    standby.wait(10)

    sent = ticks_of(*beats)
    queued = messages(broker, "beat")
    assert len(queued) == len(sent)
    assert len({m["headers"]["id"] for m in queued}) == len(queued)
    times = [t for _, t in sent]
    assert len(set(times)) == len(times), "a tick was sent twice"
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert all(abs(g - 1.0) < 0.01 for g in gaps), f"ticks missing or off the grid: {gaps}"
    assert len(times) >= 55
    assert takeover < 5, takeover
    assert handover < 2, handover
    late = [l for b in beats for (_, _, l) in b.sent_lines() if l > 1000]
    print(f"\nHA: {len(times)} ticks, each once; takeover after kill -9 {takeover:.2f} s, "
          f"after SIGTERM {handover:.2f} s; {len(late)} ticks caught up late "
          f"(max {max(late, default=0)} ms)")
    assert broker.hget("celeriac.beat.runs", "tick") == str(len(times)).encode()


@pytest.mark.once
def test_a_restart_neither_repeats_nor_skips_a_tick(broker, start_beat):
    schedule = EVERY_SECOND.format(catch_up="all")
    a = start_beat(schedule)
    wait_for(lambda: len(a.sent_lines()) >= 3, timeout=10, what="three ticks")
    a.signal(signal.SIGTERM)
    a.wait(10)
    time.sleep(3)
    b = start_beat(schedule)
    wait_for(lambda: len(b.sent_lines()) >= 6, timeout=10, what="six more ticks")
    b.signal(signal.SIGTERM)
    b.wait(10)
    times = [t for _, t in ticks_of(a, b)]
    assert len(set(times)) == len(times)
    assert all(abs((y - x).total_seconds() - 1.0) < 0.01 for x, y in zip(times, times[1:]))
    assert len(messages(broker, "beat")) == len(times)


@pytest.mark.once
def test_missed_ticks_collapse_into_one_by_default_and_are_counted(broker, start_beat):
    schedule = EVERY_SECOND.format(catch_up="once")
    a = start_beat(schedule)
    wait_for(lambda: len(a.sent_lines()) >= 2, timeout=10, what="two ticks")
    a.signal(signal.SIGTERM)
    a.wait(10)
    time.sleep(4.5)
    b = start_beat(schedule)
    wait_for(lambda: len(b.sent_lines()) >= 2, timeout=10, what="ticks after the restart")
    b.signal(signal.SIGTERM)
    b.wait(10)
    first, *_ = b.sent_lines()
    assert first[2] < 1000, "the latest missed tick is sent at once"
    skipped = int(broker.hget("celeriac.beat.skipped", "tick"))
    assert 3 <= skipped <= 5
    assert "due ticks not sent (catch-up policy)" in b.log()
    times = [t for _, t in ticks_of(a, b)]
    assert len(set(times)) == len(times)


@pytest.mark.once
def test_a_bad_entry_is_reported_by_name_and_the_others_run(broker, start_beat):
    schedule = EVERY_SECOND.format(catch_up="once") + """
[entries.bad-cron]
task = "celeriac.test.add"
crontab = { minute = "61" }
[entries.bad-zone]
task = "celeriac.test.add"
every = 1
timezone = "Mars/Olympus"
[entries.sunny]
task = "celeriac.test.add"
solar = { event = "sunrise", latitude = 91.5, longitude = 0.0 }
"""
    beat = start_beat(schedule)
    wait_for(lambda: len(beat.sent_lines()) >= 2, timeout=10, what="the good entry")
    log = beat.log()
    for name in ("bad-cron", "bad-zone", "sunny"):
        assert f"entry={name}" in log and "entry not scheduled" in log
    assert "solar latitude 91.5 is invalid" in log
    assert {e for e, _, _ in beat.sent_lines()} == {"tick"}


@pytest.mark.once
def test_a_password_never_reaches_the_log(redis_server, start_beat):
    url = f"redis://:hunter2secret@127.0.0.1:{redis_server.port}/0"
    beat = start_beat(EVERY_SECOND.format(catch_up="once"), broker_url=url)
    beat.wait_log(r"retrying|cannot", timeout=10)
    beat.signal(signal.SIGTERM)
    beat.wait(10)
    assert "hunter2secret" not in beat.log()
    assert ":***@" in beat.log()


@pytest.mark.once
def test_bad_settings_exit_2(start_beat):
    beat = start_beat(EVERY_SECOND.format(catch_up="once"), "--timezone", "Mars/Olympus", ready=False)
    assert beat.wait(10) == 2
    assert "timezone" in beat.log()


@pytest.mark.once
def test_an_edited_schedule_file_is_picked_up_without_a_restart(broker, start_beat):
    beat = start_beat(EVERY_SECOND.format(catch_up="once"))
    wait_for(lambda: beat.sent_lines(), timeout=10, what="the first tick")
    path = beat.args[beat.args.index("--schedule") + 1]
    with open(path, "a") as f:
        f.write('\n[entries.added]\ntask = "celeriac.test.add"\nargs = [7, 7]\nevery = 1\nqueue = "beat"\n')
    wait_for(lambda: any(e == "added" for e, _, _ in beat.sent_lines()), timeout=5, what="the added entry")
    assert "schedule file changed: reloaded" in beat.log()
    ticks = [t for e, t, _ in beat.sent_lines() if e == "tick"]
    assert len(set(ticks)) == len(ticks)
