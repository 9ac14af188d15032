from __future__ import annotations

from pathlib import Path

import numpy as np

from app.ml.artifacts import save_artifact
from app.ml.heads import fit_prototype
from app.runtime import HeadCache, size_of


def _artifact(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    head = fit_prototype(rng.normal(size=(6, 8)), np.array([0, 0, 0, 1, 1, 1]), n_classes=2)
    save_artifact(path, head=head, meta={"labels": ["a", "b"], "seed": seed})
    return path


def test_head_cache_keeps_the_most_recently_used_heads(tmp_path: Path) -> None:
    a, b, c = (_artifact(tmp_path / f"{name}.pt", seed) for seed, name in enumerate("abc"))
    one = size_of(HeadCache(10**9).get(a))
    cache = HeadCache(capacity_bytes=2 * one + one // 2)  # room for two of these heads
    first_a, first_b = cache.get(a), cache.get(b)
    assert cache.get(a) is first_a  # a hit: the same loaded head, not a new load
    cache.get(c)  # over capacity: b, the least recently used, goes
    assert cache.get(a) is first_a
    reloaded_b = cache.get(b)
    assert reloaded_b is not first_b and reloaded_b[1] == first_b[1] == {
        "labels": ["a", "b"], "seed": 1}
    assert cache.get(a) is first_a  # the reload of b pushed out c, not a


def _wide_artifact(path: Path, dim: int, classes: int) -> Path:
    rng = np.random.default_rng(dim)
    labels = np.arange(2 * classes) % classes
    head = fit_prototype(rng.normal(size=(2 * classes, dim)), labels, n_classes=classes)
    detector = {"method": "prototype_cosine",
                "prototypes": rng.normal(size=(classes, dim)).tolist()}
    save_artifact(path, head=head, meta={"labels": [str(i) for i in range(classes)],
                                         "unknown": detector})
    return path


def test_head_cache_is_bounded_by_the_bytes_of_its_heads(tmp_path: Path) -> None:
    small = [_artifact(tmp_path / f"s{i}.pt", i) for i in range(20)]
    big = _wide_artifact(tmp_path / "big.pt", dim=1280, classes=50)  # float64 arrays and lists
    big_bytes = size_of(HeadCache(10**9).get(big))
    head, meta = HeadCache(10**9).get(big)
    arrays = head.mean.nbytes + head.prototypes.nbytes
    assert big_bytes > arrays + 50 * 1280 * 8  # arrays, and the detector's lists in the meta
    assert big_bytes < 4 * (arrays + 50 * 1280 * 32)  # a float in a list is ~32 bytes

    cache = HeadCache(capacity_bytes=big_bytes + 5 * size_of(cache_entry(small[0])))
    for path in small:
        cache.get(path)
    assert len(cache) == 20 and cache.bytes <= cache.capacity_bytes
    cache.get(big)  # pushes out enough of the least recently used small heads to fit
    assert cache.bytes <= cache.capacity_bytes
    assert 1 <= len(cache) <= 6
    kept = cache.get(big)
    assert cache.get(big) is kept  # still there, most recently used

    tiny = HeadCache(capacity_bytes=100)  # smaller than any head: served, never kept
    assert tiny.get(big)[1]["labels"][0] == "0"
    assert len(tiny) == 0 and tiny.bytes == 0

    cache.forget(big)
    assert cache.bytes == sum(size_of(cache_entry(p)) for p in small[-len(cache):])


def cache_entry(path: Path) -> object:
    return HeadCache(10**9).get(path)
