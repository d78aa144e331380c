"""The Django process of the media end-to-end tests: python driver.py (cwd tests/djangosite),
with the environment djangosite.settings reads.

It runs `migrate` (the media app's real migration), then answers JSON lines:
  in:  {"exec": "<python code>"}
  out: {"ok": <the variable `result` after the code ran, or null>} | {"error": "<traceback>"}
Its first line is {"ready": true, "migrate_seconds": S} once migrated, or {"error": ...} (and it
exits 1). Anything else the code prints goes to stderr, never into the answers.

The code runs in a fresh namespace holding MediaAsset, services (media.services), storage
(Django's default storage: S3), celery_app, ContentFile, transaction, connection, timezone,
timedelta, json, time, base64, `row(id)` (an asset as a JSON-ready dict, datetimes in ISO 8601),
`published` (every task message this process published, in order, with whether a
transaction was open at that moment) and `shared`, a dict kept from one command to the next.
The database connection is in autocommit and checked before each command, so each command
sees what the worker committed.
"""

import base64
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
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangosite.settings")
        import django

        django.setup()
        from datetime import timedelta

        from celery.signals import after_task_publish
        from django.core.files.base import ContentFile
        from django.core.files.storage import default_storage
        from django.core.management import call_command
        from django.db import close_old_connections, connection, transaction
        from django.utils import timezone

        from djangosite import celery_app
        from media import services
        from media.models import MediaAsset

        t0 = time.monotonic()
        call_command("migrate", interactive=False, verbosity=1, stdout=sys.stderr, stderr=sys.stderr)
        migrate_seconds = time.monotonic() - t0
    except BaseException:
        answer({"error": traceback.format_exc()})
        sys.exit(1)

    published = []

    @after_task_publish.connect(weak=False)
    def _published(sender=None, body=None, exchange=None, routing_key=None, headers=None, **_):
        args, kwargs, _embed = body
        published.append({"task": sender, "id": headers["id"], "args": args, "kwargs": kwargs,
                          "exchange": exchange, "routing_key": routing_key,
                          "in_transaction": connection.in_atomic_block})

    def row(asset_id):
        a = MediaAsset.objects.get(pk=asset_id)
        return {"id": a.id, "original": a.original.name, "status": a.status, "width": a.width,
                "height": a.height, "thumbnails": a.thumbnails, "error": a.error,
                "created_at": a.created_at.isoformat(), "updated_at": a.updated_at.isoformat()}

    base = {
        "MediaAsset": MediaAsset, "services": services, "storage": default_storage,
        "celery_app": celery_app, "ContentFile": ContentFile, "transaction": transaction,
        "connection": connection, "timezone": timezone, "timedelta": timedelta, "json": json,
        "time": time, "base64": base64, "row": row, "published": published, "shared": {},
    }
    answer({"ready": True, "migrate_seconds": round(migrate_seconds, 3)})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if "exec" not in cmd:
                raise ValueError(f"unknown command {line[:200]!r}")
            close_old_connections()  # drops a broken connection; the next query opens a new one
            ns = dict(base, __name__="__django__")
            exec(compile(cmd["exec"], "<django>", "exec"), ns)
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
