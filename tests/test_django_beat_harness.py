"""The harness of the django-celery-beat tests itself: private MariaDB and PostgreSQL servers,
django-celery-beat's migrations, and the ORM driver (see django_support.py)."""

import datetime
import re

import pytest

pytestmark = pytest.mark.once


def _utc(text):
    return datetime.datetime.fromisoformat(text).astimezone(datetime.timezone.utc)


def test_orm_round_trip_bumps_the_change_signal(django_beat_db):
    db = django_beat_db
    assert db.orm("result = PeriodicTasks.objects.count()") == 0  # a fresh database
    db.orm("shared['every'] = IntervalSchedule.objects.create(every=7, period=IntervalSchedule.SECONDS)")
    after_interval = _utc(db.orm("result = PeriodicTasks.last_change().isoformat()"))

    db.orm("""
        PeriodicTask.objects.create(name="smoke", task="tasks.add", interval=shared["every"],
                                    args=json.dumps([1, 2]), kwargs=json.dumps({"z": 3}), queue="q1")
    """)
    row = db.orm("""
        t = PeriodicTask.objects.select_related("interval").get(name="smoke")
        result = {"task": t.task, "every": t.interval.every, "period": t.interval.period, "args": t.args,
                  "kwargs": t.kwargs, "queue": t.queue, "enabled": t.enabled, "one_off": t.one_off,
                  "crontab": t.crontab_id, "last_change": PeriodicTasks.last_change().isoformat()}
    """)
    assert row["task"] == "tasks.add" and (row["every"], row["period"]) == (7, "seconds")
    assert (row["args"], row["kwargs"], row["queue"]) == ("[1, 2]", '{"z": 3}', "q1")
    assert row["enabled"] is True and row["one_off"] is False and row["crontab"] is None
    after_task = _utc(row["last_change"])
    assert after_task > after_interval

    # The raw row a reader such as celeriac-beat polls: ident=1, last_update in UTC (MariaDB's
    # DATETIME has no zone: Django writes naive UTC there).
    raw = db.orm("""
        with connection.cursor() as c:
            c.execute("SELECT ident, last_update FROM django_celery_beat_periodictasks")
            result = [[i, u.replace(tzinfo=None).isoformat(), u.tzinfo is None] for i, u in c.fetchall()]
    """)
    assert len(raw) == 1 and raw[0][0] == 1
    assert datetime.datetime.fromisoformat(raw[0][1]) == after_task.replace(tzinfo=None)
    assert raw[0][2] is (db.kind == "mariadb")  # psycopg returns aware datetimes, PyMySQL naive ones
    assert abs(datetime.datetime.now(datetime.timezone.utc) - after_task) < datetime.timedelta(minutes=1)

    db.orm("t = PeriodicTask.objects.get(name='smoke'); t.enabled = False; t.save()")
    assert _utc(db.orm("result = PeriodicTasks.last_change().isoformat()")) > after_task


def test_driver_sees_other_writers_commits(django_beat_db):
    """Each command sees rows committed by another connection (no snapshot kept across commands,
    which MySQL's REPEATABLE READ would otherwise do)."""
    db = django_beat_db
    assert db.orm("result = IntervalSchedule.objects.count()") == 0
    db.server.execute("INSERT INTO django_celery_beat_intervalschedule (every, period) VALUES (3, 'minutes')", db.name)
    assert db.orm("result = list(IntervalSchedule.objects.values_list('every', 'period'))") == [[3, "minutes"]]


def _schema(kind, server, dbname):
    if kind == "mariadb":
        tables = [r[0] for r in server.execute("SHOW TABLES", dbname)]
        return {t: re.sub(r" AUTO_INCREMENT=\d+", "", server.execute(f"SHOW CREATE TABLE `{t}`", dbname)[0][1])
                for t in tables}
    return {
        "columns": server.execute("""SELECT table_name, column_name, data_type, character_maximum_length,
            numeric_precision, is_nullable, column_default FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY 1, 2""", dbname),
        "constraints": server.execute("""SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""", dbname),
        "indexes": server.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
                                  dbname),
    }


def test_template_copy_matches_a_fresh_migrate(django_beat_db, tmp_path):
    """The fixture copies a template database migrated once per session: its schema must be the
    one django-celery-beat's migrations make on an empty database."""
    from django_support import new_django_beat_db

    db = django_beat_db
    fresh, name = new_django_beat_db(db.server, db.kind, tmp_path, template=False)
    try:
        assert _schema(db.kind, db.server, db.name) == _schema(db.kind, db.server, name)
        migrations = "result = sorted(connection.introspection.django_table_names() + ['django_migrations'])"
        assert db.orm(migrations) == fresh.orm(migrations)
        applied = "from django.db.migrations.recorder import MigrationRecorder\n" \
                  "result = sorted(MigrationRecorder(connection).applied_migrations())"
        assert db.orm(applied) == fresh.orm(applied) and len(db.orm(applied)) >= 20
    finally:
        fresh.close()
        db.server.drop_database(name)
