"""The one decode path shared by training uploads and prediction: untrusted bytes -> bounded RGB.

Only stdlib, Pillow and numpy: this module must not know about the web, DB or worker layers.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "DecodedImage",
    "ImageRejected",
    "PixelBudget",
    "center_crop_resize",
    "decode_image",
]

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)  # alpha is composited over white

_MIB = 1024 * 1024
_FORMAT_HINT = "upload a JPEG, PNG, GIF, WebP, BMP or TIFF image"
# EXIF orientations 5-8 are transpositions/quarter turns: the displayed width and height swap.
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
# High bit depth images are converted a tile at a time, so the float math never spans a whole
# 40-megapixel image (float64 copies of it would be gigabytes).
_TILE_SIDE = 512


class ImageRejected(Exception):
    """An upload that cannot become a training or prediction image."""

    def __init__(self, code: str, message: str, *, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __reduce__(self):  # keyword-only `status` defeats Exception's default pickling
        return functools.partial(type(self), status=self.status), (self.code, self.message)


class PixelBudget:
    """The decoded pixels one request may still spend: decode_image charges each image's header
    size before decoding it, so many small files cannot add up to unbounded work."""

    def __init__(self, pixels: int) -> None:
        self.total = pixels
        self.left = pixels

    def charge(self, width: int, height: int) -> None:
        """Spend width x height pixels; raise ImageRejected (413) if they do not fit."""
        pixels = width * height
        if pixels > self.left:
            raise ImageRejected(
                "pixel_budget_exceeded",
                f"The image is {width}x{height} = {pixels / 1e6:.1f} megapixels, and this "
                f"request has only {self.left / 1e6:.1f} of its {self.total / 1e6:g} megapixels "
                "left to decode; send it in another request.",
                status=413,
            )
        self.left -= pixels


# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft) as long
# as both sides stay >= this: every backbone's inputs are made from it without upscaling, the
# eval crop (Lite2: 260 px from 260 / 0.89 = 292) and the smallest augmented crop (260 px from
# 260 / sqrt(0.5) = 368); tests/ml/test_imaging.py holds it to the registry. A 12-megapixel phone
# photo then decodes at 1/4 scale instead of 1/2 and skips the Lanczos shrink to max_side
# (docs/EXPERIMENTS.md, "Preprocessing").
DRAFT_SIDE = 384


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode "RGB", EXIF orientation applied, long side <= max_side
    width: int  # displayed size (after EXIF orientation), before any downscaling
    height: int
    format: str  # Pillow's format name, e.g. "JPEG"


def decode_image(
    source: bytes | BinaryIO,
    *,
    max_bytes: int = 20 * _MIB,
    max_pixels: int = 40_000_000,
    max_side: int = 1024,
    draft_side: int = DRAFT_SIDE,
    budget: PixelBudget | None = None,
) -> DecodedImage:
    """Return the upright 8-bit RGB first frame, long side <= max_side; raise ImageRejected.

    A JPEG decodes at reduced scale while both sides stay >= min(draft_side, max_side).

    `source`: the bytes, or a seekable binary file (read from its start, never whole into
    memory by this function). `budget` is charged the header's pixels before decoding.
    """
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    size = data.seek(0, io.SEEK_END)
    data.seek(0)
    if not size:
        raise ImageRejected(
            "empty_file", f"The file is empty (0 bytes); {_FORMAT_HINT}.", status=400
        )
    if size > max_bytes:
        raise ImageRejected(
            "file_too_large",
            f"The file is {size / _MIB:.1f} MB; the limit is {max_bytes / _MIB:g} MB.",
            status=413,
        )
    # Pillow reports malformed input through UserWarnings, and warns about big images before our
    # own (lower) pixel cap can reject them; the outcome here is a result or ImageRejected, never
    # a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        img = _open(data, max_pixels)
        fmt = img.format or "unknown"
        width, height = img.size  # header size: draft() below may shrink img.size
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        if budget is not None:
            budget.charge(width, height)
        try:
            swapped = _load_upright(img, min(draft_side, max_side))
            rgb = _shrink(_to_rgb(img), max_side)
        except ImageRejected:
            raise
        except Exception as exc:  # Pillow raises anything on hostile pixel data, palettes or EXIF
            raise ImageRejected(
                "corrupt_image",
                f"The {fmt} image could not be decoded; it may be truncated or damaged ({exc}).",
                status=422,
            ) from exc
    if swapped:
        width, height = height, width
    return DecodedImage(image=rgb, width=width, height=height, format=fmt)


def center_crop_resize(
    image: Image.Image, *, size: int, crop_pct: float, resample: int
) -> Image.Image:
    """Return the size x size crop Resize(size / crop_pct) + CenterCrop(size) gives; ValueError."""
    if size < 1 or not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"need size >= 1 and 0 < crop_pct <= 1, got {size=}, {crop_pct=}")
    w, h = image.size
    # Resize scales the shorter side to size / crop_pct, and CenterCrop keeps `size` of those
    # pixels, so the kept square is crop_pct of the shorter side in source pixels. Cropping with
    # `box=` in the same resize never builds the (possibly enormous) intermediate and never rounds
    # a side to 0.
    side = min(w, h) * crop_pct
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), resample=resample, box=box, reducing_gap=None)


def _open(data: BinaryIO, max_pixels: int) -> Image.Image:
    """Return the lazily opened image (header only); raise ImageRejected."""
    try:
        return Image.open(data, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        size = _header_size(data)
        if size is not None:
            raise _too_large(*size, max_pixels) from exc
        raise ImageRejected(
            "image_too_large",
            f"The image has over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels.",
            status=413,
        ) from exc
    except Exception as exc:  # plugins raise OSError, SyntaxError, ValueError, ... on bad headers
        sniffed = _sniff_format(data)
        if sniffed in ALLOWED_FORMATS:
            raise ImageRejected(
                "corrupt_image",
                f"The file looks like a {sniffed} image but its header is damaged ({exc}).",
                status=422,
            ) from exc
        if sniffed is not None:
            raise ImageRejected(
                "unsupported_format",
                f"{sniffed} images are not supported; {_FORMAT_HINT}.",
                status=415,
            ) from exc
        raise ImageRejected(
            "not_an_image", f"The file is not a recognisable image; {_FORMAT_HINT}.", status=415
        ) from exc


def _sniff_format(data: BinaryIO) -> str | None:
    """Return the format whose magic bytes `data` starts with, or None; never decodes anything."""
    data.seek(0)
    prefix = data.read(16)  # what Image.open hands to the same accept() checks
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        if accept is None:  # formats without magic bytes would claim arbitrary data
            continue
        try:
            if accept(prefix):  # a str result means "recognised but this build can't read it"
                return fmt
        except Exception:  # noqa: BLE001, S112 - a plugin's magic check failing means "not this one"
            continue
    return None


def _header_size(data: BinaryIO) -> tuple[int, int] | None:
    """Return the (width, height) an allowed format's header declares, or None; never decodes."""
    fmt = _sniff_format(data)
    if fmt not in ALLOWED_FORMATS:
        return None
    try:
        # The plugin class itself reads just the header, without Image.open's bomb check, so the
        # rejection can name the real dimensions.
        data.seek(0)
        with Image.OPEN[fmt][0](data, "upload") as img:
            return img.size
    except Exception:  # noqa: BLE001 - the caller then rejects without naming dimensions
        return None


def _load_upright(img: Image.Image, draft_side: int) -> bool:
    """Decode the first frame and apply EXIF orientation in place; return whether width and height
    swapped; raise whatever Pillow raises."""
    img.seek(0)  # animations: first frame only; never touch n_frames/is_animated, they scan all
    if img.format in ("JPEG", "MPO"):
        # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= draft_side.
        img.draft("RGB", (draft_side, draft_side))
    img.load()  # full decode now, so truncation surfaces here rather than later
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation != 1:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an unrotated image
    return orientation in _SWAPS_SIDES


def _to_rgb(img: Image.Image) -> Image.Image:
    """Return `img` as 8-bit RGB, alpha composited over BACKGROUND, high bit depths scaled down."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        key = img.info.get("transparency")
        key = key if isinstance(key, int) else None  # 16-bit PNG colour key
        gray, alpha = _gray_to_uint8(img, key)
        if alpha is not None:
            return _composite(Image.merge("LA", (gray, alpha)))
        return gray.convert("RGB")
    if mode in _PREMULTIPLIED:
        img, mode = img.convert(_PREMULTIPLIED[mode]), _PREMULTIPLIED[mode]
    if mode in _ALPHA_MODES or img.has_transparency_data:  # includes P/L/RGB colour keys
        return _composite(img)
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX
    except ValueError as exc:
        raise ImageRejected(
            "unsupported_format",
            f"Images with pixel mode {mode} are not supported; {_FORMAT_HINT}.",
            status=415,
        ) from exc


def _gray_to_uint8(img: Image.Image, key: int | None) -> tuple[Image.Image, Image.Image | None]:
    """Return 8-bit gray (and the alpha of colour `key`, if given) from 16/32-bit integer or
    float gray, keeping the tonal range visible; a tile at a time, never a whole float copy."""
    width, height = img.size
    boxes = [(left, top, min(width, left + _TILE_SIDE), min(height, top + _TILE_SIDE))
             for top in range(0, height, _TILE_SIDE) for left in range(0, width, _TILE_SIDE)]
    kind = np.asarray(img.crop((0, 0, 1, 1))).dtype.kind
    lo, hi = 0.0, 0.0
    if kind != "u":  # the range decides the scaling: one pass over the tiles first
        extremes = [(float(t.min()), float(t.max())) for t in
                    (_finite(np.asarray(img.crop(box))) for box in boxes) if t.size]
        if extremes:
            lo, hi = min(e[0] for e in extremes), max(e[1] for e in extremes)
    gray = np.empty((height, width), dtype=np.uint8)
    alpha = None if key is None else np.empty((height, width), dtype=np.uint8)
    for left, top, right, bottom in boxes:
        pixels = np.asarray(img.crop((left, top, right, bottom)))
        gray[top:bottom, left:right] = _scaled(pixels, kind, lo, hi)
        if alpha is not None:
            alpha[top:bottom, left:right] = np.where(pixels == key, 0, 255)
    return (Image.fromarray(gray, mode="L"),
            None if alpha is None else Image.fromarray(alpha, mode="L"))


def _finite(pixels: np.ndarray) -> np.ndarray:
    """Return the pixels with NaN and infinities as 0 (floats only; integers as they are)."""
    if pixels.dtype.kind != "f":
        return pixels
    return np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)


def _scaled(pixels: np.ndarray, kind: str, lo: float, hi: float) -> np.ndarray:
    """Return one tile as uint8, by the rule the whole image's range [lo, hi] picked."""
    if kind == "u":  # I;16 variants: the top byte, as a 16-bit viewer shows it
        return (pixels >> 8).astype(np.uint8)
    values = _finite(pixels).astype(np.float64)  # one float copy of the tile, then in place
    if kind == "f" and lo >= 0.0 and hi <= 1.0:
        values *= 255.0  # float images are conventionally 0..1
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        # Older Pillows open 16-bit PNGs as mode I; match what I;16 gives for the same file.
        values /= 256.0
        np.floor(values, out=values)
    else:
        values -= lo
        values *= 255.0 / (hi - lo)
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def _composite(img: Image.Image) -> Image.Image:
    """Return `img` flattened onto an opaque BACKGROUND, using its alpha as the blend weight."""
    rgba = img.convert("RGBA")
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, mask=rgba)
    return flat


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Return `img` scaled so its long side is <= max_side, aspect kept and no side below 1 px."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    size = (max(1, min(max_side, round(w * scale))), max(1, min(max_side, round(h * scale))))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _too_large(width: int, height: int, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        "image_too_large",
        f"The image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
        f"the limit is {max_pixels / 1e6:g} megapixels.",
        status=413,
    )
