"""Head training with honest, nested cross-validated metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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

from app.ml.heads import LogisticHead, fit_logistic, fit_logistic_many

# Weight decay on W at heads.FEATURE_SCALE = 10. Measured with Lite2 and MobileNetV2 features on
# the ants/bees and flowers sets: val accuracy is flat (within one image) from 1e-4 to 1e-1, and
# CV log loss chose 1e-3..3e-2 every time; 1e-4 was never chosen and needs the most L-BFGS
# iterations. Each extra value costs one more joint L-BFGS run in train_head.
L2_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)

ONE_IMAGE_NOTE = "Add at least 2 images to every category to get validation metrics."


@dataclass
class TrainResult:
    """The final head, its regularisation and cross-validated metrics (or why there are none)."""

    head: LogisticHead
    l2: float
    metrics: dict[str, Any] | None
    metrics_note: str | None


def _middle(grid: Sequence[float]) -> float:
    return sorted(grid)[(len(grid) - 1) // 2]


def _class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes)


def _stratified_masks(
    labels: np.ndarray, rows: np.ndarray, *, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (train mask over all N rows, validation row indices) per stratified fold of `rows`."""
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out = []
    for train, val in folds.split(np.zeros(len(rows)), labels[rows]):
        mask = np.zeros(len(labels), dtype=bool)
        mask[rows[train]] = True
        out.append((mask, rows[val]))
    return out


def _fit_grouped(
    features: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    l2s: Sequence[float],
    *,
    n_classes: int,
) -> list[LogisticHead]:
    """Return heads fitted on masks[i] with l2s[i] (one L-BFGS run per distinct l2, inside)."""
    return fit_logistic_many(
        features, labels, masks, list(enumerate(l2s)), n_classes=n_classes
    )


def _score(labels: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """Lower is better: log loss ranks l2 values more finely than accuracy's few distinct values."""
    return float(log_loss(labels, probabilities, labels=list(range(n_classes))))


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
    """Return, per selection of rows, the grid l2 with the best stratified-CV score on it."""
    grid = sorted(l2_grid)
    chosen: list[float] = [_middle(grid)] * len(selections)
    masks: list[np.ndarray] = []
    plans: list[tuple[int, list[int], list[np.ndarray]]] = []  # (selection, mask ids, val rows)
    for s, rows in enumerate(selections):
        smallest = int(_class_counts(labels[rows], n_classes).min())
        n_splits = min(max_folds, smallest)
        if n_splits < 2 or len(grid) == 1:
            continue  # inner CV impossible: keep the middle of the grid
        folds = _stratified_masks(labels, rows, n_splits=n_splits, seed=seed)
        plans.append((s, list(range(len(masks), len(masks) + len(folds))), [v for _, v in folds]))
        masks.extend(mask for mask, _ in folds)
    if not plans:
        return chosen
    problems = [(m, l2) for l2 in grid for m in range(len(masks))]
    fitted = fit_logistic_many(features, labels, np.stack(masks), problems, n_classes=n_classes)
    fitted_heads = {
        (g, m): fitted[g * len(masks) + m] for g in range(len(grid)) for m in range(len(masks))
    }
    for s, mask_ids, val_rows in plans:
        rows = np.concatenate(val_rows)
        scores = [
            _score(
                labels[rows],
                np.concatenate(
                    [
                        fitted_heads[g, m].predict_proba(features[v])
                        for m, v in zip(mask_ids, val_rows)
                    ]
                ),
                n_classes,
            )
            for g in range(len(grid))
        ]
        best = min(scores)
        # Near-ties go to the stronger regularisation, the safer choice on few images.
        chosen[s] = max(l2 for l2, score in zip(grid, scores) if score <= best + 1e-9)
    return chosen


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
    counts = _class_counts(labels, n_classes)
    empty = [str(label_names[int(i)]) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"every category needs at least 1 image; empty: {', '.join(empty)}")

    all_rows = np.arange(len(labels))
    n_folds = min(max_folds, int(counts.min()))
    outer = _stratified_masks(labels, all_rows, n_splits=n_folds, seed=seed) if n_folds >= 2 else []
    # One batch of selections: all data (for the final head) and every outer training part (for
    # the nested estimate), so each grid value costs one joint L-BFGS run.
    selections = [all_rows] + [np.flatnonzero(mask) for mask, _ in outer]
    l2s = _choose_l2_many(
        features,
        labels,
        selections,
        n_classes=n_classes,
        seed=seed,
        max_folds=max_folds,
        l2_grid=l2_grid,
    )
    l2 = l2s[0]
    head = fit_logistic(features, labels, n_classes=n_classes, l2=l2)
    if not outer:
        return TrainResult(head=head, l2=l2, metrics=None, metrics_note=ONE_IMAGE_NOTE)

    # Every image is predicted once, by a head whose weights and l2 never saw it.
    outer_heads = _fit_grouped(
        features, labels, np.stack([mask for mask, _ in outer]), l2s[1:], n_classes=n_classes
    )
    probs = np.empty((len(labels), n_classes))
    for fold_head, (_, val) in zip(outer_heads, outer):
        probs[val] = fold_head.predict_proba(features[val])
    metrics = classification_metrics(labels, probs, label_names, n_folds=n_folds)
    return TrainResult(head=head, l2=l2, metrics=metrics, metrics_note=None)


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
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        ],
        "confusion_matrix": {
            "labels": [str(name) for name in label_names],
            "matrix": matrix.astype(int).tolist(),
        },
        "n_images": len(labels),
        "n_folds": int(n_folds),
        "method": f"nested stratified {n_folds}-fold cross-validation",
    }
