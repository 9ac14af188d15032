"""Thumbnails of stored images, made once per content hash and kept under data/thumbnails."""

from __future__ import annotations

from pathlib import Path

from app.errors import NanoNetError, NotFound
from app.ml.imaging import ImageRejected
from app.ml.thumbnails import make_thumbnail
from app.runtime import Runtime
from app.storage import atomic_write


def thumbnail_path(runtime: Runtime, digest: str) -> Path:
    """Return where the thumbnail of `digest` lives; raises ValueError for a non-digest."""
    blob = runtime.blobs.path(digest)  # validates the digest
    return runtime.settings.thumbnails_dir / blob.parent.name / f"{digest}.jpg"


def thumbnail_of(runtime: Runtime, digest: str) -> bytes:
    """Return the JPEG thumbnail of a stored image, making and caching it on first use.

    Raises NotFound when the image's bytes are gone (deleted meanwhile).
    """
    path = thumbnail_path(runtime, digest)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    try:
        data = runtime.blobs.read(digest)
    except FileNotFoundError as exc:
        raise NotFound("This image is no longer stored.", code="image_not_found") from exc
    settings = runtime.settings
    try:
        thumbnail = make_thumbnail(data, max_bytes=settings.max_file_bytes,
                                   max_pixels=settings.max_image_pixels)
    except ImageRejected as exc:  # only if the limits were lowered after the upload
        raise NanoNetError(exc.message, code=exc.code, status=exc.status) from exc
    atomic_write(path, thumbnail)
    return thumbnail


def discard_thumbnail(runtime: Runtime, digest: str) -> None:
    thumbnail_path(runtime, digest).unlink(missing_ok=True)
