"""A minimal Django project around django-celery-beat, for the tests of celeriac-beat's
--django-db source: `settings` reads the database URL from CELERIAC_DJANGO_DB_URL, `driver` is
the long-lived process through which tests use the ORM (see tests/django_support.py).

Importing this package imports no Django: the Celery 5.3 venv, which has none, still collects
the suite."""
