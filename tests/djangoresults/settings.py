"""Django settings: django-celery-results with the admin (auth, contenttypes, sessions,
messages), USE_TZ=True in UTC, the one database taken from CELERIAC_DJANGO_DB_URL (as for
tests/djangobeat), and Celery's settings in the CELERY_ namespace: results in "django-db",
CELERY_RESULT_EXTENDED from the environment variable of that name."""

import os

from djangobeat.settings import URL_ENV, database_from_url

SECRET_KEY = "celeriac-tests"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_results",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "djangoresults.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "static/"
DATABASES = {"default": database_from_url(os.environ[URL_ENV])}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING_CONFIG = None

CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = os.environ.get("CELERY_RESULT_EXTENDED", "") in ("1", "true", "True")
