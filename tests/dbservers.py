"""Private MariaDB and PostgreSQL servers for the django-celery-beat tests.

Each server is this suite's own: a fresh data directory, a free loopback port, Unix sockets in
its own folder, fast and unsafe settings (no fsync). A MariaDB or PostgreSQL that the machine
runs as a system service is never touched. The Python drivers (PyMySQL, psycopg) are imported
only when a server starts, so importing this module needs neither.
"""

import ctypes
import glob
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from support import free_port

START_TIMEOUT = 30.0


def _which(*names, extra_dirs=()):
    """The first of `names` found on PATH or in `extra_dirs`, or None."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in extra_dirs:
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                return path
    return None


def _die_with_parent(sig):
    """A preexec_fn: the child gets `sig` when the process that started it dies, so a pytest
    killed by a timeout leaves no server behind (Linux's PR_SET_PDEATHSIG; elsewhere a no-op)."""
    parent = os.getpid()

    def preexec():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # it died already
            os.kill(os.getpid(), sig)

    return preexec


def _tail(path, n=4000):
    try:
        return pathlib.Path(path).read_text(errors="replace")[-n:]
    except OSError as e:
        return f"(no log: {e})"


@dataclass(frozen=True)
class ServerPKI:
    """The certificates of a TLS server: `ca` signed `cert` (SAN DNS:localhost, IP:127.0.0.1,
    key `key`); `other_ca` is an unrelated CA that signed nothing this server has."""

    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path
    other_ca: pathlib.Path


def _openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({out.returncode}):\n{out.stdout.decode(errors='replace')}")


def make_test_pki(workdir):
    """Generates a private CA, a server certificate it signs, and an unrelated CA, with
    openssl (P-256 keys, valid for two days). Returns a ServerPKI."""
    if not shutil.which("openssl"):
        raise RuntimeError("openssl is not installed (Debian: apt-get install openssl)")
    d = pathlib.Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for name, cn in (("ca", "celeriac test CA"), ("other-ca", "celeriac unrelated CA")):
        _openssl("req", "-x509", *key, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN={cn}", *ca_ext, cwd=d)
    (d / "server.ext").write_text("basicConstraints=critical,CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature\n"
                                  "extendedKeyUsage=serverAuth\n"
                                  "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-new", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "server.ext", "-out", "server.pem", cwd=d)
    return ServerPKI(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key", other_ca=d / "other-ca.pem")


class _Server:
    name = "server"
    proc = None
    port = None

    def _log_path(self):
        raise NotImplementedError

    def _connect(self, dbname=None):
        raise NotImplementedError

    def _wait_ready(self):
        """Connects until the server answers; fails with its log's end after START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while starting; "
                                   f"log {self._log_path()}:\n{_tail(self._log_path())}")
            try:
                self._connect().close()
                return
            except Exception as e:  # the drivers' connection errors have no common base
                last = e
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} on port {self.port} did not answer within {START_TIMEOUT:.0f}s "
                           f"(last error: {last!r}); log {self._log_path()}:\n{_tail(self._log_path())}")

    def _stop_proc(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def execute(self, sql, dbname=None):
        """Runs one statement in autocommit mode; returns the rows, if any."""
        conn = self._connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()


class MariaDBServer(_Server):
    """A mariadbd of our own. root has an empty password; the URL is mysql://root@127.0.0.1:PORT/DB.

    With `tls` (a ServerPKI) the server presents `tls.cert` and refuses every TCP connection without
    TLS (require_secure_transport=ON, root included: MariaDB 10.11 answers a plain login with
    "Access denied", error 1045, not with a transport error). It then also listens on
    OTHER_ADDRESS, an address its certificate does not name, and has the performance schema on, so
    another session's Ssl_version and Ssl_cipher can be read (performance_schema.status_by_thread).
    Its own connections (setup, `execute`) use the Unix socket, which that setting allows, without TLS."""

    name = "mariadbd"
    OTHER_ADDRESS = "127.0.0.2"

    def __init__(self, workdir, port=None, tls=None):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.mariadbd = _which("mariadbd", "mysqld", extra_dirs=["/usr/sbin", "/usr/libexec"])
        self.install_db = _which("mariadb-install-db", "mysql_install_db", extra_dirs=["/usr/bin", "/usr/sbin"])
        self._log = None

    @classmethod
    def missing(cls):
        """Why no server can start here (binaries not installed), or None."""
        if not _which("mariadbd", "mysqld", extra_dirs=["/usr/sbin", "/usr/libexec"]):
            return "mariadbd (or mysqld) is not installed"
        if not _which("mariadb-install-db", "mysql_install_db", extra_dirs=["/usr/bin", "/usr/sbin"]):
            return "mariadb-install-db (or mysql_install_db) is not installed"
        return None

    def _log_path(self):
        return self.dir / "mariadb.log"

    def _user_args(self):
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self):
        why = self.missing()
        if why:
            raise RuntimeError(f"{why} (scripts/test.sh installs mariadb-server)")
        if not (self.datadir / "mysql").is_dir():
            self.datadir.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(
                [self.install_db, "--no-defaults", f"--datadir={self.datadir}", *self._user_args(),
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                 "--innodb-buffer-pool-size=32M"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=START_TIMEOUT, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{self.install_db} failed ({out.returncode}):\n"
                                   f"{out.stdout.decode(errors='replace')[-4000:]}")
        self._log = open(self._log_path(), "ab")
        args = [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}", *self._user_args(),
                "--bind-address=127.0.0.1", f"--port={self.port}", f"--socket={self.socket}",
                f"--pid-file={self.dir / 'mariadbd.pid'}", f"--tmpdir={self.dir}",
                "--skip-name-resolve", "--skip-log-bin", f"--log-error={self._log_path()}",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                "--performance-schema=OFF", "--max-connections=100"]
        if self.tls:
            args[args.index("--bind-address=127.0.0.1")] = f"--bind-address=127.0.0.1,{self.OTHER_ADDRESS}"
            args[args.index("--performance-schema=OFF")] = "--performance-schema=ON"
            args += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}", f"--ssl-key={self.tls.key}",
                     "--require-secure-transport=ON"]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM))
        self._wait_ready()
        return self

    def stop(self):
        """A clean shutdown (SIGTERM)."""
        self._stop_proc(signal.SIGTERM)

    def _connect(self, dbname=None):
        import pymysql

        where = {"unix_socket": str(self.socket), "ssl_disabled": True} if self.tls else \
            {"host": "127.0.0.1", "port": self.port}
        return pymysql.connect(**where, user="root", password="", database=dbname, autocommit=True,
                               connect_timeout=5, charset="utf8mb4")

    def connect_tcp(self, user, password, host="127.0.0.1", **ssl):
        """A client session over TCP, for checks: PyMySQL's TLS arguments (ssl_ca=...,
        ssl_verify_identity=True, ssl_disabled=True) pass through; without any, PyMySQL
        upgrades to TLS when the server offers it, verifying nothing."""
        import pymysql

        return pymysql.connect(host=host, port=self.port, user=user, password=password, autocommit=True,
                               connect_timeout=5, **ssl)

    def url(self, dbname):
        return f"mysql://root@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name):
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")

    def drop_database(self, name):
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def clone_database(self, src, dst):
        """Creates `dst` with `src`'s tables (exact DDL, foreign keys included) and rows."""
        self.create_database(dst)
        conn = self._connect(dst)
        try:
            with conn.cursor() as cur:
                cur.execute("SET foreign_key_checks = 0")
                cur.execute(f"SHOW FULL TABLES FROM `{src}` WHERE Table_type = 'BASE TABLE'")
                tables = [row[0] for row in cur.fetchall()]
                for t in tables:
                    cur.execute(f"SHOW CREATE TABLE `{src}`.`{t}`")
                    cur.execute(cur.fetchone()[1])  # unqualified names: created in `dst`
                for t in tables:
                    cur.execute(f"INSERT INTO `{dst}`.`{t}` SELECT * FROM `{src}`.`{t}`")
        finally:
            conn.close()


PG_TMP_PREFIX = "celeriac-pg-"


def _prune_stale_pg_dirs(min_age=600):
    """Removes the data folders that killed test runs left in /tmp: no server runs in them (a
    postgres stopped by any signal removes its postmaster.pid) and they are older than `min_age`."""
    for d in glob.glob(f"/tmp/{PG_TMP_PREFIX}*"):
        try:
            running = os.path.exists(os.path.join(d, "data", "postmaster.pid"))
            if not running and time.time() - os.stat(d).st_mtime > min_age:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


class PostgresServer(_Server):
    """A postgres of our own, trust authentication; the URL is postgres://postgres@127.0.0.1:PORT/DB.

    PostgreSQL refuses to run as root: then initdb and postgres run as the `postgres` OS user,
    in a data directory under /tmp that this user owns (pytest's tmp folders are root's, 0700).
    The log stays in `workdir`."""

    name = "postgres"

    def __init__(self, workdir, port=None):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.bindir = self.find_bindir()
        self.base = None  # the folder holding data/ and the socket, made in start()
        self._log = None

    @staticmethod
    def find_bindir():
        """The folder with initdb and postgres: PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
        initdb = shutil.which("initdb")
        if initdb and os.access(os.path.join(os.path.dirname(os.path.realpath(initdb)), "postgres"), os.X_OK):
            return os.path.dirname(os.path.realpath(initdb))
        dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
                if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK)]
        dirs.sort(key=lambda d: [int(x) if x.isdigit() else 0 for x in d.split("/")[-2].split(".")])
        return dirs[-1] if dirs else None

    @classmethod
    def missing(cls):
        if not cls.find_bindir():
            return "PostgreSQL's initdb and postgres are not installed (not on PATH nor in /usr/lib/postgresql/*/bin)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no `postgres` OS user to run PostgreSQL as"
        return None

    def _log_path(self):
        return self.dir / "postgres.log"

    def _as_owner(self):
        """Popen arguments that run a child as the data directory's owner."""
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                "env": dict(os.environ, HOME=pw.pw_dir, USER="postgres", LOGNAME="postgres"),
                "cwd": str(self.base)}

    def start(self):
        why = self.missing()
        if why:
            raise RuntimeError(f"{why} (scripts/test.sh installs postgresql)")
        if self.base is None:
            _prune_stale_pg_dirs()
            self.base = pathlib.Path(tempfile.mkdtemp(prefix=PG_TMP_PREFIX, dir="/tmp"))
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
            out = subprocess.run(
                [os.path.join(self.bindir, "initdb"), "-D", str(self.base / "data"), "-U", "postgres",
                 "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=START_TIMEOUT, check=False, **self._as_owner())
            if out.returncode != 0:
                raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout.decode(errors='replace')[-4000:]}")
        self._log = open(self._log_path(), "ab")
        args = [os.path.join(self.bindir, "postgres"), "-D", str(self.base / "data"), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.base}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "shared_buffers=16MB", "-c", "max_connections=100", "-c", "log_min_messages=warning",
                "-c", "TimeZone=UTC"]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent(signal.SIGINT),
                                     **self._as_owner())
        self._wait_ready()
        return self

    def stop(self, remove=True):
        """A fast shutdown (SIGINT: rolls back and disconnects clients), then the data goes."""
        self._stop_proc(signal.SIGINT)
        if remove and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def _connect(self, dbname=None):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname or "postgres",
                               autocommit=True, connect_timeout=5)

    def url(self, dbname):
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name, template=None):
        tmpl = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{tmpl}')

    def drop_database(self, name):
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def clone_database(self, src, dst):
        """CREATE DATABASE dst TEMPLATE src (nobody may be connected to src)."""
        self.create_database(dst, template=src)
