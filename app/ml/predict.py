"""Class probabilities, ranked labels and unknown flags from a fitted head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.ml.heads import Head
from app.ml.unknown import unknown_mask


def predict_proba(head: Head, features: np.ndarray) -> np.ndarray:
    """Return (N, n_classes) probabilities; raise ValueError on a feature dimension mismatch."""
    return head.predict_proba(features)


def unknown_flags(meta: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Return (N,) bool, True for images unlike every category; all False without a detector."""
    detector = meta.get("unknown")
    if not detector:
        return np.zeros(len(features), dtype=bool)
    return unknown_mask(detector, features)


def top_predictions(
    probabilities: np.ndarray, labels: Sequence[str]
) -> list[list[tuple[str, float]]]:
    """Return, per row, every (label, probability) sorted by probability, highest first."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(
            f"expected probabilities of shape (N, {len(labels)}), got {probabilities.shape}"
        )
    # A stable sort keeps label order among equal probabilities, so output is reproducible.
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return [
        [(labels[j], float(row[j])) for j in ranked] for row, ranked in zip(probabilities, order)
    ]
