"""The django-celery-beat side of the tests of celeriac-beat's --django-db source.

`DjangoBeatDB` is one migrated database on a private MariaDB or PostgreSQL server
(tests/dbservers.py) with a Django process (tests/djangobeat/driver.py) through which a test
writes and reads django-celery-beat's tables with the real ORM, signals included:

    db.orm("IntervalSchedule.objects.create(every=5, period='seconds')")
    db.orm("result = list(PeriodicTask.objects.values_list('name', flat=True))")

Set-up: the migrations run once per server and pytest session, into a template database; each
test gets a copy of it (PostgreSQL: CREATE DATABASE ... TEMPLATE; MariaDB: every table's
SHOW CREATE TABLE and rows), and its driver's `migrate` then finds nothing to apply.
Nothing here imports Django: the driver is a subprocess of the venv's Python.
"""

import itertools
import json
import os
import pathlib
import selectors
import subprocess
import sys
import textwrap
import time

TESTS = pathlib.Path(__file__).resolve().parent
TEMPLATE_DB = "celeriac_beat_template"
_counter = itertools.count(1)


class DjangoError(AssertionError):
    """The code sent to the driver raised; the message is its traceback."""


class DjangoBeatDB:
    """A Django ORM process on the database at `url` (migrated on start)."""

    def __init__(self, url, log_path, kind=None, timeout=60.0):
        self.url = url  # for celeriac-beat's --django-db
        self.kind = kind  # "mariadb" or "postgres"
        self.server = self.name = None  # set by new_django_beat_db: the DB server, the database
        self.log_path = pathlib.Path(log_path)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, CELERIAC_DJANGO_DB_URL=url, DJANGO_SETTINGS_MODULE="djangobeat.settings",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "djangobeat.driver"], cwd=str(TESTS), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     bufsize=0, start_new_session=True)
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        first = self._read(timeout, "the driver's migrate")
        if "ready" not in first:
            self.close()
            raise RuntimeError(f"the Django driver failed to start on {url}:\n{first.get('error', first)}")
        self.migrate_seconds = first["migrate_seconds"]

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _read(self, timeout, what):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the Django driver gave no answer within {timeout}s to {what}; "
                                     f"its log:\n{self.log()[-4000:]}")
            if self._sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self.proc.wait(timeout=10)
                    raise AssertionError(f"the Django driver exited ({self.proc.returncode}) during {what}; "
                                         f"its log:\n{self.log()[-4000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def orm(self, code, timeout=30.0):
        """Runs `code` (dedented) in the driver; returns its variable `result` (JSON round-tripped:
        datetimes and other non-JSON values come back as str()). Raises DjangoError if it raised."""
        code = textwrap.dedent(code).strip("\n")
        self.proc.stdin.write((json.dumps({"exec": code}) + "\n").encode())
        reply = self._read(timeout, f"orm({code[:200]!r})")
        if "error" in reply:
            raise DjangoError(f"orm code raised:\n{code}\n--- traceback from the driver ---\n{reply['error']}")
        return reply["ok"]

    def close(self):
        """Ends the driver (EOF on its stdin, then SIGKILL if it lingers); closes its connection."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._sel.close()
        self.proc.stdout.close()
        self._log.close()


def ensure_template(server):
    """Migrates the template database of `server` once (kept on the server object; its driver's
    log goes to the server's folder)."""
    if getattr(server, "_django_template", None):
        return server._django_template
    server.drop_database(TEMPLATE_DB)
    server.create_database(TEMPLATE_DB)
    t0 = time.monotonic()
    db = DjangoBeatDB(server.url(TEMPLATE_DB), server.dir / "django-template.log")
    db.close()  # PostgreSQL copies a template only while nobody is connected to it
    server.django_template_seconds = time.monotonic() - t0
    server._django_template = TEMPLATE_DB
    return TEMPLATE_DB


def new_django_beat_db(server, kind, workdir, template=True):
    """A fresh migrated database on `server` and its driver: -> (DjangoBeatDB, dbname).
    template=False runs all the migrations on an empty database instead of copying the template."""
    name = f"beat_{os.getpid()}_{next(_counter)}"
    if template:
        server.clone_database(ensure_template(server), name)
    else:
        server.create_database(name)
    try:
        db = DjangoBeatDB(server.url(name), pathlib.Path(workdir) / f"django-{name}.log", kind=kind)
    except BaseException:
        server.drop_database(name)
        raise
    db.server, db.name = server, name
    return db, name
