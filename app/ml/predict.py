"""Class probabilities, ranked labels and unknown flags from a fitted head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from app.ml.engines import Runner
from app.ml.features import extract_features_many
from app.ml.heads import Head
from app.ml.unknown import unknown_mask


def classify(
    head: Head,
    meta: dict[str, Any],
    images: Sequence[Image.Image],
    *,
    batch_size: int = 16,
    runner: Runner | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ((N, n_classes) probabilities, (N,) unknown flags) for decoded RGB images.

    meta is the artifact's: "backbone" names the head's features, and an optional "unknown"
    detector (select.FitResult.unknown) names its own; each network runs once even when the
    two share one (Lite2 inside mobilenet_v2+efficientnet_lite2). Without a detector no image
    is unknown. Raise BackboneUnavailable or ValueError.
    """
    detector = meta.get("unknown")
    backbones = [meta["backbone"]] + ([detector["backbone"]] if detector else [])
    features = extract_features_many(backbones, images, batch_size=batch_size, runner=runner)
    probabilities = head.predict_proba(features[meta["backbone"]])
    if not detector:
        return probabilities, np.zeros(len(images), dtype=bool)
    return probabilities, unknown_mask(detector, features[detector["backbone"]])


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
        [(labels[j], float(row[j])) for j in ranked]
        for row, ranked in zip(probabilities, order, strict=True)
    ]
