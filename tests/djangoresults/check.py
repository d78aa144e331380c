"""Reads results back the way a Django app does: python -m djangoresults.check, with
CELERIAC_DJANGO_DB_URL set (DJANGO_SETTINGS_MODULE defaults to djangoresults.settings) and a
JSON request on stdin:

    {"get": [task ids], "state": [task ids], "admin": [task ids]}

For each id of "get", `AsyncResult(id)` of a Celery app configured from the Django settings
(CELERY_RESULT_BACKEND = "django-db"): its state, then `.get()`'s value, or the type, module and
args of what `.get()` raised; for "state", only the state (of tasks not done). For "admin", Django's test client logged in as a superuser fetches
the TaskResult changelist and each id's change page. Prints one JSON object on stdout:

    {"backend": the result backend's class,
     "get": {id: {"state", "value"} | {"state", "raised", "module", "args"}},
     "state": {id: state},
     "changelist": {"status", "listed": [ids found in the page]},
     "change": {id: {"status", "has_id", "has_status"}}}
"""

import json
import os
import sys


def main():
    request = json.loads(sys.stdin.read())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoresults.settings")
    import django

    django.setup()
    from celery import Celery
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django_celery_results.models import TaskResult

    app = Celery("djangoresults")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    out = {"backend": type(app.backend).__module__ + "." + type(app.backend).__name__, "get": {}}
    for task_id in request.get("get", []):
        r = app.AsyncResult(task_id)
        entry = {"state": r.state}
        try:
            entry["value"] = r.get(timeout=10, interval=0.1)
        except Exception as e:  # what our failure raises, whatever it is
            entry.update(raised=type(e).__qualname__, module=type(e).__module__, args=list(e.args))
        out["get"][task_id] = entry

    out["state"] = {task_id: app.AsyncResult(task_id).state for task_id in request.get("state", [])}

    ids = request.get("admin", [])
    if ids:
        setup_test_environment()
        user, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True})
        client = Client()
        client.force_login(user)
        page = client.get("/admin/django_celery_results/taskresult/")
        html = page.content.decode()
        out["changelist"] = {"status": page.status_code, "listed": [i for i in ids if i in html]}
        out["change"] = {}
        for task_id in ids:
            row = TaskResult.objects.get(task_id=task_id)
            page = client.get(f"/admin/django_celery_results/taskresult/{row.pk}/change/")
            html = page.content.decode()
            out["change"][task_id] = {"status": page.status_code, "has_id": task_id in html,
                                      "has_status": row.status in html}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
