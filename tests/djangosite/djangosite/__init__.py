"""The Django project of the media end-to-end tests: configured as a Django team configures
Celery, so that `celery -A djangosite` and `from djangosite import celery_app` both work."""

from .celery import app as celery_app

__all__ = ["celery_app"]
