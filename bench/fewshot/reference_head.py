"""The first version's head, kept as the benchmark's `baseline_lr`: one backbone, a logistic head
whose L2 strength stratified CV picks from evaluate.L2_GRID, and nested-CV metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from app.ml.evaluate import L2_GRID, ONE_IMAGE_NOTE, classification_metrics, stratified_folds
from app.ml.heads import LogisticHead, fit_logistic, fit_logistic_many


@dataclass
class TrainResult:
    """The final head, its regularisation and cross-validated metrics (or why there are none)."""

    head: LogisticHead
    l2: float
    metrics: dict[str, Any] | None
    metrics_note: str | None


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    seed: int = 0,
    max_folds: int = 5,
    l2_grid: Sequence[float] = L2_GRID,
) -> TrainResult:
    """Return the head fitted on all images and nested-CV metrics; raise ValueError on bad input."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    n_classes = len(label_names)
    if n_classes < 2:
        raise ValueError(f"need at least 2 categories, got {n_classes}")
    if not l2_grid or min(l2_grid) <= 0:
        raise ValueError(f"l2_grid must be non-empty and positive, got {l2_grid!r}")
    if max_folds < 2:
        raise ValueError(f"max_folds must be >= 2, got {max_folds}")
    if features.ndim != 2 or labels.shape != (len(features),) or len(features) == 0:
        raise ValueError(
            f"need features (N, dim) and labels (N,), got {features.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be integers in [0, {n_classes})")
    counts = np.bincount(labels, minlength=n_classes)
    empty = [str(label_names[int(i)]) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"every category needs at least 1 image; empty: {', '.join(empty)}")

    everything = np.arange(len(labels))
    n_folds = min(max_folds, int(counts.min()))
    outer = (
        stratified_folds(labels, everything, n_splits=n_folds, seed=seed) if n_folds >= 2 else []
    )
    # One batch of selections: all data (for the final head) and every outer training part (for
    # the nested estimate), so each grid value costs one joint L-BFGS run.
    selections = [everything] + [train for train, _ in outer]
    l2s = _choose_l2_many(
        features, labels, selections, n_classes=n_classes, seed=seed, max_folds=max_folds,
        l2_grid=l2_grid,
    )
    l2 = l2s[0]
    head = fit_logistic(features, labels, n_classes=n_classes, l2=l2)
    if not outer:
        return TrainResult(head=head, l2=l2, metrics=None, metrics_note=ONE_IMAGE_NOTE)

    # Every image is predicted once, by a head whose weights and l2 never saw it.
    masks = np.stack([_mask(len(labels), train) for train, _ in outer])
    outer_heads = fit_logistic_many(
        features, labels, masks, list(enumerate(l2s[1:])), n_classes=n_classes
    )
    probs = np.empty((len(labels), n_classes))
    for fold_head, (_, val) in zip(outer_heads, outer, strict=True):
        probs[val] = fold_head.predict_proba(features[val])
    metrics = classification_metrics(labels, probs, label_names, n_folds=n_folds)
    return TrainResult(head=head, l2=l2, metrics=metrics, metrics_note=None)


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _choose_l2_many(
    features: np.ndarray,
    labels: np.ndarray,
    selections: Sequence[np.ndarray],
    *,
    n_classes: int,
    seed: int,
    max_folds: int,
    l2_grid: Sequence[float],
) -> list[float]:
    """Return, per selection of rows, the grid l2 with the lowest stratified-CV log loss on it."""
    grid = sorted(l2_grid)
    # Where inner CV is impossible (a class of one image), the middle of the grid.
    chosen: list[float] = [grid[(len(grid) - 1) // 2]] * len(selections)
    masks: list[np.ndarray] = []
    plans: list[tuple[int, list[int], list[np.ndarray]]] = []  # (selection, mask ids, val rows)
    for s, rows in enumerate(selections):
        n_splits = min(max_folds, int(np.bincount(labels[rows], minlength=n_classes).min()))
        if n_splits < 2 or len(grid) == 1:
            continue
        folds = stratified_folds(labels, rows, n_splits=n_splits, seed=seed)
        plans.append((s, list(range(len(masks), len(masks) + len(folds))), [v for _, v in folds]))
        masks.extend(_mask(len(labels), train) for train, _ in folds)
    if not plans:
        return chosen
    problems = [(m, l2) for l2 in grid for m in range(len(masks))]
    fitted = fit_logistic_many(features, labels, np.stack(masks), problems, n_classes=n_classes)
    for s, mask_ids, val_rows in plans:
        rows = np.concatenate(val_rows)
        # Log loss ranks l2 values more finely than accuracy's few distinct values.
        scores = [
            log_loss(
                labels[rows],
                np.concatenate(
                    [
                        fitted[g * len(masks) + m].predict_proba(features[v])
                        for m, v in zip(mask_ids, val_rows, strict=True)
                    ]
                ),
                labels=list(range(n_classes)),
            )
            for g in range(len(grid))
        ]
        best = min(scores)
        # Near-ties go to the stronger regularisation, the safer choice on few images.
        chosen[s] = max(l2 for l2, score in zip(grid, scores, strict=True) if score <= best + 1e-9)
    return chosen
