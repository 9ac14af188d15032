from __future__ import annotations

from pathlib import Path

import numpy as np

from app.ml.artifacts import save_artifact
from app.ml.heads import fit_prototype
from app.runtime import HeadCache


def _artifact(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    head = fit_prototype(rng.normal(size=(6, 8)), np.array([0, 0, 0, 1, 1, 1]), n_classes=2)
    save_artifact(path, head=head, meta={"labels": ["a", "b"], "seed": seed})
    return path


def test_head_cache_keeps_the_most_recently_used_heads(tmp_path: Path) -> None:
    a, b, c = (_artifact(tmp_path / f"{name}.pt", seed) for seed, name in enumerate("abc"))
    cache = HeadCache(capacity=2)
    first_a, first_b = cache.get(a), cache.get(b)
    assert cache.get(a) is first_a  # a hit: the same loaded head, not a new load
    cache.get(c)  # over capacity: b, the least recently used, goes
    assert cache.get(a) is first_a
    reloaded_b = cache.get(b)
    assert reloaded_b is not first_b and reloaded_b[1] == first_b[1] == {
        "labels": ["a", "b"], "seed": 1}
    assert cache.get(a) is first_a  # the reload of b pushed out c, not a
