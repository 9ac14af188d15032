"""Detect images unlike every category: low cosine similarity to all class prototypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METHOD = "max_prototype_cosine"
# Share of the user's own images, scored out of fold, that the threshold calls unknown: below
# the usual 5 % because new photos are a little less typical than cross-validation suggests
# (docs/EXPERIMENTS.md, "Unknown images"). Which backbone's features the detector uses is the
# registry's choice (registry.unknown_detector).
QUANTILE = 0.03


def calibrate_unknown(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    backbone: str,
    quantile: float = QUANTILE,
) -> dict[str, Any] | None:
    """Return a JSON-able detector whose threshold is the `quantile` of out-of-fold scores.

    features: (N, dim) eval-view features of `backbone`; folds: (train, validation) image
    indices holding out every image once. Return None without folds (nothing is held out);
    raise ValueError on bad input.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile}")
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"need features (N, dim) and labels (N,), got {features.shape}")
    if not folds:
        return None
    scores = np.full(len(labels), np.nan)
    for train, val in folds:
        prototypes = _prototypes(features[train], labels[train], n_classes)
        scores[val] = _max_similarity(features[val], prototypes)
    if np.isnan(scores).any():
        raise ValueError("the folds must hold out every image exactly once")
    prototypes = _prototypes(features, labels, n_classes)
    return {
        "method": METHOD,
        "backbone": backbone,
        "threshold": float(np.quantile(scores, quantile)),
        "quantile": float(quantile),
        # float32 precision is plenty for a cosine and halves the JSON.
        "prototypes": prototypes.astype(np.float32).astype(np.float64).tolist(),
    }


def unknown_scores(detector: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Return (N,) scores, higher = more like a known category; raise ValueError on bad input."""
    if detector.get("method") != METHOD:
        raise ValueError(f"unknown detector method {detector.get('method')!r}")
    prototypes = np.asarray(detector["prototypes"], dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected {detector.get('backbone')} features of shape (N, {prototypes.shape[1]}), "
            f"got {features.shape}"
        )
    return _max_similarity(features, prototypes)


def unknown_mask(detector: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Return (N,) bool: True where an image is unlike every category; raise ValueError."""
    return unknown_scores(detector, features) < float(detector["threshold"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _prototypes(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return unit mean directions of each present class's unit feature vectors."""
    # Not centred, unlike the heads: centring on the training mean makes two class prototypes
    # nearly opposite, so anything far along the ants-bees axis looks familiar
    # (docs/EXPERIMENTS.md, "Unknown images").
    z = _unit(features)
    present = [c for c in range(n_classes) if (labels == c).any()]
    return _unit(np.stack([z[labels == c].mean(axis=0) for c in present]))


def _max_similarity(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    return (_unit(features) @ prototypes.T).max(axis=1)
