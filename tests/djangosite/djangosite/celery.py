"""The project's Celery app, the way Celery's Django guide sets it up: every `CELERY_*` setting
of djangosite.settings configures it. The project defines no tasks of its own: the media tasks
run on celeriac-worker, and the project only sends them by name."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangosite.settings")

app = Celery("djangosite")
app.config_from_object("django.conf:settings", namespace="CELERY")
