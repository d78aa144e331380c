"""The ORM process of the django-celery-beat tests: python -m djangobeat.driver, with
CELERIAC_DJANGO_DB_URL set (and tests/ on PYTHONPATH).

It runs `migrate` (django-celery-beat's real migrations), then answers JSON lines:
  in:  {"exec": "<python code>"}
  out: {"ok": <the variable `result` after the code ran, or null>} | {"error": "<traceback>"}
Its first line is {"ready": true, "migrate_seconds": S} once migrated, or {"error": ...} (and it
exits 1). Anything else the code prints goes to stderr, never into the answers.

The code runs in a fresh namespace that holds the models (PeriodicTask, IntervalSchedule,
CrontabSchedule, ClockedSchedule, SolarSchedule, PeriodicTasks), json, datetime, timedelta,
timezone (django.utils.timezone), connection, transaction, call_command, and `shared`, a dict
kept from one command to the next. The one database connection is in autocommit and checked
before each command, so each command sees what other writers have committed.
"""

import json
import os
import sys
import time
import traceback


def main():
    # Answers go to a private copy of stdout; fd 1 itself (print, C libraries) goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(obj):
        answers.write(json.dumps(obj, default=str) + "\n")
        answers.flush()

    try:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangobeat.settings")
        import django

        django.setup()
        import datetime
        from datetime import timedelta

        from django.core.management import call_command
        from django.db import close_old_connections, connection, transaction
        from django.utils import timezone
        from django_celery_beat.models import (ClockedSchedule, CrontabSchedule, IntervalSchedule,
                                               PeriodicTask, PeriodicTasks, SolarSchedule)

        t0 = time.monotonic()
        call_command("migrate", interactive=False, verbosity=1, stdout=sys.stderr, stderr=sys.stderr)
        migrate_seconds = time.monotonic() - t0
    except BaseException:
        answer({"error": traceback.format_exc()})
        sys.exit(1)

    base = {
        "PeriodicTask": PeriodicTask, "IntervalSchedule": IntervalSchedule,
        "CrontabSchedule": CrontabSchedule, "ClockedSchedule": ClockedSchedule,
        "SolarSchedule": SolarSchedule, "PeriodicTasks": PeriodicTasks,
        "json": json, "datetime": datetime, "timedelta": timedelta, "timezone": timezone,
        "connection": connection, "transaction": transaction, "call_command": call_command,
        "shared": {},
    }
    answer({"ready": True, "migrate_seconds": round(migrate_seconds, 3), "vendor": connection.vendor})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if "exec" not in cmd:
                raise ValueError(f"unknown command {line[:200]!r}")
            close_old_connections()  # drops a broken connection; the next query opens a new one
            ns = dict(base, __name__="__orm__")
            exec(compile(cmd["exec"], "<orm>", "exec"), ns)
            reply = {"ok": ns.get("result")}
            try:
                text = json.dumps(reply, default=str)
            except (TypeError, ValueError) as e:
                raise TypeError(f"`result` is not JSON-serializable: {e}") from e
            answers.write(text + "\n")
            answers.flush()
        except BaseException:
            if connection.in_atomic_block:  # never leave a transaction (and its snapshot) open
                connection.close()
            answer({"error": traceback.format_exc()})
    connection.close()


if __name__ == "__main__":
    main()
