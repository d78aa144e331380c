"""Configuration as Celery users give it: environment variables with Celery's names, Redis URLs
with a password (which never reaches a log line) or TLS, and clear errors for bad settings."""

import os
import signal
import subprocess

import pytest

from support import WORKER_BIN, CeleriacWorker, RedisServer, make_app


def test_settings_from_the_environment(app, redis_server, tmp_path):
    env = dict(os.environ, CELERY_BROKER_URL=redis_server.url(0), CELERY_RESULT_BACKEND=redis_server.url(1),
               CELERY_WORKER_QUEUES="envq", CELERY_WORKER_CONCURRENCY="3", CELERY_WORKER_HOSTNAME="env@%h",
               CELERY_WORKER_LOGLEVEL="INFO", CELERY_WORKER_PREFETCH_MULTIPLIER="2")
    w = CeleriacWorker([WORKER_BIN], tmp_path / "env.log", env=env).start()
    try:
        w.wait_ready()
        assert "env@" in w.log() and "consuming envq" in w.log()
        assert "concurrency 3, prefetch 6" in w.log()
        assert app.send_task("celeriac.test.add", args=[1, 2], queue="envq").get(timeout=5) == 3
    finally:
        w.kill()


def test_default_queue_comes_from_celery_task_default_queue(app, start_worker):
    w = start_worker(env={"CELERY_TASK_DEFAULT_QUEUE": "jobs"})
    assert "consuming jobs" in w.log()
    assert app.send_task("celeriac.test.add", args=[2, 2], queue="jobs").get(timeout=5) == 4


def test_password_in_the_url_works_and_never_reaches_the_log(tmp_path, start_worker):
    secret = "s3cr3t-Pa55"
    server = RedisServer(tmp_path / "auth", extra=["--requirepass", secret])
    server.start()
    try:
        app = make_app(server)
        w = start_worker(broker_url=server.url(0), backend_url=server.url(1), loglevel="DEBUG")
        assert app.send_task("celeriac.test.add", args=[20, 22]).get(timeout=5) == 42
        assert "redis://:***@127.0.0.1" in w.log()
        # A wrong password: errors are logged, the password is not.
        bad = server.url(0).replace(secret, "wr0ng-Pa55")
        w2 = start_worker(broker_url=bad, backend_url=bad, ready=False, loglevel="DEBUG")
        w2.wait_log("cannot connect", timeout=10)
        w.signal(signal.SIGTERM)
        w.wait(timeout=10)
        for log in (w.log(), w2.log()):
            assert secret not in log and "wr0ng-Pa55" not in log
        app.close()
    finally:
        server.stop()


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=celeriac-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")


def test_rediss_with_a_ca_certificate(tmp_path, start_worker):
    d = tmp_path / "tls"
    d.mkdir()
    make_certs(d)
    tls_port = RedisServer(d).port
    server = RedisServer(d, extra=["--tls-port", str(tls_port), "--tls-cert-file", str(d / "server.pem"),
                                   "--tls-key-file", str(d / "server.key"), "--tls-ca-cert-file", str(d / "ca.pem"),
                                   "--tls-auth-clients", "no"])
    server.start()
    try:
        app = make_app(server)  # the Python client uses the plain port of the same server
        tls = f"rediss://127.0.0.1:{tls_port}/%d?ssl_cert_reqs=required&ssl_ca_certs={d / 'ca.pem'}"
        w = start_worker(broker_url=tls % 0, backend_url=tls % 1)
        assert app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=5) == 2
        assert f"rediss://127.0.0.1:{tls_port}/0" in w.log()
        # Without the CA the certificate is refused ...
        no_ca = f"rediss://127.0.0.1:{tls_port}/0"
        refused = start_worker(broker_url=no_ca, backend_url="", ready=False)
        refused.wait_log("cannot connect", timeout=10)
        # ... unless verification is turned off explicitly, as with redis-py's ssl_cert_reqs=none.
        lax = start_worker(broker_url=no_ca + "?ssl_cert_reqs=none", backend_url=tls % 1)
        lax.wait_ready()
        app.close()
    finally:
        server.stop()


@pytest.mark.parametrize("args,complaint", [
    (["--broker", "sqs://key:secret@queue.example"], "unsupported scheme `sqs`"),
    (["--broker", "librabbitmq://guest@localhost//"], "unsupported scheme `librabbitmq`"),
    (["--visibility-timeout=-1"], "--visibility-timeout"),
    (["--visibility-timeout", "soon"], "--visibility-timeout"),
    (["--timezone", "Mars/Olympus"], "--timezone"),
    (["--concurrency", "0"], "--concurrency"),
    (["--loglevel", "LOUD"], "--loglevel"),
])
def test_bad_settings_stop_the_worker_with_a_clear_message(args, complaint):
    p = subprocess.run([WORKER_BIN, *args], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert complaint in p.stderr


def test_help_lists_the_settings():
    out = subprocess.run([WORKER_BIN, "--help"], capture_output=True, text=True, timeout=10).stdout
    for flag, env in [("--broker", "CELERY_BROKER_URL"), ("--result-backend", "CELERY_RESULT_BACKEND"),
                      ("--queues", "CELERY_WORKER_QUEUES"), ("--concurrency", "CELERY_WORKER_CONCURRENCY"),
                      ("--hostname", "CELERY_WORKER_HOSTNAME"), ("--prefetch-multiplier", "CELERY_WORKER_PREFETCH_MULTIPLIER"),
                      ("--visibility-timeout", "CELERY_BROKER_VISIBILITY_TIMEOUT"), ("--loglevel", "CELERY_WORKER_LOGLEVEL")]:
        assert flag in out and env in out, flag
