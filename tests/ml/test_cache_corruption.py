"""A damaged cached feature file is noticed, dropped and recomputed; it never crashes a
training nor quietly hands it wrong numbers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from app.ml.cache import FeatureCache
from tests.ml.conftest import DATASETS, dataset_rows, image_loader

HASH = "cd" + "0" * 62
BACKBONE = "mobilenet_v2"


def stored(tmp_path: Path, vector: np.ndarray) -> tuple[FeatureCache, Path]:
    cache = FeatureCache(tmp_path)
    cache.put(HASH, BACKBONE, vector)
    return cache, cache.path(HASH, BACKBONE)


def flipped(data: bytes, element: int) -> bytes:
    """The file with one bit of one float's exponent flipped: still finite, far from true."""
    at = data.index(b"\n") + 1 + 4 * element + 3  # little-endian: the byte with the exponent
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def test_a_flipped_bit_in_the_floats_is_caught(tmp_path: Path) -> None:
    cache, path = stored(tmp_path, np.linspace(0, 1, 1280))
    data = path.read_bytes()
    path.write_bytes(flipped(data, 1000))  # still loads: finite, 1280 long
    assert cache.get(HASH, BACKBONE) is None
    assert not path.exists()  # dropped, so the next extraction writes it afresh


@pytest.mark.parametrize("damage", ["truncated", "header", "shape", "appended", "empty"])
def test_damaged_files_are_misses_and_dropped(tmp_path: Path, damage: str) -> None:
    cache, path = stored(tmp_path, np.ones(1280))
    data = path.read_bytes()
    path.write_bytes({
        "truncated": data[: len(data) // 2],
        "header": data[:20] + b"x" * 30 + data[50:],
        "shape": data.replace(b"(1280,)", b"(99999999"),  # an unclosed tuple in the header
        "appended": data + b"more",
        "empty": b"",
    }[damage])
    assert cache.get(HASH, BACKBONE) is None
    assert not path.exists()


def test_files_cached_before_checksums_still_load(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.path(HASH, BACKBONE)
    path.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    np.save(buffer, np.full(1280, 0.5, dtype=np.float32))
    path.write_bytes(buffer.getvalue())
    np.testing.assert_array_equal(cache.get(HASH, BACKBONE), np.full(1280, 0.5))
    path.write_bytes(buffer.getvalue()[:-8])  # but not when cut short
    assert cache.get(HASH, BACKBONE) is None


@pytest.mark.slow
def test_a_corrupted_cached_feature_is_recomputed_to_the_true_one(tmp_path: Path) -> None:
    rows = dataset_rows("hymenoptera", "val")[:3]
    items = [(row["sha256"], image_loader(DATASETS / "hymenoptera" / row["path"])) for row in rows]
    cache = FeatureCache(tmp_path)
    first = cache.features_for(BACKBONE, items)
    damaged = cache.path(rows[1]["sha256"], BACKBONE)
    data = damaged.read_bytes()
    damaged.write_bytes(flipped(data, 300))
    again = cache.features_for(BACKBONE, items)
    # The true vector again (alone rather than in a batch of 3: float rounding may differ).
    np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cache.get(rows[1]["sha256"], BACKBONE), first[1], rtol=1e-4,
                               atol=1e-5)
