"""Honest metrics: stratified folds, and the figures reported from out-of-fold probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedKFold

# Weight decay on W at heads.FEATURE_SCALE = 10: the range cross-validation chose on the shared
# sets (docs/EXPERIMENTS.md, "L2 grid"); each value costs one more joint L-BFGS run.
L2_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)

ONE_IMAGE_NOTE = "Add at least 2 images to every category to get validation metrics."
CALIBRATION_BINS = 10


def stratified_folds(
    labels: np.ndarray, rows: np.ndarray, *, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (train indices, validation indices) into labels per stratified fold of `rows`."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [
        (rows[train], rows[val])
        for train, val in splitter.split(np.zeros(len(rows)), labels[rows])
    ]


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str],
    *,
    n_folds: int,
) -> dict[str, Any]:
    """Return JSON-serialisable metrics of out-of-fold probabilities (rows = images)."""
    classes = list(range(len(label_names)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    matrix = confusion_matrix(labels, predicted, labels=classes)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "log_loss": float(log_loss(labels, probabilities, labels=classes)),
        "per_class": [
            {
                "label": str(name),
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support, strict=True)
        ],
        "confusion_matrix": {
            "labels": [str(name) for name in label_names],
            "matrix": matrix.astype(int).tolist(),
        },
        "n_images": len(labels),
        "n_folds": int(n_folds),
        "method": f"nested stratified {n_folds}-fold cross-validation",
    }


def calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, *, bins: int = CALIBRATION_BINS
) -> float:
    """Return the expected calibration error of the top-1 probability over equal-width bins."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; top-1 confidence is never below 1/C > 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)
