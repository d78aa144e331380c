"""The Python side of scripts/bench_thumbnails.sh: `media.thumbnail` as a Django team would write
it for a Python Celery worker, with the outcome docs/media-tasks.md describes.

Run by the benchmark as `celery -A pythumbs worker -Q media -P prefork -c N` from this folder.
The broker and the result backend come from BENCH_BROKER_URL and BENCH_RESULT_BACKEND; the rest
from the settings the Django app and celeriac-worker share (DATABASE_URL, AWS_STORAGE_BUCKET_NAME,
AWS_LOCATION, AWS_S3_ENDPOINT_URL, AWS_S3_REGION_NAME, CELERIAC_THUMBNAIL_SIZES,
CELERIAC_MAX_IMAGE_PIXELS). No Django: the row is read and written with PyMySQL, as the ORM
would (one SELECT, one UPDATE), and the bucket with boto3, as django-storages would.

Each pool process opens its own MySQL connection and boto3 client when it starts (a connection
must not cross a fork), and reuses them for every task.

The image work is Pillow's: `Image.thumbnail` decodes a JPEG at a reduced scale (`draft`), but
`ImageOps.exif_transpose` loads the whole image first, so the draft that `thumbnail` would do is
done before it, once, for the largest size (with `thumbnail`'s reducing_gap of 2); each size is
then what `thumbnail` does next: a bicubic resize (reducing_gap 2) of that reduced, oriented image
to the size `thumbnail` gives the full original.
"""

import datetime
import io
import json
import math
import os
import posixpath
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.exceptions
import pymysql
import pymysql.constants.CLIENT
from celery import Celery
from celery.signals import worker_process_init
from PIL import Image, ImageOps, UnidentifiedImageError

app = Celery(
    "pythumbs",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_RESULT_BACKEND") or None,
)

BUCKET = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
LOCATION = os.environ.get("AWS_LOCATION", "")
SIZES = [int(s) for s in os.environ.get("CELERIAC_THUMBNAIL_SIZES", "128,512").split(",") if s.strip()]
MAX_PIXELS = int(os.environ.get("CELERIAC_MAX_IMAGE_PIXELS", "50000000"))
# The same quality as celeriac-worker's thumbnails (worker/src/media), so both write the same.
QUALITY = 85
REDUCING_GAP = 2.0
ORIENTATION = 0x0112
# Checked by hand below, with the contract's message; Pillow's own bomb check is then redundant.
Image.MAX_IMAGE_PIXELS = None

_db = None
_s3 = None


def _connect_db():
    u = urlsplit(os.environ["DATABASE_URL"])
    q = parse_qs(u.query)
    ssl = {"ca": q["ssl-ca"][0]} if "ssl-ca" in q else None
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or ""),
                           password=unquote(u.password or ""), database=u.path.lstrip("/"), charset="utf8mb4",
                           autocommit=True, ssl=ssl,
                           client_flag=pymysql.constants.CLIENT.FOUND_ROWS)


def _connect_s3():
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_S3_ENDPOINT_URL") or None,
                        region_name=os.environ.get("AWS_S3_REGION_NAME") or os.environ.get("AWS_DEFAULT_REGION"))


@worker_process_init.connect
def _per_process(**_):
    global _db, _s3
    _db, _s3 = _connect_db(), _connect_s3()


def db():
    global _db
    if _db is None:
        _db = _connect_db()
    else:
        _db.ping(reconnect=True)
    return _db


def s3():
    global _s3
    if _s3 is None:
        _s3 = _connect_s3()
    return _s3


def storage_key(name):
    """django-storages' join of AWS_LOCATION and a stored name."""
    return posixpath.join(LOCATION, name) if LOCATION else name


class Unreachable(Exception):
    pass


def fit(width, height, box):
    """The size Image.thumbnail((box, box)) gives a width x height image (its rounding), never
    upscaled."""
    if box >= width and box >= height:
        return width, height
    aspect = width / height

    def round_aspect(number, key):
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    x = y = box
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _fail(asset_id, exc):
    with db().cursor() as cur:
        cur.execute("UPDATE media_mediaasset SET status = 'failed', error = %s, updated_at = %s "
                    "WHERE id = %s AND status <> 'purged'", (str(exc), _now(), asset_id))
    return exc


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def render(asset_id, name, body, sizes):
    """(width, height, [(size, w, h, jpeg bytes)]) of an original's bytes."""
    try:
        im = Image.open(io.BytesIO(body), formats=["JPEG", "PNG", "WEBP"])
    except UnidentifiedImageError:
        raise ValueError(f"media asset {asset_id}: {name} is not a JPEG, PNG or WebP image") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"media asset {asset_id}: {name} has {w * h} pixels ({w}x{h}), "
                         f"more than the limit of {MAX_PIXELS}")
    try:
        if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        largest = max(sizes)
        # What Image.thumbnail does, done before exif_transpose (which loads the image).
        im.draft(None, (int(largest * REDUCING_GAP), int(largest * REDUCING_GAP)))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        elif im.mode != "RGB":
            im = im.convert("RGB")
        out = []
        for size in sizes:
            # Image.thumbnail((size, size)) on a copy, but with the size the full original
            # gives (the reduced image keeps its aspect only up to rounding).
            tw, th = fit(w, h, size)
            t = im if (tw, th) == im.size else im.resize((tw, th), Image.BICUBIC, reducing_gap=REDUCING_GAP)
            buf = io.BytesIO()
            t.save(buf, "JPEG", quality=QUALITY)
            out.append((size, tw, th, buf.getvalue()))
        return w, h, out
    except (OSError, SyntaxError) as e:
        raise ValueError(f"media asset {asset_id}: {name} is corrupt: {e}") from None


@app.task(name="media.thumbnail", bind=True, max_retries=10)
def thumbnail(self, asset_id, sizes=None):
    if not isinstance(asset_id, int) or isinstance(asset_id, bool):
        raise TypeError(f"media.thumbnail() argument asset_id must be an integer, not {asset_id!r}")
    if sizes is None:
        sizes = SIZES
    if not isinstance(sizes, list) or not sizes or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise TypeError(f"media.thumbnail() argument sizes must be a list of positive integers, not {sizes!r}")
    try:
        with db().cursor() as cur:
            cur.execute("SELECT original, status FROM media_mediaasset WHERE id = %s", (asset_id,))
            row = cur.fetchone()
        if row is None:
            raise self.retry(exc=LookupError(f"media asset {asset_id} does not exist"), countdown=1, max_retries=5)
        name, status = row
        if status == "purged":
            raise ValueError(f"media asset {asset_id} was purged")
        key = storage_key(name)
        try:
            body = s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise _fail(asset_id, FileNotFoundError(
                    f"media asset {asset_id}: original {key} is not in bucket {BUCKET}")) from None
            raise
        try:
            width, height, thumbs = render(asset_id, name, body, sizes)
        except ValueError as e:
            raise _fail(asset_id, e) from None
        del body
        result = {}
        for size, tw, th, jpeg in thumbs:
            stored = f"thumbnails/{asset_id}/{size}.jpg"
            s3().put_object(Bucket=BUCKET, Key=storage_key(stored), Body=jpeg, ContentType="image/jpeg")
            result[str(size)] = {"key": stored, "width": tw, "height": th}
        with db().cursor() as cur:
            done = cur.execute(
                "UPDATE media_mediaasset SET status = 'ready', width = %s, height = %s, thumbnails = %s, "
                "error = '', updated_at = %s WHERE id = %s AND status <> 'purged'",
                (width, height, json.dumps(result), _now(), asset_id))
        if not done:
            # Purged meanwhile: what this run uploaded goes again.
            s3().delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": storage_key(v["key"])}
                                                                   for v in result.values()]})
            raise ValueError(f"media asset {asset_id} was purged")
        return result
    except (pymysql.err.OperationalError, botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError) as e:
        raise self.retry(exc=e, countdown=min(30, 2 ** self.request.retries))


@app.task(name="celeriac.test.add")
def add(x, y):
    """The benchmark's readiness probe (celeriac-worker has it built in)."""
    return x + y
