"""celeriac-worker's media.thumbnail and media.purge_expired (docs/media-tasks.md) end to end,
driven by a real Django 5.2 project (tests/djangosite/): Django saves images through
django-storages to S3 (the moto server) and MySQL (the private MariaDB), and sends
media.thumbnail by name from transaction.on_commit; our worker makes the thumbnails; Django
reads the rows back, and the thumbnails are read from S3 and opened with Pillow. Pillow is the
referee of the sizes (Image.thumbnail), orientation (ImageOps.exif_transpose) and content.

One worker serves the module, reaching S3 and MySQL through TCP proxies (tests/media_support.py)
that the outage tests switch off and on again. It runs with CELERIAC_MAX_IMAGE_PIXELS=1000000
and CELERIAC_THUMBNAIL_SIZES=128,48, and in a non-UTC local time zone (TZ), so that a time
written in local time instead of UTC shows. The module has its own Redis server: the suite's
per-test FLUSHALL would otherwise remove the queue bindings under the long-lived processes.
"""

import atexit
import base64
import datetime as dt
import json
import os
import random
import re

import pytest
from celery import Celery

from media_support import (DjangoSite, MotoServer, ResultRecorder, TcpProxy, encode, jpeg_with_promised_size,
                           open_image, png_header_only, s3_keys)
from support import WORKER_BIN, CeleriacWorker, RedisServer, make_app

pytestmark = pytest.mark.once

pytest.importorskip("PIL", reason="Pillow is not installed (the media tests need Django's media deps)")
pytest.importorskip("storages", reason="django-storages is not installed")
pytest.importorskip("boto3", reason="boto3 is not installed")

from PIL import Image, ImageChops, ImageOps, ImageStat  # noqa: E402

BUCKET = "media-e2e"
PREFIX = "site/media/"
DEFAULT_SIZES = [128, 48]
MAX_PIXELS = 1_000_000
ROOT_DB = 2  # the broker database of the AWS_LOCATION="" project and worker (results in 3)
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_S3_REGION_NAME": "us-east-1",
           "AWS_STORAGE_BUCKET_NAME": BUCKET, "AWS_EC2_METADATA_DISABLED": "true"}


# --- fixtures: one of each server, worker and Django process for the module -----------------

@pytest.fixture(scope="module")
def media_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("media-redis"))
    server.start()
    yield server
    atexit.register(server.stop)  # after the last AsyncResult's finalizer, as conftest does


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_server):
    return s3_server.client()


@pytest.fixture(scope="module")
def media_db(mariadb_server):
    name = f"media_{os.getpid()}"
    mariadb_server.drop_database(name)
    mariadb_server.create_database(name)
    yield name
    mariadb_server.drop_database(name)


@pytest.fixture(scope="module")
def s3_proxy(s3_server):
    proxy = TcpProxy(s3_server.port, name="s3-proxy").start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def db_proxy(mariadb_server):
    proxy = TcpProxy(mariadb_server.port, name="db-proxy").start()
    yield proxy
    proxy.close()


def site_env(s3_server, mariadb_server, db, redis, broker_db, location):
    """What a Django pod gets: the database and S3 directly."""
    return dict(S3_KEYS, DATABASE_URL=mariadb_server.url(db), AWS_S3_ENDPOINT_URL=s3_server.url,
                AWS_LOCATION=location, CELERY_BROKER_URL=redis.url(broker_db),
                CELERY_RESULT_BACKEND=redis.url(broker_db + 1))


def worker_env(s3_endpoint, db_url, location):
    return dict(S3_KEYS, DATABASE_URL=db_url, AWS_S3_ENDPOINT_URL=s3_endpoint, AWS_LOCATION=location,
                CELERIAC_THUMBNAIL_SIZES=",".join(map(str, DEFAULT_SIZES)),
                CELERIAC_MAX_IMAGE_PIXELS=str(MAX_PIXELS), TZ="Asia/Kolkata")


def start_media_worker(redis, broker_db, env, log_path, name):
    argv = [WORKER_BIN, "--broker", redis.url(broker_db), "--result-backend", redis.url(broker_db + 1),
            "--hostname", f"{name}@%h", "--loglevel", "INFO", "-Q", "media"]
    worker = CeleriacWorker(argv, log_path, env=dict(os.environ, **env)).start()
    try:
        worker.wait_ready(timeout=30)
    except BaseException:
        worker.kill()
        raise
    return worker


@pytest.fixture(scope="module")
def site(s3_server, mariadb_server, media_db, media_redis, tmp_path_factory):
    """The Django project (migrated on start), sending to Redis db 0, results in db 1."""
    django = DjangoSite(site_env(s3_server, mariadb_server, media_db, media_redis, 0, PREFIX),
                        tmp_path_factory.mktemp("djangosite") / "django.log")
    yield django
    django.close()


@pytest.fixture(scope="module")
def root_site(s3_server, mariadb_server, media_db, media_redis, tmp_path_factory):
    """The same project with AWS_LOCATION="", sending to Redis db ROOT_DB (results in the next).
    Only test_an_empty_aws_location... runs a worker on it."""
    django = DjangoSite(site_env(s3_server, mariadb_server, media_db, media_redis, ROOT_DB, ""),
                        tmp_path_factory.mktemp("djangosite-root") / "django-root.log")
    yield django
    django.close()


@pytest.fixture(scope="module")
def worker(site, media_redis, media_db, s3_proxy, db_proxy, tmp_path_factory):
    """celeriac-worker -Q media, reaching S3 and MySQL through the proxies."""
    env = worker_env(f"http://127.0.0.1:{s3_proxy.port}", f"mysql://root@127.0.0.1:{db_proxy.port}/{media_db}",
                     PREFIX)
    w = start_media_worker(media_redis, 0, env, tmp_path_factory.mktemp("media-worker") / "celeriac-media.log",
                           "media")
    yield w
    w.kill()


@pytest.fixture(scope="module")
def recorder(media_redis):
    rec = ResultRecorder(media_redis.client(1))
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def capp(media_redis):
    """A plain Celery client on the module's Redis (for messages Django would never send)."""
    app = make_app(media_redis)
    yield app
    app.close()


@pytest.fixture(autouse=True)
def _media_test(request, s3_proxy, db_proxy):
    """Shows the module's logs when a test fails, and leaves the proxies up whatever happened."""
    for name in ("worker", "site", "root_site"):
        if name in request.fixturenames:
            request.node.__dict__.setdefault("worker_processes", []).append(request.getfixturevalue(name))
    yield
    s3_proxy.up()
    db_proxy.up()


# --- helpers ---------------------------------------------------------------------------------

def picture(w, h, mode="RGB"):
    """Smooth gradients (red across, green down) with a dark block in the top-left corner:
    any flip, rotation or crop of it shows as a large difference."""
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            dark = x < w // 3 and y < h // 3
            px[x, y] = (20, 20, 20) if dark else (55 + 200 * x // max(w - 1, 1), 55 + 200 * y // max(h - 1, 1), 140)
    return img.convert(mode) if mode != "RGB" else img


def flat(img):
    """What the contract makes of an original before resizing: EXIF orientation applied,
    transparency flattened on white, RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def pillow_thumbnail(data, size):
    """Pillow's own thumbnail of an original, as the referee of size and content."""
    img = flat(open_image(data))
    img.thumbnail((size, size))
    return img


def mean_difference(a, b):
    assert a.size == b.size, (a.size, b.size)
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def s3_object(s3, key):
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    return obj["Body"].read(), obj["ContentType"]


def upload(site, name, data):
    """A committed asset whose original went through Django's storage, with no task sent (for
    tests that send media.thumbnail themselves, with their own sizes)."""
    return site.run("""
        asset = MediaAsset()
        asset.original.save(name, ContentFile(data), save=False)
        asset.save()
        result = row(asset.id)
    """, name=name, data=data)


def create(site, recorder, name, data, timeout=20):
    """services.create_asset (upload + on_commit send_task); waits for the worker -> (row before,
    final result records)."""
    before = site.create_asset(name, data)
    records = recorder.wait_ready(before["task_id"], timeout=timeout)
    return before, records


def thumbnail(capp, recorder, *args, timeout=20, **kwargs):
    """Sends media.thumbnail as any Celery client would; waits -> (AsyncResult, records)."""
    r = capp.send_task("media.thumbnail", args=list(args), kwargs=kwargs, queue="media")
    return r, recorder.wait_ready(r.id, timeout=timeout)


def final(records):
    return records[-1]


def exc(record):
    return record["result"]["exc_type"], record["result"]["exc_message"]


def check_ready(site, s3, asset_id, data, sizes, result, prefix=PREFIX, max_diff=12.0):
    """The row as the contract's step 5 says, the task result as step 6, and every thumbnail in S3
    a JPEG (bytes and Content-Type) of Pillow's size with Pillow's picture. -> (row, {size: bytes})."""
    original = flat(open_image(data))
    row = site.row(asset_id)
    expected = {str(s): {"key": f"thumbnails/{asset_id}/{s}.jpg",
                         "width": pillow_thumbnail(data, s).width, "height": pillow_thumbnail(data, s).height}
                for s in sizes}
    assert (row["status"], row["error"]) == ("ready", "")
    assert (row["width"], row["height"]) == original.size
    assert row["thumbnails"] == expected
    assert result == expected
    blobs = {}
    for s in sizes:
        key = prefix + expected[str(s)]["key"]
        body, content_type = s3_object(s3, key)
        assert content_type == "image/jpeg", key
        thumb = open_image(body)
        assert thumb.format == "JPEG", key
        assert thumb.size == (expected[str(s)]["width"], expected[str(s)]["height"]), key
        diff = mean_difference(thumb, pillow_thumbnail(data, s))
        assert diff < max_diff, f"{key} differs from Pillow's thumbnail by {diff:.1f} on average"
        blobs[s] = body
    # Django's storage finds them under the stored names: the worker joined AWS_LOCATION as it does.
    seen = site.run("result = [[storage.exists(k), storage.size(k)] for k in keys]",
                    keys=[expected[str(s)]["key"] for s in sizes])
    assert seen == [[True, len(blobs[s])] for s in sizes]
    return row, blobs


def parse_time(text):
    return dt.datetime.fromisoformat(text)


# --- the Django half -------------------------------------------------------------------------

def test_django_uploads_through_storage_and_sends_the_task_on_commit(root_site, media_redis, s3):
    """The project alone (the AWS_LOCATION="" one, whose broker database no worker reads outside
    its own test): its migration applied, the original uploaded through django-storages as
    originals/<name>, and one media.thumbnail message published on queue `media` only once the
    outermost transaction committed (none for a rolled-back one), in the shape a Python Celery
    worker reads."""
    applied = root_site.run("""
        from django.db.migrations.recorder import MigrationRecorder
        result = sorted(MigrationRecorder.Migration.objects.filter(app="media").values_list("name", flat=True))
    """)
    assert applied == ["0001_initial"]
    broker = media_redis.client(ROOT_DB)
    broker.delete("media")
    jpeg = encode(picture(40, 30), "JPEG")
    out = root_site.run("""
        before = len(published)
        with transaction.atomic():
            asset = services.create_asset(name, data)  # a savepoint inside ours
            inside = len(published) - before
        result = {"inside": inside, "after": published[before:], "row": row(asset.id)}
    """, name="cat.jpg", data=jpeg)
    row = out["row"]
    assert out["inside"] == 0
    [sent] = out["after"]
    assert (sent["task"], sent["args"], sent["kwargs"]) == ("media.thumbnail", [row["id"]], {})
    assert sent["routing_key"] == "media" and sent["in_transaction"] is False
    assert row["status"] == "pending" and row["thumbnails"] == {} and row["width"] is None
    assert row["original"].startswith("originals/cat") and row["original"].endswith(".jpg")
    assert s3_object(s3, row["original"])[0] == jpeg

    rolled_back = root_site.run("""
        before = len(published)
        class Undo(Exception):
            pass
        try:
            with transaction.atomic():
                services.create_asset(name, data)
                raise Undo
        except Undo:
            pass
        result = len(published) - before
    """, name="dog.jpg", data=jpeg)
    assert rolled_back == 0

    [raw] = broker.lrange("media", 0, -1)
    broker.delete("media")
    env = json.loads(raw)
    args, kwargs, embed = json.loads(base64.b64decode(env["body"]))
    assert env["headers"]["task"] == "media.thumbnail" and env["headers"]["id"] == sent["id"]
    assert (args, kwargs) == ([row["id"]], {})
    assert env["properties"]["delivery_info"]["routing_key"] == "media"
    assert env["content-type"] == "application/json"


# --- thumbnails ------------------------------------------------------------------------------

def test_a_jpeg_with_exif_orientation_6_is_turned_upright(site, worker, recorder, s3):
    """A 300x200 JPEG tagged Orientation=6 (rotate 90° clockwise to view) gets width 200 and
    height 300, and thumbnails taller than wide with Pillow's exif_transpose picture in them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(picture(300, 200), "JPEG", quality=92, exif=exif)
    before, records = create(site, recorder, "upright.jpg", data)
    assert s3_object(s3, PREFIX + before["original"])[0] == data  # Django's upload, under AWS_LOCATION
    assert final(records)["status"] == "SUCCESS", final(records)
    row, blobs = check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])
    assert (row["width"], row["height"]) == (200, 300)
    t = open_image(blobs[128])
    assert t.height == 128 and t.width < t.height
    # The dark block, top-left as stored, is top-right once turned upright.
    assert sum(t.getpixel((t.width - 5, 5))) < 150 and sum(t.getpixel((5, 5))) > 250


def test_a_png_with_alpha_is_flattened_on_white(site, worker, recorder, s3):
    """An RGBA PNG: fully transparent pixels (black underneath) come out white in the JPEG
    thumbnails, half-transparent ones blended on white, opaque ones unchanged."""
    img = picture(160, 120, "RGBA")
    px = img.load()
    for y in range(120):
        for x in range(160):
            if x >= 80:
                px[x, y] = (0, 0, 0, 0)
            elif y >= 60:
                px[x, y] = (0, 0, 255, 128)
    data = encode(img, "PNG")
    before, records = create(site, recorder, "alpha.png", data)
    assert final(records)["status"] == "SUCCESS", final(records)
    row, blobs = check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])
    t = open_image(blobs[128]).convert("RGB")
    assert t.size == (128, 96)
    assert min(t.getpixel((120, 20))) >= 240, t.getpixel((120, 20))  # transparent: white, not black
    r, g, b = t.getpixel((30, 85))  # half-transparent blue on white: about (127, 127, 255)
    assert 100 <= r <= 155 and 100 <= g <= 155 and b >= 235, (r, g, b)


def test_a_webp_gets_thumbnails(site, worker, recorder, s3):
    """A lossy WebP original."""
    data = encode(picture(240, 180), "WEBP", quality=90)
    before, records = create(site, recorder, "photo.webp", data)
    assert final(records)["status"] == "SUCCESS", final(records)
    check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])


def test_a_webp_with_alpha_is_flattened_on_white(site, worker, recorder, s3):
    """A lossless WebP with transparent pixels."""
    img = picture(100, 100, "RGBA")
    img.paste((0, 0, 0, 0), (50, 0, 100, 100))
    data = encode(img, "WEBP", lossless=True)
    before, records = create(site, recorder, "alpha.webp", data)
    assert final(records)["status"] == "SUCCESS", final(records)
    row, blobs = check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])
    assert min(open_image(blobs[48]).convert("RGB").getpixel((40, 24))) >= 240


def test_the_format_comes_from_the_bytes_not_the_name(site, worker, recorder, s3):
    """A real PNG uploaded as .jpg is made into thumbnails like any PNG."""
    data = encode(picture(90, 60), "PNG")
    before, records = create(site, recorder, "really-a-png.jpg", data)
    assert before["original"].endswith(".jpg")
    assert final(records)["status"] == "SUCCESS", final(records)
    check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])


def test_a_small_original_is_never_upscaled(site, worker, capp, recorder, s3):
    """A 100x80 original with sizes [128, 64]: 128 keeps 100x80, 64 gives 64x51."""
    data = encode(picture(100, 80), "JPEG", quality=92)
    asset = upload(site, "small.jpg", data)
    r, records = thumbnail(capp, recorder, asset["id"], [128, 64])
    assert final(records)["status"] == "SUCCESS", final(records)
    row, _ = check_ready(site, s3, asset["id"], data, [128, 64], r.get(timeout=5))
    assert (row["thumbnails"]["128"]["width"], row["thumbnails"]["128"]["height"]) == (100, 80)
    assert (row["thumbnails"]["64"]["width"], row["thumbnails"]["64"]["height"]) == (64, 51)


@pytest.mark.parametrize("w,h,sizes", [
    (13, 9, [5, 12]),  # 5: 3.46 -> 4 (closest aspect, not the nearest integer)
    (11, 7, [7]),  # 4.45 -> 5
    (5, 32, [16, 3]),  # 2.5 -> 2, and a 1-pixel-wide floor
    (9, 32, [16]),  # 4.5 -> 4
    (301, 199, [7, 33, 128]),
    (997, 3, [64]),  # a height under one pixel is 1
])
def test_sizes_are_rounded_as_pillow_thumbnail_rounds(site, worker, capp, recorder, s3, w, h, sizes):
    """Each thumbnail's size is Pillow's Image.thumbnail on the same original, for sizes where
    plain rounding or flooring would differ."""
    data = encode(picture(w, h), "PNG")
    asset = upload(site, f"odd-{w}x{h}.png", data)
    r, records = thumbnail(capp, recorder, asset["id"], sizes)
    assert final(records)["status"] == "SUCCESS", final(records)
    row, _ = check_ready(site, s3, asset["id"], data, sizes, r.get(timeout=5), max_diff=40.0)
    got = {s: (row["thumbnails"][str(s)]["width"], row["thumbnails"][str(s)]["height"]) for s in sizes}
    assert got == {s: pillow_thumbnail(data, s).size for s in sizes}


def test_a_rerun_writes_the_same_objects_and_row_and_other_sizes_replace_the_dict(site, worker, capp, recorder, s3):
    """Twice with the same sizes: byte-identical objects and the same row but updated_at; then
    other sizes (as keyword arguments): the dict holds only that run's sizes, and the objects of
    the sizes it dropped are deleted."""
    data = encode(picture(200, 150), "JPEG", quality=90)
    asset = upload(site, "twice.jpg", data)
    r1, rec1 = thumbnail(capp, recorder, asset["id"], [64, 32])
    assert final(rec1)["status"] == "SUCCESS", final(rec1)
    row1, blobs1 = check_ready(site, s3, asset["id"], data, [64, 32], r1.get(timeout=5))
    r2, rec2 = thumbnail(capp, recorder, asset["id"], [64, 32])
    assert final(rec2)["status"] == "SUCCESS", final(rec2)
    row2, blobs2 = check_ready(site, s3, asset["id"], data, [64, 32], r2.get(timeout=5))
    assert blobs2 == blobs1
    assert {k: v for k, v in row2.items() if k != "updated_at"} == {k: v for k, v in row1.items() if k != "updated_at"}
    assert parse_time(row2["updated_at"]) > parse_time(row1["updated_at"])

    r3, rec3 = thumbnail(capp, recorder, asset_id=asset["id"], sizes=[40])
    assert final(rec3)["status"] == "SUCCESS", final(rec3)
    row3, _ = check_ready(site, s3, asset["id"], data, [40], r3.get(timeout=5))
    assert list(row3["thumbnails"]) == ["40"]
    # The thumbnails the dict no longer lists are gone too, so a purge (which deletes what the
    # row lists) leaves nothing behind.
    assert s3_keys(s3, BUCKET, f"{PREFIX}thumbnails/{asset['id']}/") == [f"{PREFIX}thumbnails/{asset['id']}/40.jpg"]


def test_updated_at_is_set_by_the_task_in_utc(site, worker, capp, recorder):
    """The task's one UPDATE sets updated_at to the time it ran, in UTC (the worker runs with
    TZ=Asia/Kolkata, 5.5 hours away), as Django reads it."""
    asset = upload(site, "clock.png", encode(picture(20, 20), "PNG"))
    t0 = dt.datetime.now(dt.timezone.utc)
    r, records = thumbnail(capp, recorder, asset["id"], [8])
    t1 = dt.datetime.now(dt.timezone.utc)
    assert final(records)["status"] == "SUCCESS", final(records)
    updated = parse_time(site.row(asset["id"])["updated_at"])
    assert updated > parse_time(asset["updated_at"])
    slack = dt.timedelta(seconds=1)
    assert t0 - slack <= updated <= t1 + slack, (t0, updated, t1)


# --- failures --------------------------------------------------------------------------------

def retry_line(record):
    """The last line of a RETRY record's traceback: `celery.exceptions.Retry: Retry in Ns: Exc(...)`."""
    return record["traceback"].rstrip("\n").rsplit("\n", 1)[-1]


def test_a_missing_row_is_retried_five_times_then_fails_with_lookuperror(site, worker, capp, recorder):
    """Five RETRY records a second apart, stored as Python's worker stores a retry with
    exc=LookupError (the exception as result, date_done null, Retry's message last in the
    traceback), then FAILURE LookupError, which AsyncResult.get raises."""
    missing = site.run("from django.db.models import Max\n"
                       "result = (MediaAsset.objects.aggregate(m=Max('id'))['m'] or 0) + 1000")
    message = f"media asset {missing} does not exist"
    r, records = thumbnail(capp, recorder, missing, timeout=30)
    retries = [x for x in records if x["status"] == "RETRY"]
    assert [x["status"] for x in records] == ["RETRY"] * 5 + ["FAILURE"]
    for x in retries:
        assert x["result"] == {"exc_type": "LookupError", "exc_message": [message], "exc_module": "builtins"}
        assert x["date_done"] is None
    gaps = [b["_seen"] - a["_seen"] for a, b in zip(records, records[1:])]
    assert all(g >= 0.8 for g in gaps), gaps
    assert final(records)["result"] == {"exc_type": "LookupError", "exc_message": [message],
                                        "exc_module": "builtins"}
    assert final(records)["traceback"].endswith(f"\nLookupError: {message}\n"), final(records)["traceback"]
    with pytest.raises(LookupError, match=f"^{re.escape(message)}$"):
        r.get(timeout=5)
    assert [retry_line(x) for x in retries] == [f"celery.exceptions.Retry: Retry in 1s: LookupError({message!r})"] * 5


def test_a_row_committed_just_after_the_send_is_processed(site, worker, recorder, s3):
    """A project that sends before its commit (no on_commit) and commits 1.5 s later: the worker,
    retrying while the row is not there yet, processes it like any other."""
    data = encode(picture(64, 64), "PNG")
    out = site.run("""
        with transaction.atomic():
            asset = MediaAsset()
            asset.original.save(name, ContentFile(data), save=False)
            asset.save()
            task = services.request_thumbnails(asset.id)
            time.sleep(1.5)
        result = {"id": asset.id, "task_id": task.id}
    """, name="late.png", data=data)
    records = recorder.wait_ready(out["task_id"], timeout=20)
    assert final(records)["status"] == "SUCCESS", final(records)
    check_ready(site, s3, out["id"], data, DEFAULT_SIZES, final(records)["result"])


def failed_row(site, asset_id, message):
    row = site.row(asset_id)
    assert (row["status"], row["error"]) == ("failed", message)
    return row


def test_a_missing_original_fails_at_once(site, worker, capp, recorder):
    """A row whose file is not in the bucket: FAILURE FileNotFoundError naming the full key and
    the bucket, no retry; the row `failed` with the message (without the type) in `error`."""
    asset = site.run("a = MediaAsset.objects.create(original='originals/ghost.jpg')\nresult = row(a.id)")
    message = f"media asset {asset['id']}: original {PREFIX}originals/ghost.jpg is not in bucket {BUCKET}"
    r, records = thumbnail(capp, recorder, asset["id"])
    assert [x["status"] for x in records] == ["FAILURE"]
    assert exc(final(records)) == ("FileNotFoundError", [message])
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        r.get(timeout=5)
    failed_row(site, asset["id"], message)


def test_files_that_are_not_jpeg_png_or_webp_fail_and_a_fixed_file_then_works(site, worker, capp, recorder, s3):
    """A text file named .jpg and a real GIF: FAILURE ValueError at once, rows `failed`. Once the
    object holds a real JPEG, a rerun makes the thumbnails and clears `error`."""
    for name, data in [("notes.jpg", b"this is not an image, only text\n" * 20),
                       ("anim.gif", encode(picture(30, 20), "GIF"))]:
        asset = upload(site, name, data)
        message = f"media asset {asset['id']}: {asset['original']} is not a JPEG, PNG or WebP image"
        r, records = thumbnail(capp, recorder, asset["id"])
        assert [x["status"] for x in records] == ["FAILURE"], name
        assert exc(final(records)) == ("ValueError", [message])
        failed_row(site, asset["id"], message)
    fixed = encode(picture(60, 40), "JPEG")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + asset["original"], Body=fixed)
    r, records = thumbnail(capp, recorder, asset["id"], [32])
    assert final(records)["status"] == "SUCCESS", final(records)
    check_ready(site, s3, asset["id"], fixed, [32], r.get(timeout=5))


def test_corrupt_and_truncated_images_fail_at_once(site, worker, capp, recorder):
    """A JPEG cut in half (which lenient decoders fill in with grey), a PNG and a WebP cut short:
    FAILURE `... is corrupt: <why>` at once, rows `failed`."""
    jpeg = encode(picture(200, 150), "JPEG", quality=95)
    noise = Image.frombytes("RGB", (120, 90), random.Random(6).randbytes(120 * 90 * 3))  # incompressible
    png = encode(noise, "PNG")
    webp = encode(noise, "WEBP", quality=90)
    cases = [("half.jpg", jpeg[:len(jpeg) // 2]), ("short.png", png[:len(png) * 2 // 3]),
             ("short.webp", webp[:len(webp) * 2 // 3])]
    for name, data in cases:
        assert len(data) > 1000, name  # cut in the image data, well after the headers
        with pytest.raises(OSError):  # the referee agrees these are broken
            open_image(data)
    for name, data in cases:
        asset = upload(site, name, data)
        prefix = f"media asset {asset['id']}: {asset['original']} is corrupt: "
        r, records = thumbnail(capp, recorder, asset["id"])
        assert [x["status"] for x in records] == ["FAILURE"], (name, final(records))
        exc_type, [message] = exc(final(records))
        assert exc_type == "ValueError" and message.startswith(prefix) and len(message) > len(prefix), (name, message)
        failed_row(site, asset["id"], message)


def test_the_pixel_limit_is_checked_before_decoding(site, worker, capp, recorder, s3):
    """With CELERIAC_MAX_IMAGE_PIXELS=1000000: headers promising 10000x6000 (a 100-byte PNG) and
    4000x3000 (a small JPEG) fail with the pixel count and not as corrupt, so nothing was decoded;
    a real 101x9901 PNG (limit + 1) fails; a real 1000x1000 PNG (exactly the limit) works."""
    small = encode(picture(32, 24), "JPEG")
    cases = [("bomb.png", png_header_only(10000, 6000), 10000, 6000),
             ("bomb.jpg", jpeg_with_promised_size(small, 4000, 3000), 4000, 3000),
             ("tall.png", encode(Image.new("RGB", (101, 9901), (10, 120, 200)), "PNG"), 101, 9901)]
    assert len(cases[0][1]) < 200
    for name, data, w, h in cases:
        asset = upload(site, name, data)
        message = (f"media asset {asset['id']}: {asset['original']} has {w * h} pixels ({w}x{h}), "
                   f"more than the limit of {MAX_PIXELS}")
        r, records = thumbnail(capp, recorder, asset["id"])
        assert [x["status"] for x in records] == ["FAILURE"], name
        assert exc(final(records)) == ("ValueError", [message])
        failed_row(site, asset["id"], message)
    at_limit = encode(Image.new("RGB", (1000, 1000), (200, 30, 60)), "PNG")
    asset = upload(site, "exactly.png", at_limit)
    r, records = thumbnail(capp, recorder, asset["id"], [16], timeout=30)
    assert final(records)["status"] == "SUCCESS", final(records)
    check_ready(site, s3, asset["id"], at_limit, [16], r.get(timeout=5))


def test_wrong_argument_types_fail_with_typeerror(site, worker, capp, recorder):
    """asset_id and sizes of the wrong type: FAILURE TypeError naming the value as Python's repr
    shows it, no retry, and the row untouched."""
    asset = upload(site, "args.png", encode(picture(10, 10), "PNG"))
    cases = [(["abc"], "asset_id", "abc"), ([1.5], "asset_id", 1.5), ([None], "asset_id", None)]
    cases += [([asset["id"], bad], "sizes", bad) for bad in ("128", [0], [64, "x"], [-16], 128)]
    for args, arg, value in cases:
        kind = "an integer" if arg == "asset_id" else "a list of positive integers"
        message = f"media.thumbnail() argument {arg} must be {kind}, not {value!r}"
        r, records = thumbnail(capp, recorder, *args)
        assert [x["status"] for x in records] == ["FAILURE"], args
        assert exc(final(records)) == ("TypeError", [message]), args
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            r.get(timeout=5)
    assert site.row(asset["id"]) == asset


# --- outages ---------------------------------------------------------------------------------

def check_outage(site, worker, recorder, s3, proxy, how, retries):
    """Cuts the worker off through `proxy`, lets Django create an asset, and checks: `retries`
    RETRY records as Python stores them (the exception as result, date_done null, Retry's
    message last in the traceback), with countdowns 1 s, 2 s, ..., the row left alone meanwhile;
    then the proxy comes back and the task succeeds."""
    data = encode(picture(80, 60), "PNG")
    proxy.down(how)
    before = site.create_asset(f"outage-{proxy.name}.png", data)
    task_id = before["task_id"]
    records = recorder.wait_status(task_id, "RETRY", count=retries, timeout=25)
    seen = [x for x in records if x["status"] == "RETRY"][:retries]
    for x in seen:
        assert x["date_done"] is None
        assert set(x["result"]) == {"exc_type", "exc_message", "exc_module"}, x["result"]
    for a, b in zip(seen, seen[1:]):
        assert b["_seen"] - a["_seen"] >= 0.8
    row = site.row(before["id"])
    assert (row["status"], row["error"], row["thumbnails"]) == ("pending", "", {})
    accepted = proxy.accepted
    proxy.up()
    records = recorder.wait_ready(task_id, timeout=25)
    assert final(records)["status"] == "SUCCESS", final(records)
    assert proxy.accepted > accepted  # it really went through this proxy
    check_ready(site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"])
    lines = [retry_line(x) for x in seen]
    assert lines == [f"celery.exceptions.Retry: Retry in {2 ** i}s: {x['result']['exc_type']}("
                     f"{', '.join(map(repr, x['result']['exc_message']))})" for i, x in enumerate(seen)]
    return records


def test_s3_unreachable_is_retried_until_it_is_back(site, worker, recorder, s3, s3_proxy):
    """S3 resets every connection (pooled ones included): RETRY in 1 s, RETRY in 2 s, then
    SUCCESS once it accepts connections again."""
    check_outage(site, worker, recorder, s3, s3_proxy, "reset", retries=2)


def test_mysql_unreachable_is_retried_until_it_is_back(site, worker, recorder, s3, db_proxy):
    """MySQL refuses connections and the pooled ones are reset: RETRY, then SUCCESS once it is
    back. (One RETRY only: each attempt may wait out the pool's acquire timeout first.)"""
    check_outage(site, worker, recorder, s3, db_proxy, "refuse", retries=1)


# --- AWS_LOCATION ----------------------------------------------------------------------------

def test_an_empty_aws_location_puts_everything_at_the_bucket_root(root_site, s3_server, mariadb_server, media_db,
                                                                   media_redis, s3, tmp_path, request):
    """A project and a worker with AWS_LOCATION="" (on their own Redis databases): originals and
    thumbnails at the root of the bucket, found by Django's storage; a missing original is
    named without a prefix."""
    root = start_media_worker(media_redis, ROOT_DB, worker_env(s3_server.url, mariadb_server.url(media_db), ""),
                              tmp_path / "celeriac-root.log", "root")
    request.node.__dict__.setdefault("worker_processes", []).extend([root, root_site])
    recorder = ResultRecorder(media_redis.client(ROOT_DB + 1))
    client = Celery("root", broker=media_redis.url(ROOT_DB), backend=media_redis.url(ROOT_DB + 1))
    try:
        data = encode(picture(120, 100), "JPEG", quality=90)
        before = root_site.create_asset("rooted.jpg", data)
        assert s3_object(s3, before["original"])[0] == data
        records = recorder.wait_ready(before["task_id"], timeout=20)
        assert final(records)["status"] == "SUCCESS", final(records)
        check_ready(root_site, s3, before["id"], data, DEFAULT_SIZES, final(records)["result"], prefix="")
        assert s3_keys(s3, BUCKET, f"thumbnails/{before['id']}/") == [f"thumbnails/{before['id']}/{s}.jpg"
                                                                     for s in sorted(map(str, DEFAULT_SIZES))]

        ghost = root_site.run("a = MediaAsset.objects.create(original='originals/ghost-root.jpg')\nresult = a.id")
        sent = client.send_task("media.thumbnail", args=[ghost], queue="media")
        records = recorder.wait_ready(sent.id, timeout=20)
        assert exc(final(records)) == ("FileNotFoundError", [
            f"media asset {ghost}: original originals/ghost-root.jpg is not in bucket {BUCKET}"])
    finally:
        client.close()
        recorder.close()
        root.kill()


# --- purge -----------------------------------------------------------------------------------

def make_old(site, ids, age):
    """Moves created_at back by `age` (a timedelta) with the ORM's update(), as a data fix would."""
    site.run("MediaAsset.objects.filter(pk__in=ids).update(created_at=timezone.now() - timedelta(seconds=secs))",
             ids=ids, secs=age.total_seconds())


def purge(capp, recorder, days):
    r = capp.send_task("media.purge_expired", args=[days], queue="media")
    records = recorder.wait_ready(r.id, timeout=20)
    assert final(records)["status"] == "SUCCESS", final(records)
    return final(records)["result"]


def test_purge_expired_deletes_old_assets_and_marks_them(site, worker, capp, recorder, s3):
    """Assets created more than 10 days ago (one ready with thumbnails, one failed): their
    originals and thumbnails leave S3 and the rows become `purged`; the count is returned, a
    second run returns 0; an asset 10 days minus an hour old and a new one are untouched."""
    assets = {}
    for name in ("old.jpg", "edge.jpg", "new.jpg"):
        before, records = create(site, recorder, name, encode(picture(70, 50), "JPEG"))
        assert final(records)["status"] == "SUCCESS", final(records)
        assets[name] = site.row(before["id"])
    broken = upload(site, "old-broken.jpg", b"not an image")
    _, records = thumbnail(capp, recorder, broken["id"])
    assert final(records)["status"] == "FAILURE"
    assets["old-broken.jpg"] = site.row(broken["id"])

    def keys(a):
        return [PREFIX + a["original"]] + [PREFIX + t["key"] for t in a["thumbnails"].values()]

    make_old(site, [assets["old.jpg"]["id"], assets["old-broken.jpg"]["id"]], dt.timedelta(days=10, hours=1))
    make_old(site, [assets["edge.jpg"]["id"]], dt.timedelta(days=10) - dt.timedelta(hours=1))
    kept = {n: site.row(assets[n]["id"]) for n in ("edge.jpg", "new.jpg")}
    everything = s3_keys(s3, BUCKET)
    for a in assets.values():
        assert set(keys(a)) <= set(everything)
    assert len(keys(assets["old.jpg"])) == 1 + len(DEFAULT_SIZES)

    t0 = dt.datetime.now(dt.timezone.utc)
    assert purge(capp, recorder, 10) == 2
    left = set(s3_keys(s3, BUCKET))
    for name in ("old.jpg", "old-broken.jpg"):
        assert not set(keys(assets[name])) & left, name
        row = site.row(assets[name]["id"])
        assert row["status"] == "purged"
        assert parse_time(row["updated_at"]) >= t0 - dt.timedelta(seconds=1)
    for name, row in kept.items():
        assert set(keys(row)) <= left, name
        assert site.row(row["id"]) == row, name
    assert purge(capp, recorder, 10) == 0


def test_a_thumbnail_of_a_purged_asset_fails_and_leaves_the_row(site, worker, capp, recorder, s3):
    """media.thumbnail on a purged row: FAILURE ValueError `media asset N was purged`, and the
    row stays exactly as the purge left it."""
    before, records = create(site, recorder, "gone.png", encode(picture(30, 30), "PNG"))
    assert final(records)["status"] == "SUCCESS", final(records)
    make_old(site, [before["id"]], dt.timedelta(days=401))
    assert purge(capp, recorder, 400) == 1
    purged = site.row(before["id"])
    assert purged["status"] == "purged"
    r, records = thumbnail(capp, recorder, before["id"], [16])
    assert [x["status"] for x in records] == ["FAILURE"]
    assert exc(final(records)) == ("ValueError", [f"media asset {before['id']} was purged"])
    assert site.row(before["id"]) == purged
    assert s3_keys(s3, BUCKET, f"{PREFIX}thumbnails/{before['id']}/") == []
