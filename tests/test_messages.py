"""Every message form Python Celery sends is understood (protocol v1 and v2, JSON and msgpack,
each compression Kombu ships), and bad input is set aside with its reason on the dead-letter
list, never executed, while the worker carries on with the next message."""

import base64
import json

import pytest

from support import DEAD_LETTER, dead_letters, make_app, meta, wait_for


def captured(app, broker, queue="celery", **send):
    """A real message as Celery writes it: sent to a scratch queue no one consumes, then taken."""
    r = app.send_task(queue="scratch", **send)
    raw = broker.rpop("scratch")
    assert raw, "Celery did not publish"
    env = json.loads(raw)
    env["properties"]["delivery_info"]["routing_key"] = queue
    return r, env


def test_protocol_v1_messages_run(redis_server, start_worker):
    app1 = make_app(redis_server, task_protocol=1)
    start_worker()
    r = app1.send_task("celeriac.test.add", args=[20], kwargs={"y": 22})
    assert r.get(timeout=5) == 42
    app1.close()


def test_msgpack_body(app, start_worker):
    start_worker()
    r = app.send_task("celeriac.test.echo", args=[1, "x"], kwargs={"k": [1, 2]}, serializer="msgpack")
    assert r.get(timeout=5) == {"args": [1, "x"], "kwargs": {"k": [1, 2]}}


@pytest.mark.parametrize("compression", ["zlib", "gzip", "bzip2", "lzma"])
def test_compressed_bodies(app, broker, start_worker, compression):
    start_worker()
    r = app.send_task("celeriac.test.add", args=[40, 2], compression=compression)
    assert r.get(timeout=5) == 42


def test_pickle_is_set_aside_never_deserialized(app, broker, backend, start_worker):
    w = start_worker()
    r = app.send_task("celeriac.test.add", args=[1, 2], serializer="pickle")
    wait_for(lambda: broker.llen(DEAD_LETTER) == 1, what="the pickle message set aside")
    [dead] = dead_letters(broker)
    assert "pickle" in dead["reason"] and "never deserialized" in dead["reason"]
    assert dead["queue"] == "celery" and json.loads(dead["raw"])["headers"]["id"] == r.id
    assert "set aside on the list 'celeriac.rejected'" in w.log()
    assert app.send_task("celeriac.test.add", args=[2, 2]).get(timeout=5) == 4
    assert meta(backend, r.id) is None and broker.hlen("unacked") == 0


def bad_entries(app, broker):
    """List entries no worker can run, each with the words its dead-letter reason must hold."""
    _, env = captured(app, broker, name="celeriac.test.add", args=[1, 2])
    out = [(b"not json at all", "not a Kombu envelope"), (b"[1, 2, 3]", "not a Kombu envelope"),
           (b"\xff\xfe binary", "not a Kombu envelope")]

    def variant(change, words):
        e = json.loads(json.dumps(env))
        e["properties"]["delivery_tag"] = f"bad-{len(out)}"
        change(e)
        out.append((json.dumps(e).encode(), words))

    variant(lambda e: e.update(body="!!!not base64!!!"), "base64")
    variant(lambda e: e.update(body=base64.b64encode(b"{truncated").decode()), "not valid application/json")
    variant(lambda e: e["headers"].pop("task"), "missing field `task`")
    variant(lambda e: e["headers"].update(eta="next tuesday"), "field `eta` is invalid")
    variant(lambda e: e["headers"].update(retries="many"), "field `retries` is invalid")
    variant(lambda e: e.update({"content-type": "application/x-yaml"}), "unsupported content type")
    variant(lambda e: e["headers"].update(compression="application/zstd"), "unsupported compression")
    variant(lambda e: e.update(body=base64.b64encode(b'{"no": "args"}').decode()), "unexpected shape")
    variant(lambda e: e.update(body=base64.b64encode(b'{"args": [1, 2]}').decode(), headers={}), "missing field `task`")
    return out


def test_garbage_is_set_aside_with_its_reason_and_the_worker_carries_on(app, broker, backend, start_worker):
    """Queued before the worker starts, so its batch fetch (the Lua script) meets them."""
    entries = bad_entries(app, broker)
    for raw, _ in entries:
        broker.lpush("celery", raw)
    ok = app.send_task("celeriac.test.add", args=[5, 5])
    w = start_worker()
    assert ok.get(timeout=10) == 10
    wait_for(lambda: broker.llen(DEAD_LETTER) == len(entries), what="every bad entry set aside")
    dead = dead_letters(broker)
    for raw, words in entries:
        matches = [d for d in dead if d["raw"] == raw]
        assert matches, f"{raw[:60]!r} was not set aside"
        assert words in matches[0]["reason"], (words, matches[0]["reason"])
        assert matches[0]["queue"] == "celery" and matches[0]["worker"].startswith("rs1@")
    # Nothing ran, nothing is left unacked or on the queue, and the worker is still up.
    assert backend.keys("celery-task-meta-*") == [f"celery-task-meta-{ok.id}".encode()]
    wait_for(lambda: broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0, what="no unacked")
    assert broker.llen("celery") == 0
    assert w.proc.poll() is None
    assert w.log().count("not executed") == len(entries)
    assert app.send_task("celeriac.test.mul", args=[3, 3]).get(timeout=5) == 9


def test_garbage_while_idle_is_set_aside_too(app, broker, start_worker):
    """The blocking poll path (worker idle, BRPOP) handles garbage like the batch path."""
    w = start_worker()
    for raw in (b"{oops", b"\xff\x00 binary"):
        broker.lpush("celery", raw)
        wait_for(lambda: raw in [d["raw"] for d in dead_letters(broker)], what="set aside")
    assert all("not a Kombu envelope" in d["reason"] for d in dead_letters(broker))
    assert app.send_task("celeriac.test.add", args=[1, 1]).get(timeout=5) == 2
    assert w.proc.poll() is None
