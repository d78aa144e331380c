"""What the project's views call: uploads go through Django's storage (S3), and the thumbnails
are requested from celeriac-worker by task name once the row is committed."""

from django.core.files.base import ContentFile
from django.db import transaction

from djangosite.celery import app

from .models import MediaAsset


def request_thumbnails(asset_id, sizes=None):
    """Queues media.thumbnail for a committed asset (None: the worker's default sizes)."""
    args = [asset_id] if sizes is None else [asset_id, list(sizes)]
    return app.send_task("media.thumbnail", args=args, queue="media")


def create_asset(name, data):
    """Saves `data` (bytes) as a new asset's original under originals/ and, once the transaction
    commits, asks for its thumbnails. The worker never sees a row that could still roll back."""
    with transaction.atomic():
        asset = MediaAsset()
        asset.original.save(name, ContentFile(data), save=False)
        asset.save()
        transaction.on_commit(lambda: request_thumbnails(asset.id))
    return asset


def purge_expired(days):
    """Queues media.purge_expired(days)."""
    return app.send_task("media.purge_expired", args=[days], queue="media")
