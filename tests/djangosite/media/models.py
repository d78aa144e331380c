"""The model of docs/media-tasks.md, field for field: celeriac-worker's media.thumbnail and
media.purge_expired read and write its table, media_mediaasset."""

from django.db import models


class MediaAsset(models.Model):
    original = models.ImageField(upload_to="originals/")  # name in the bucket, under AWS_LOCATION
    status = models.CharField(max_length=16, default="pending")  # pending, ready, failed, purged
    width = models.PositiveIntegerField(null=True)  # of the original, after EXIF orientation
    height = models.PositiveIntegerField(null=True)
    thumbnails = models.JSONField(default=dict)  # {"128": {"key": ..., "width": ..., "height": ...}}
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.original.name} ({self.status})"
