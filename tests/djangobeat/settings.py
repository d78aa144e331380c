"""Django settings: django-celery-beat alone, USE_TZ=True in UTC, the one database taken from
the URL in CELERIAC_DJANGO_DB_URL (mysql://user[:password]@host:port/name or
postgres[ql]://user[:password]@host:port/name)."""

import os
from urllib.parse import unquote, urlsplit

URL_ENV = "CELERIAC_DJANGO_DB_URL"


def database_from_url(url):
    u = urlsplit(url)
    common = {
        "NAME": unquote(u.path.lstrip("/")),
        "USER": unquote(u.username or ""),
        "PASSWORD": unquote(u.password or ""),
        "HOST": u.hostname or "127.0.0.1",
        "PORT": str(u.port or ""),
        # One connection for the driver's whole life, in autocommit (Django's default): every
        # statement outside an atomic block is its own transaction, so each command sees what
        # other writers committed (MySQL's REPEATABLE READ would otherwise pin a snapshot).
        "CONN_MAX_AGE": None,
        "CONN_HEALTH_CHECKS": True,
        "AUTOCOMMIT": True,
    }
    if u.scheme in ("mysql", "mariadb"):
        # PyMySQL stands in for mysqlclient (MySQLdb), which needs a C build.
        import pymysql

        pymysql.install_as_MySQLdb()
        if pymysql.version_info < (1, 4, 3):  # Django checks the mysqlclient version it sees
            pymysql.version_info = (2, 2, 8, "final", 0)
        return {"ENGINE": "django.db.backends.mysql", "OPTIONS": {"charset": "utf8mb4"}, **common}
    if u.scheme in ("postgres", "postgresql"):
        return {"ENGINE": "django.db.backends.postgresql", **common}  # psycopg 3
    raise ValueError(f"{URL_ENV}: unsupported database URL scheme {u.scheme!r} in {url!r}")


SECRET_KEY = "celeriac-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": database_from_url(os.environ[URL_ENV])}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING_CONFIG = None
