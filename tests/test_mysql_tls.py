"""TLS of the worker's MySQL pool as Amazon RDS needs it (`ssl-mode=VERIFY_IDENTITY` with the CA
bundle), against a private MariaDB that refuses TCP clients without TLS (tests/dbservers.py).

The README's example worker runs `reports.tasks.count_since`, which queries the pool, once per
DATABASE_URL. Its certificate, for localhost and 127.0.0.1, comes from the suite's own CA; the
server also listens on 127.0.0.2, which the certificate does not name. A connection that fails
makes the task retry (the example's `ctx.retry().exc(...)`), and the worker logs the reason.
Whether a session is encrypted is read on the server: performance_schema.status_by_thread has
each session's Ssl_version and Ssl_cipher (empty without TLS).
"""

import re

import pytest

from support import wait_for

pytestmark = pytest.mark.once
# The Celery 5.3 venv has no MySQL driver; these tests run in the main pass only.
pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed (the TLS tests need it)")

USER = "tls_app"
PASSWORD = "Tls-s3cret-7q"
DB = "celeriac_tls"


class TlsDB:
    def __init__(self, server):
        self.server = server
        self.pki = server.tls

    def url(self, host, query):
        query = query.format(ca=self.pki.ca, other_ca=self.pki.other_ca)
        return f"mysql://{USER}:{PASSWORD}@{host}:{self.server.port}/{DB}" + (f"?{query}" if query else "")

    def sessions(self, user=USER):
        """{connection id: (Ssl_version, Ssl_cipher)} of `user`'s sessions, as the server sees them."""
        rows = self.server.execute(
            "SELECT t.PROCESSLIST_ID, MAX(IF(s.VARIABLE_NAME = 'Ssl_version', s.VARIABLE_VALUE, NULL)),"
            " MAX(IF(s.VARIABLE_NAME = 'Ssl_cipher', s.VARIABLE_VALUE, NULL))"
            " FROM performance_schema.threads t JOIN performance_schema.status_by_thread s USING (THREAD_ID)"
            f" WHERE t.PROCESSLIST_USER = '{user}' AND s.VARIABLE_NAME IN ('Ssl_version', 'Ssl_cipher')"
            " GROUP BY t.PROCESSLIST_ID")
        return {row[0]: (row[1], row[2]) for row in rows}


@pytest.fixture(scope="module")
def tls_db(mariadb_tls_server):
    s = mariadb_tls_server
    s.execute(f"DROP USER IF EXISTS '{USER}'@'%'")
    s.drop_database(DB)
    s.create_database(DB)
    s.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
    s.execute(f"GRANT ALL ON `{DB}`.* TO '{USER}'@'%'")
    return TlsDB(s)


def test_the_server_refuses_tcp_without_tls_and_shows_who_is_encrypted(tls_db):
    """What the other tests stand on: a plain TCP login is refused (MariaDB 10.11 says "Access
    denied", for root too), the same login with TLS gets in, and the server's view tells an
    encrypted session from a plain one."""
    s = tls_db.server
    for user, password in ((USER, PASSWORD), ("root", "")):
        with pytest.raises(pymysql.err.OperationalError) as refused:
            s.connect_tcp(user, password, ssl_disabled=True)
        assert refused.value.args[0] == 1045, refused.value
    conn = s.connect_tcp(USER, PASSWORD, host="localhost", ssl_ca=str(tls_db.pki.ca), ssl_verify_identity=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (conn_id,) = cur.fetchone()
        version, cipher = tls_db.sessions()[conn_id]
        assert version.startswith("TLSv1.") and cipher, (version, cipher)
        # This check's own session (the Unix socket, no TLS) shows empty values in the same view.
        admin = s._connect()
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                (admin_id,) = cur.fetchone()
            assert tls_db.sessions("root")[admin_id] == ("", "")
        finally:
            admin.close()
    finally:
        conn.close()


def _count_since(app):
    return app.send_task("reports.tasks.count_since", args=[30], queue="media")


@pytest.mark.parametrize("host, query", [
    pytest.param("localhost", "ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", id="rds-form"),
    pytest.param("127.0.0.1", "ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", id="ip-in-certificate"),
    # The URL a Django project shares: dj-database-url passes ssl_mode to mysqlclient as is.
    pytest.param("localhost", "ssl-ca={ca}&ssl_mode=VERIFY_IDENTITY", id="mysqlclient-spelling"),
    # VERIFY_CA checks the chain, not the name: the address the certificate lacks is accepted.
    pytest.param("127.0.0.2", "ssl-mode=VERIFY_CA&ssl-ca={ca}", id="verify-ca-other-name"),
    # No options: sqlx's PREFERRED upgrades to TLS, verifying nothing (see the VERIFY_CA case
    # without a CA below, which the same server certificate fails).
    pytest.param("localhost", "", id="no-options-preferred"),
])
def test_accepted_urls_connect_over_tls(app, example_worker, tls_db, host, query):
    before = set(tls_db.sessions())
    worker = example_worker({"DATABASE_URL": tls_db.url(host, query)})
    assert f"MySQL pool: mysql://{USER}:***@{host}:" in worker.log()
    count = _count_since(app).get(timeout=15)
    assert isinstance(count, int) and count >= 0
    new = {k: v for k, v in tls_db.sessions().items() if k not in before}
    assert new, "the worker's session is not on the server"
    for version, cipher in new.values():
        assert version.startswith("TLSv1.") and cipher, (version, cipher)
    assert PASSWORD not in worker.log()


@pytest.mark.parametrize("host, query, reason", [
    # Signed by another CA than the one given.
    pytest.param("localhost", "ssl-mode=VERIFY_IDENTITY&ssl-ca={other_ca}", "invalid peer certificate: UnknownIssuer",
                 id="unrelated-ca"),
    # Without the worker's help sqlx would skip ssl_mode, stay PREFERRED and accept this.
    pytest.param("localhost", "ssl-ca={other_ca}&ssl_mode=VERIFY_IDENTITY", "invalid peer certificate: UnknownIssuer",
                 id="unrelated-ca-mysqlclient-spelling"),
    # A CA without a mode means VERIFY_CA (sqlx alone would ignore the CA).
    pytest.param("localhost", "ssl-ca={other_ca}", "invalid peer certificate: UnknownIssuer",
                 id="unrelated-ca-no-mode"),
    # The right CA, but an address the certificate does not name.
    pytest.param("127.0.0.2", "ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", "certificate not valid for name",
                 id="verify-identity-other-name"),
    # Our CA is not among the public roots sqlx also trusts: so the no-options success above
    # checked no certificate.
    pytest.param("localhost", "ssl-mode=VERIFY_CA", "invalid peer certificate: UnknownIssuer", id="verify-ca-no-ca"),
    # Without TLS the server itself refuses the worker.
    pytest.param("localhost", "ssl-mode=DISABLED", "Access denied for user 'tls_app'", id="disabled"),
])
def test_refused_connections_retry_with_the_reason_and_no_password(app, example_worker, tls_db, host, query,
                                                                     reason):
    worker = example_worker({"DATABASE_URL": tls_db.url(host, query)})
    r = _count_since(app)
    worker.wait_log(rf"count_since\[{r.id}\] retry: Retry in 5s: RuntimeError\(.*{re.escape(reason)}", timeout=15)
    wait_for(lambda: r.state == "RETRY", timeout=10, what="the RETRY state")
    assert isinstance(r.result, RuntimeError) and reason in str(r.result)
    assert PASSWORD not in worker.log() and PASSWORD not in str(r.result)
