"""A small Django project around django-celery-results, for the tests of celeriac-worker's
`--result-backend django-db` (tests/test_results_django.py): `settings` (the database from
CELERIAC_DJANGO_DB_URL, the admin, CELERY_RESULT_BACKEND = "django-db"), `urls` (the admin) and
`check`, the Django process that reads results back through Celery and the admin.

Importing this package imports no Django: the Celery 5.3 venv, which has none, still collects
the suite."""
