"""Thumbnails: a small JPEG of an image exactly as the one decode path shows it to training."""

from __future__ import annotations

import io

from app.ml.imaging import decode_image

__all__ = ["THUMBNAIL_SIDE", "make_thumbnail"]

THUMBNAIL_SIDE = 256


def make_thumbnail(data: bytes, *, max_bytes: int, max_pixels: int,
                   max_side: int = THUMBNAIL_SIDE, quality: int = 85) -> bytes:
    """Return JPEG bytes, long side <= max_side, upright RGB on white; raise ImageRejected."""
    decoded = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side)
    buffer = io.BytesIO()
    decoded.image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
