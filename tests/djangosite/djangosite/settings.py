"""Settings of the media test project, all from the environment as on EKS:

  DATABASE_URL              mysql://user[:password]@host:port/name (parsed here; no dj-database-url)
  AWS_STORAGE_BUCKET_NAME, AWS_LOCATION, AWS_S3_ENDPOINT_URL, AWS_S3_REGION_NAME,
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                            django-storages' S3 backend (the same variables celeriac-worker reads)
  CELERY_BROKER_URL, CELERY_RESULT_BACKEND
                            the Celery app of djangosite/celery.py (namespace CELERY)
"""

import os
from urllib.parse import parse_qs, unquote, urlsplit


def database_from_url(url):
    """Django's DATABASES entry for a mysql:// URL (the form dj-database-url reads)."""
    u = urlsplit(url)
    if u.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"DATABASE_URL: unsupported scheme {u.scheme!r}")
    # PyMySQL stands in for mysqlclient (MySQLdb), which needs a C build.
    import pymysql

    pymysql.install_as_MySQLdb()
    if pymysql.version_info < (1, 4, 3):  # Django checks the mysqlclient version it sees
        pymysql.version_info = (2, 2, 8, "final", 0)
    options = {"charset": "utf8mb4"}
    query = parse_qs(u.query)
    if "ssl-ca" in query:
        options["ssl"] = {"ca": query["ssl-ca"][0]}
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": unquote(u.path.lstrip("/")),
        "USER": unquote(u.username or ""),
        "PASSWORD": unquote(u.password or ""),
        "HOST": u.hostname or "127.0.0.1",
        "PORT": str(u.port or ""),
        "OPTIONS": options,
        # Autocommit (Django's default): outside an atomic block each statement is its own
        # transaction, so a long-lived process sees what the worker committed.
        "CONN_MAX_AGE": None,
        "CONN_HEALTH_CHECKS": True,
    }


SECRET_KEY = "celeriac-media-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "media.apps.MediaConfig",
]
DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None

# Media on S3 through django-storages.
STORAGES = {
    "default": {"BACKEND": "storages.backends.s3.S3Storage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
AWS_STORAGE_BUCKET_NAME = os.environ["AWS_STORAGE_BUCKET_NAME"]
AWS_LOCATION = os.environ.get("AWS_LOCATION", "")
AWS_S3_ENDPOINT_URL = os.environ.get("AWS_S3_ENDPOINT_URL") or None
AWS_S3_REGION_NAME = os.environ.get("AWS_S3_REGION_NAME") or os.environ.get("AWS_DEFAULT_REGION")
AWS_S3_ACCESS_KEY_ID = os.environ.get("AWS_ACCESS_KEY_ID")
AWS_S3_SECRET_ACCESS_KEY = os.environ.get("AWS_SECRET_ACCESS_KEY")
AWS_S3_ADDRESSING_STYLE = "path" if AWS_S3_ENDPOINT_URL else None
AWS_S3_FILE_OVERWRITE = False  # two uploads named a.jpg get two keys, as users expect
AWS_DEFAULT_ACL = None
AWS_QUERYSTRING_AUTH = False

# Celery (djangosite/celery.py reads every CELERY_* setting).
CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ROUTES = {"media.*": {"queue": "media"}}
