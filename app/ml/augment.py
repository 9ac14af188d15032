"""Seeded training views of an image: view 0 is the image itself, views 1..K are augmentations."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image, ImageEnhance

# Augmented views per training image (view 0, the eval view, comes on top). The gain is small
# and each view costs one more backbone pass per image and backbone; 2 is where val accuracy
# peaked and more never helped (docs/EXPERIMENTS.md, "Augmented views").
DEFAULT_VIEWS = 2
# From this many images in the smallest category on, augmented views stop paying: on 8 random
# resplits of ants/bees (about 120 per class) held-out accuracy was 0.970 without them and 0.966
# with 2, and at 40 and 60 per class the two were within one image, while views triple the
# backbone passes and double the fitting time. Below it they do pay: flowers at 17 per class,
# 0.82 -> 0.90 (docs/EXPERIMENTS.md, "Augmented views").
AUGMENT_BELOW = 40

CROP_SCALE = (0.5, 1.0)  # fraction of the image area kept by the random resized crop
CROP_RATIO = (3 / 4, 4 / 3)  # width / height of the crop before it is squared
FLIP_P = 0.5
JITTER = 0.2  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]
_CROP_TRIES = 10


def augmented_views(smallest_class: int) -> int:
    """Augmented views per training image for a data set whose smallest category has this many
    images: DEFAULT_VIEWS below AUGMENT_BELOW, none from there on."""
    return DEFAULT_VIEWS if smallest_class < AUGMENT_BELOW else 0


def view_rng(*, image_hash: str, view: int) -> np.random.Generator:
    """Return the generator for one view of one image: same (hash, view), same random numbers."""
    # sha256 rather than hash(): Python salts str hashes per process, the cache outlives processes.
    digest = hashlib.sha256(f"nanonet-augment\0{image_hash}\0{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def augment(image: Image.Image, *, image_hash: str, view: int) -> Image.Image:
    """Return view `view` of an RGB image (view 0 is the image itself); raise ValueError if < 0."""
    if view < 0:
        raise ValueError(f"view must be >= 0, got {view}")
    if view == 0:
        return image
    if image.mode != "RGB":
        image = image.convert("RGB")
    rng = view_rng(image_hash=image_hash, view=view)
    # Draw every number up front, in a fixed order, so no branch shifts the stream of another step.
    crop_draws = rng.random((_CROP_TRIES, 4))
    flip = rng.random() < FLIP_P
    factors = rng.uniform(1.0 - JITTER, 1.0 + JITTER, size=3)

    box = _crop_box(image.size, crop_draws)
    width, height = box[2] - box[0], box[3] - box[1]
    # Squaring the crop (keeping its pixel count) is what RandomResizedCrop does: the aspect
    # distortion is part of the augmentation. The backbone's preprocess then resizes it again.
    side = max(1, round(math.sqrt(width * height)))
    out = image.resize(
        (side, side), resample=Image.Resampling.BILINEAR, box=box, reducing_gap=None
    )
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer, factor in zip(
        (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors, strict=True
    ):
        out = enhancer(out).enhance(float(factor))
    return out


def _crop_box(size: tuple[int, int], draws: np.ndarray) -> tuple[float, float, float, float]:
    """Return a (left, top, right, bottom) crop as torchvision's RandomResizedCrop would pick it."""
    width, height = size
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for u_scale, u_ratio, u_left, u_top in draws:
        target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u_scale)
        ratio = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if 0 < w <= width and 0 < h <= height:
            left, top = (width - w) * u_left, (height - h) * u_top
            return (left, top, left + w, top + h)
    # No draw fitted (a very wide or tall image): the largest centred crop within the ratio range.
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (height * ratio, height) if width / height > ratio else (width, width / ratio)
    w, h = min(w, width), min(h, height)
    left, top = (width - w) / 2, (height - h) / 2
    return (left, top, left + w, top + h)
