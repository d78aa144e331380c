"""celeriac-beat on django-celery-beat's tables (the real migrations of django-celery-beat 2.9,
Django 5.2), on MariaDB and on PostgreSQL: entries made through the ORM are sent on time and
`last_run_at` / `total_run_count` are written back; a task disabled through the ORM stops
within a second; a one-off task runs once and is disabled; bad rows are reported by name; a solar
row's next events are Celery's."""

import datetime
import json
import os
import signal
import subprocess
import time

import pytest

from support import BEAT_BIN, wait_for

pytestmark = pytest.mark.once

SETUP = """
every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
minute = CrontabSchedule.objects.create(minute="*", hour="*", day_of_week="*", day_of_month="*",
                                        month_of_year="*", timezone="Europe/London")
soon = ClockedSchedule.objects.create(clocked_time=timezone.now() + datetime.timedelta(seconds=2))
PeriodicTask.objects.create(name="every-second", task="celeriac.test.add", interval=every,
                            args=json.dumps([2, 3]), queue="beat", headers=json.dumps({"x-source": "django"}))
PeriodicTask.objects.create(name="every-minute", task="celeriac.test.add", crontab=minute,
                            args=json.dumps([1, 1]), queue="beat", expire_seconds=30)
PeriodicTask.objects.create(name="one-off", task="celeriac.test.add", clocked=soon, one_off=True,
                            args=json.dumps([4, 4]), queue="beat")
result = True
"""


def row(db, name):
    return db.orm(f"""
t = PeriodicTask.objects.get(name={name!r})
result = {{"enabled": t.enabled, "total_run_count": t.total_run_count,
           "last_run_at": t.last_run_at.isoformat() if t.last_run_at else None}}
""")


def sends(beat, entry):
    return [line for line in beat.sent_lines() if line[0] == entry]


def sent_at(beat, entry):
    """Wall-clock times (from the log line) of the sends of `entry`."""
    out = []
    for line in beat.log().splitlines():
        if f" sent entry={entry} " in line:
            out.append(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")))
    return out


@pytest.mark.timeout(150)
def test_orm_entries_are_sent_on_time_written_back_disabled_and_finished(django_beat_db, broker, start_beat):
    db = django_beat_db
    db.orm(SETUP)
    beat = start_beat("", "--django-db", db.url, schedule_file=False)
    wait_for(lambda: len(sends(beat, "every-second")) >= 3, timeout=15, what="three interval sends")

    # Written back within about a second of each send.
    def counts_agree():
        r = row(db, "every-second")
        return r["total_run_count"] == len(sends(beat, "every-second")) and r["last_run_at"]
    wait_for(counts_agree, timeout=2, interval=0.1, what="total_run_count to match the sends")
    last = datetime.datetime.fromisoformat(row(db, "every-second")["last_run_at"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - last).total_seconds()) < 2.5

    # A one-off clocked task runs once and is disabled.
    wait_for(lambda: sends(beat, "one-off"), timeout=10, what="the one-off task")
    wait_for(lambda: not row(db, "one-off")["enabled"], timeout=3, what="the one-off task disabled")
    assert row(db, "one-off")["total_run_count"] == 1

    # Disabled through the ORM (a save bumps the change row): no send a second later.
    db.orm("t = PeriodicTask.objects.get(name='every-second'); t.enabled = False; t.save(); result = True")
    disabled_at = datetime.datetime.now(datetime.timezone.utc)
    wait_for(lambda: "django-celery-beat tables changed: reloaded" in beat.log(), timeout=3,
             what="the reload")
    time.sleep(2.5)
    late = [t for t in sent_at(beat, "every-second") if (t - disabled_at).total_seconds() > 1.0]
    assert not late, f"sent after being disabled: {late}"

    # The crontab entry fires at the next minute, on time.
    wait_for(lambda: sends(beat, "every-minute"), timeout=65, what="the crontab entry")
    (_, tick, lateness), = sends(beat, "every-minute")
    nominal = datetime.datetime.fromisoformat(tick)
    assert (nominal.second, nominal.microsecond) == (0, 0) and lateness < 1000
    wait_for(lambda: row(db, "every-minute")["total_run_count"] == 1, timeout=2, what="its run count")

    assert len(sends(beat, "one-off")) == 1
    by_name = {}
    for raw in broker.lrange("beat", 0, -1):
        env = json.loads(raw)
        by_name.setdefault(env["headers"]["periodic_task_name"], env)
    assert set(by_name) == {"every-second", "every-minute", "one-off"}
    assert by_name["every-second"]["headers"]["x-source"] == "django"
    assert by_name["every-second"]["headers"]["celery_beat_task"] is True
    assert by_name["every-minute"]["properties"]["expiration"] == "30000"
    beat.signal(signal.SIGTERM)
    assert beat.wait(10) == 0


def test_bad_rows_are_reported_by_name_and_the_rest_runs(django_beat_db, start_beat):
    db = django_beat_db
    db.orm("""
every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
bad = CrontabSchedule.objects.create(minute="*", hour="*", timezone="UTC")
sun = SolarSchedule.objects.create(event="sunrise", latitude=51.5, longitude=0.0)
PeriodicTask.objects.create(name="good", task="celeriac.test.add", interval=every, args="[1, 2]")
PeriodicTask.objects.create(name="sunny", task="celeriac.test.add", solar=sun)
PeriodicTask.objects.create(name="bad-cron", task="celeriac.test.add", crontab=bad)
result = True
""")
    # Written past Django's validation, as a raw SQL edit would.
    db.orm("CrontabSchedule.objects.filter(minute='*').update(minute='99'); result = True")
    db.orm("SolarSchedule.objects.filter(event='sunrise').update(latitude=95); result = True")
    beat = start_beat("", "--django-db", db.url, schedule_file=False)
    wait_for(lambda: len(sends(beat, "good")) >= 2, timeout=10, what="the good task")
    log = beat.log()
    assert "entry=sunny" in log and "solar latitude 95 is invalid" in log
    assert "entry=bad-cron" in log
    assert {e for e, _, _ in beat.sent_lines()} == {"good"}


def test_a_solar_row_is_scheduled_as_celery_computes_it(django_beat_db):
    """The row's decimal latitude and longitude reach the schedule: `celeriac-beat schedule`
    lists its next sunsets within a second of Celery's (`SolarSchedule.schedule`)."""
    db = django_beat_db
    db.orm("""
sun = SolarSchedule.objects.create(event="sunset", latitude="-33.868820", longitude="151.209296")
PeriodicTask.objects.create(name="sundown", task="celeriac.test.add", solar=sun)
result = True
""")
    out = subprocess.run(
        [BEAT_BIN, "--django-db", db.url, "schedule", "--after", "2026-06-10T08:15:00Z",
         "--count", "2", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_BEAT_")})
    assert out.returncode == 0, out.stderr
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["entry"] == "sundown", rec
    assert rec["schedule"] == "solar sunset at latitude -33.86882, longitude 151.209296"
    celery = db.orm("""
import datetime as dt
s = SolarSchedule.objects.get(event="sunset").schedule
t = dt.datetime(2026, 6, 10, 8, 15, tzinfo=dt.timezone.utc)
result = []
for _ in range(2):
    s.nowfun = lambda t=t: t
    t = t + s.remaining_estimate(t)
    result.append(t.isoformat())
""")
    for ours, theirs in zip(rec["fires"], celery, strict=True):
        diff = datetime.datetime.fromisoformat(ours) - datetime.datetime.fromisoformat(theirs)
        assert abs(diff.total_seconds()) < 1, (ours, theirs)


def test_raw_sql_edits_are_seen_within_the_reload_interval(django_beat_db, start_beat):
    """QuerySet.update() skips Django's signals, so the change row is not bumped: the periodic
    full reload (here every 2 s) picks the edit up."""
    db = django_beat_db
    db.orm("""
every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="raw", task="celeriac.test.add", interval=every, args="[1, 1]")
result = True
""")
    beat = start_beat("", "--django-db", db.url, "--reload-interval", "2", schedule_file=False)
    wait_for(lambda: len(sends(beat, "raw")) >= 2, timeout=10, what="the task")
    before = db.orm("result = str(PeriodicTasks.objects.get(ident=1).last_update)")
    db.orm("PeriodicTask.objects.filter(name='raw').update(enabled=False); result = True")
    edited_at = datetime.datetime.now(datetime.timezone.utc)
    assert db.orm("result = str(PeriodicTasks.objects.get(ident=1).last_update)") == before
    time.sleep(4)
    late = [t for t in sent_at(beat, "raw") if (t - edited_at).total_seconds() > 2.5]
    assert not late, f"sent after a raw disable: {late}"
    assert "removed=1" in beat.log()


def test_a_database_password_never_reaches_the_log(django_beat_db, start_beat):
    db = django_beat_db
    url = db.url.replace("://root@", "://root:s3cretpw@").replace("://postgres@", "://nobody:s3cretpw@")
    beat = start_beat("", "--django-db", url, schedule_file=False, ready=False)
    code = beat.wait(30)
    assert code == 2, beat.log()
    assert "s3cretpw" not in beat.log()
