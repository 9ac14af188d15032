"""Detect images unlike every category: low similarity to all class prototypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.ml.heads import normalise

METHOD = "max_prototype_cosine"
# Share of the user's own images, scored out of fold, that the threshold calls unknown.
QUANTILE = 0.05


def calibrate_unknown(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    quantile: float = QUANTILE,
) -> dict[str, Any] | None:
    """Return a JSON-able detector whose threshold is the `quantile` of out-of-fold scores.

    features: (N, V, dim) of one backbone (view 0 = eval view); folds: (train, validation) image
    indices covering every image once. Return None without folds (nothing is held out).
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile}")
    if not folds:
        return None
    scores = np.full(len(labels), np.nan)
    for train, val in folds:
        mean, prototypes = _prototypes(features[train], labels[train], n_classes)
        scores[val] = _max_similarity(features[val, 0], mean, prototypes)
    if np.isnan(scores).any():
        raise ValueError("the folds must hold out every image exactly once")
    mean, prototypes = _prototypes(features, labels, n_classes)
    return {
        "method": METHOD,
        "threshold": float(np.quantile(scores, quantile)),
        "quantile": float(quantile),
        "mean": mean.tolist(),
        "prototypes": prototypes.tolist(),
    }


def unknown_scores(detector: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Return (N,) scores, higher = more like a known category; raise ValueError on bad input."""
    if detector.get("method") != METHOD:
        raise ValueError(f"unknown detector method {detector.get('method')!r}")
    mean = np.asarray(detector["mean"], dtype=np.float64)
    prototypes = np.asarray(detector["prototypes"], dtype=np.float64)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != mean.shape[0]:
        raise ValueError(f"expected features of shape (N, {mean.shape[0]}), got {features.shape}")
    return _max_similarity(features, mean, prototypes)


def unknown_mask(detector: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Return (N,) bool: True where an image is unlike every category; raise ValueError."""
    return unknown_scores(detector, features) < float(detector["threshold"])


def _prototypes(
    features: np.ndarray, labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, unit class prototypes) of all views of (N, V, dim) features."""
    n, v, dim = features.shape
    rows = features.reshape(n * v, dim).astype(np.float64)
    mean = rows.mean(axis=0)
    z = normalise(rows, mean)
    sums = np.eye(n_classes)[np.repeat(labels, v)].T @ z
    present = np.bincount(labels, minlength=n_classes) > 0
    sums = sums[present]  # a class without images has no prototype to be similar to
    return mean, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def _max_similarity(features: np.ndarray, mean: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    return (normalise(features, mean) @ prototypes.T).max(axis=1)
