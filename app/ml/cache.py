"""On-disk cache of backbone feature vectors, so each image goes through a backbone once."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.backbones import get_spec
from app.ml.features import extract_features

# Hashes and backbone names become path components: allow nothing that could climb or nest.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _check_component(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or value in {".", ".."} or len(value) < 2:
        raise ValueError(f"{what} {value!r} is not a safe cache key")
    return value


class FeatureCache:
    """On-disk cache of feature vectors keyed by (image content hash, backbone)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, image_hash: str, backbone: str) -> Path:
        """Return the file for (image_hash, backbone); raise ValueError on unsafe keys."""
        _check_component(image_hash, "image hash")
        _check_component(backbone, "backbone name")
        return self.root / backbone / image_hash[:2] / f"{image_hash}.npy"

    def get(self, image_hash: str, backbone: str) -> np.ndarray | None:
        """Return the cached 1-D float32 vector, or None if absent or unreadable."""
        path = self.path(image_hash, backbone)
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # missing, truncated or not an .npy file: recompute rather than fail
        if vector.ndim != 1 or vector.dtype != np.float32 or not np.isfinite(vector).all():
            return None
        return vector

    def put(self, image_hash: str, backbone: str, vector: np.ndarray) -> None:
        """Store a 1-D vector atomically as float32; raise ValueError on a bad shape or key."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim != 1:
            raise ValueError(f"expected a 1-D feature vector, got shape {vector.shape}")
        path = self.path(image_hash, backbone)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readers (other workers) must never see a half-written file: write a temp file in the
        # same directory, make it durable, then rename over the target in one step.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{image_hash}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, vector, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def features_for(
        self,
        backbone: str,
        items: Sequence[tuple[str, Callable[[], Image.Image]]],
        *,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> np.ndarray:
        """Return (N, dim) float32 features in item order; only misses are loaded and computed."""
        spec = get_spec(backbone)
        out = np.empty((len(items), spec.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # hash -> rows; duplicates are computed once
        loaders: dict[str, Callable[[], Image.Image]] = {}
        for row, (image_hash, load_image) in enumerate(items):
            if image_hash in missing:
                missing[image_hash].append(row)
                continue
            vector = self.get(image_hash, backbone)
            if vector is not None and vector.shape == (spec.dim,):
                out[row] = vector
            else:
                missing[image_hash] = [row]
                loaders[image_hash] = load_image
        hashes = list(missing)
        # Load images one batch at a time so a large upload never sits decoded in memory at once.
        for start in range(0, len(hashes), batch_size):
            chunk = hashes[start : start + batch_size]
            vectors = extract_features(
                backbone,
                [loaders[h]() for h in chunk],
                batch_size=batch_size,
                device=device,
            )
            for image_hash, vector in zip(chunk, vectors):
                self.put(image_hash, backbone, vector)
                out[missing[image_hash]] = vector
        return out
