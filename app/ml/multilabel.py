"""Multi-label classification on cached features: one sigmoid per category, a threshold per
category chosen by cross-validation, and metrics from nested cross-validation.

An image may carry any number of categories (zero included). The head is one linear layer with
a sigmoid per category on the same inputs as heads.LogisticHead (centred, L2-normalised,
times heads.FEATURE_SCALE), fitted by full-batch L-BFGS on the summed binary cross-entropy plus
l2/2 ||W||^2: a one-vs-rest logistic regression per category, solved in one run. Each category
says yes when its probability reaches its own threshold, the one that maximised its F1 on
out-of-fold probabilities: a rare category's probabilities rarely reach 0.5, and a fixed 0.5
would cost it most of its recall.

Honesty follows app/ml/select.py. Everything that is chosen from the data (the backbone, l2 and
every threshold) is chosen again inside each outer fold from that fold's training part alone,
so the metrics are computed on predictions made without seeing the rows they score. Features
come as (N, dim) or, like select.py, (N, V, dim) with view 0 the eval view and views 1..V-1
augmentations, which only ever enter training. Typical use, as training would:

    features = cache.views_for(backbones, items, views=range(DEFAULT_VIEWS + 1))
    result = select_multilabel(features, labels, label_names)   # labels: (N, C) of 0/1
    save_artifact(path, head=result.head, meta={...})  # artifacts.py, as any head
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from app.ml.evaluate import L2_GRID
from app.ml.heads import (
    _JOINT_ROWS,
    FEATURE_SCALE,
    MultiLabelHead,
    _fit_threads,
    _row_space_basis,
    fold_geometry,
    solve_along_path,
)
from app.ml.registry import few_shot_rank
from app.ml.select import NEAR_TIE, Candidate

# evaluate.L2_GRID and one step stronger: on the real-photo multi-label set of the tests
# (tests/multilabel_set.py, MobileNetV2) out-of-fold log loss is lowest at 3e-2, the strongest
# value of the single-label grid, and rises again at 1e-1, so the optimum stays inside.
L2_GRID_MULTILABEL: tuple[float, ...] = (*L2_GRID, 1e-1)
# l2 when there is too little data to cross-validate one: the choice on that set.
DEFAULT_L2 = 3e-2
# The threshold of a category with too few out-of-fold positives (or negatives) to tune one:
# the F1 optimum over two or three points is noise, and 0.5 is the probability's own midpoint.
DEFAULT_THRESHOLD = 0.5
MIN_THRESHOLD_EXAMPLES = 3
# Cross-validation needs every category at least this often present and absent in the rows it
# splits, so that every training fold sees each category both ways (the folds keep them apart).
MIN_CV_EXAMPLES = 2
CV_NOTE = (
    "Give every category at least 2 images that have it and 2 that do not to get validation "
    "metrics and tuned thresholds."
)


# --- the head --------------------------------------------------------------------------------


def ranked_predictions(
    probabilities: np.ndarray, thresholds: np.ndarray, labels: Sequence[str]
) -> list[list[tuple[str, float, bool]]]:
    """Return, per row, every (label, probability, at or above its threshold), highest first."""
    probabilities = np.asarray(probabilities)
    thresholds = np.asarray(thresholds)
    if (
        probabilities.ndim != 2
        or probabilities.shape[1] != len(labels)
        or thresholds.shape != (len(labels),)
    ):
        raise ValueError(
            f"expected probabilities (N, {len(labels)}) and {len(labels)} thresholds, got "
            f"{probabilities.shape} and {thresholds.shape}"
        )
    order = np.argsort(-probabilities, axis=1, kind="stable")  # reproducible among equals
    return [
        [(labels[j], float(row[j]), bool(row[j] >= thresholds[j])) for j in ranked]
        for row, ranked in zip(probabilities, order, strict=True)
    ]


# --- folds, thresholds and metrics -----------------------------------------------------------


def multilabel_folds(
    labels: np.ndarray, rows: np.ndarray, *, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (train indices, validation indices) into labels per fold of `rows`, by iterative
    stratification (Sechidis et al., 2011): the rarest category's images are dealt first, each
    to the fold that most lacks that category, so a category with at least two images in
    `rows` is in every training part. Deterministic for a seed."""
    rows = np.asarray(rows)
    y = np.asarray(labels)[rows].astype(bool)
    n, n_categories = y.shape
    if not 2 <= n_splits <= n:
        raise ValueError(f"need 2 <= n_splits <= {n} rows, got {n_splits}")
    rng = np.random.default_rng(seed)
    wanted = np.full(n_splits, n / n_splits)
    wanted_per_category = np.tile(y.sum(axis=0) / n_splits, (n_splits, 1))  # (K, C)
    fold_of = np.full(n, -1)
    remaining = rng.permutation(n)

    def deal(row: int, category: int | None) -> None:
        # The fold most short of this category, then of images; remaining ties at random.
        need = wanted_per_category[:, category] if category is not None else wanted
        best = np.flatnonzero(need >= need.max() - 1e-9)
        if category is not None and len(best) > 1:
            best = best[wanted[best] >= wanted[best].max() - 1e-9]
        fold = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        fold_of[row] = fold
        wanted[fold] -= 1
        wanted_per_category[fold] -= y[row]

    while True:
        left = remaining[fold_of[remaining] < 0]
        counts = y[left].sum(axis=0)
        if not counts.any():
            break
        category = int(np.flatnonzero(counts == counts[counts > 0].min())[0])
        for row in left[y[left, category]]:
            deal(int(row), category)
    for row in remaining[fold_of[remaining] < 0]:  # images without any category
        deal(int(row), None)
    return [(rows[fold_of != k], rows[fold_of == k]) for k in range(n_splits)]


def best_thresholds(
    labels: np.ndarray, probabilities: np.ndarray, *, min_examples: int = MIN_THRESHOLD_EXAMPLES
) -> np.ndarray:
    """Return per category the threshold t maximising the F1 of (probability >= t).

    Candidates are 0.5, the midpoints between consecutive distinct probabilities (a margin
    either side, unlike the probabilities themselves) and those between the extremes and 0 or 1
    (everything positive, nothing positive); among equal F1 the one nearest 0.5 wins,
    so a threshold moves from 0.5 only when that pays. A category with fewer than
    `min_examples` positives or negatives gets DEFAULT_THRESHOLD.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels and probabilities must both be (N, C), got {y.shape}, {p.shape}")
    out = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for c in range(y.shape[1]):
        positives = int(y[:, c].sum())
        if min(positives, len(y) - positives) < min_examples:
            continue
        values = np.unique(p[:, c])
        edges = np.r_[0.0, values, 1.0]
        candidates = np.unique(np.r_[DEFAULT_THRESHOLD, (edges[:-1] + edges[1:]) / 2])
        predicted = p[:, c][None, :] >= candidates[:, None]  # (T, N)
        tp = (predicted & y[:, c]).sum(axis=1)
        f1 = 2 * tp / (predicted.sum(axis=1) + positives)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[c] = candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]]
    return out


def multilabel_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    label_names: Sequence[str],
    *,
    thresholds: np.ndarray,
    n_folds: int,
) -> dict[str, Any]:
    """Return JSON-serialisable metrics of held-out predictions (rows = images).

    `predicted` is what was decided per image (each row by the thresholds of the model that
    predicted it), `probabilities` what average precision ranks; `thresholds` are reported
    per category (those of the head that will serve). Average precision is None for a
    category without positives, where it is undefined.
    """
    y = np.asarray(labels).astype(int)
    decided = np.asarray(predicted).astype(int)
    p = np.asarray(probabilities, dtype=np.float64)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, decided, average=None, zero_division=0
    )
    micro = precision_recall_fscore_support(y, decided, average="micro", zero_division=0)
    per_category: list[dict[str, Any]] = []
    aps: list[float] = []
    for c, name in enumerate(label_names):
        ap = float(average_precision_score(y[:, c], p[:, c])) if y[:, c].any() else None
        if ap is not None:
            aps.append(ap)
        per_category.append({
            "label": str(name),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "average_precision": ap,
            "support": int(support[c]),
            "threshold": float(thresholds[c]),
        })
    return {
        "micro_f1": float(micro[2]),
        "macro_f1": float(np.mean(f1)),
        "micro_precision": float(micro[0]),
        "micro_recall": float(micro[1]),
        "mean_average_precision": float(np.mean(aps)) if aps else None,
        "exact_match": float((y == decided).all(axis=1).mean()),
        "per_category": per_category,
        "n_images": len(y),
        "n_folds": int(n_folds),
        "method": f"nested {n_folds}-fold cross-validation (iterative stratification)",
    }


# --- fitting and selection -------------------------------------------------------------------


@dataclass
class MultiLabelResult:
    """The chosen backbone and l2, the head fitted on all images, honest metrics and CV table:
    select.FitResult's shape, without an unknown detector."""

    candidate: Candidate  # head is MultiLabelHead.kind
    head: MultiLabelHead
    metrics: dict[str, Any] | None
    metrics_note: str | None
    scores: list[dict[str, Any]] = field(default_factory=list)
    # (N, C) probabilities of each image from the outer fold that did not train on it, and
    # what those folds decided: what the metrics were computed from. None without metrics.
    out_of_fold: np.ndarray | None = None
    out_of_fold_predicted: np.ndarray | None = None

    @property
    def thresholds(self) -> np.ndarray:
        return self.head.thresholds


def fit_multilabel(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    max_folds: int = 5,
    l2: float | None = None,
    label_names: Sequence[str] | None = None,
) -> MultiLabelHead:
    """Return the head fitted on all images, l2 (unless given) and thresholds chosen by
    cross-validation; no metrics (evaluate_multilabel has them). Raise ValueError (naming
    categories by `label_names`, else "category <column>")."""
    labels = _check_labels(labels, label_names)
    names = [str(n) for n in label_names] if label_names is not None else \
        [f"category {c}" for c in range(labels.shape[1])]
    engine = _Engine({"features": _views(features, len(labels))}, labels, names, seed=seed,
                     l2_grid=None if l2 is None else (l2,))
    with _single_threaded_blas():
        (selection,) = engine.select([np.arange(len(labels))], max_folds=max_folds)
        (head,) = engine.fit_many([selection])
    return head


def evaluate_multilabel(
    features: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    seed: int = 0,
    max_folds: int = 5,
) -> MultiLabelResult:
    """Return select_multilabel for one feature set: the head on all images and its nested
    cross-validated metrics (l2 and thresholds chosen inside each outer fold)."""
    return select_multilabel({"features": features}, labels, label_names, seed=seed,
                             max_folds=max_folds)


def select_multilabel(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    seed: int = 0,
    max_folds: int = 5,
    near_tie: float = NEAR_TIE,
) -> MultiLabelResult:
    """Return the best backbone's head fitted on all images, with nested-CV metrics.

    `features` maps each candidate backbone to its (N, dim) or (N, V, dim) features (row order
    = labels, an (N, C) 0/1 matrix). Per backbone, l2 is the one with the lowest out-of-fold
    log loss (ties: the stronger); backbones are ranked by out-of-fold micro-F1 at thresholds
    tuned on those probabilities, near-ties (`near_tie`) going to the better few-shot rank,
    then the lower log loss, as select.py does. The whole choice is repeated in every outer
    fold for the metrics. Raise ValueError on inconsistent input.
    """
    labels = _check_labels(labels, label_names)
    if max_folds < 2:
        raise ValueError(f"max_folds must be >= 2, got {max_folds}")
    if not features:
        raise ValueError("need features for at least one backbone")
    arrays = {name: _views(array, len(labels), name=name) for name, array in features.items()}
    engine = _Engine(arrays, labels, label_names, seed=seed, near_tie=near_tie)
    everything = np.arange(len(labels))
    with _single_threaded_blas():
        n_outer = _n_folds(labels, everything, max_folds)
        outer = multilabel_folds(labels, everything, n_splits=n_outer, seed=seed) \
            if n_outer >= 2 else []
        selections = engine.select([everything] + [train for train, _ in outer],
                                   max_folds=max_folds)
        heads = engine.fit_many(selections)
    head, chosen = heads[0], selections[0]
    if not outer:
        return MultiLabelResult(chosen.candidate, head, None, CV_NOTE, chosen.table)
    probs = np.empty(labels.shape)
    for (_, val), fold_head, selection in zip(outer, heads[1:], selections[1:], strict=True):
        probs[val] = fold_head.predict_proba(arrays[selection.candidate.backbone][val, 0])
    predicted = np.zeros(labels.shape, dtype=bool)
    for (_, val), fold_head in zip(outer, heads[1:], strict=True):
        predicted[val] = probs[val] >= fold_head.thresholds
    metrics = multilabel_metrics(labels, probs, predicted, label_names,
                                 thresholds=head.thresholds, n_folds=n_outer)
    metrics.update(backbone=chosen.candidate.backbone, head=MultiLabelHead.kind,
                   l2=chosen.candidate.l2, selection="nested")
    return MultiLabelResult(chosen.candidate, head, metrics, None, chosen.table,
                            out_of_fold=probs, out_of_fold_predicted=predicted)


# --- internals -------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread, as select.py runs it (many small products on a busy box)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _check_labels(labels: np.ndarray, label_names: Sequence[str] | None = None) -> np.ndarray:
    """Return labels as an (N, C) 0/1 int array; raise ValueError, naming every category that
    no image has or that every image has (a one-vs-rest head cannot learn either)."""
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"labels must be a non-empty (N, C) 0/1 array, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must hold only 0 and 1 (or booleans)")
    y = y.astype(np.int64)
    names = [str(n) for n in label_names] if label_names is not None else \
        [f"category {c}" for c in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} label names for {y.shape[1]} label columns")
    counts = y.sum(axis=0)
    never = [names[c] for c in np.flatnonzero(counts == 0)]
    always = [names[c] for c in np.flatnonzero(counts == len(y))]
    problems = []
    if never:
        problems.append(f"no image has {', '.join(never)}")
    if always:
        problems.append(f"every image has {', '.join(always)}")
    if problems:
        raise ValueError(
            "every category needs at least 1 image with it and 1 without; "
            + "; ".join(problems)
        )
    return y


def _views(array: np.ndarray, n: int, *, name: str = "features") -> np.ndarray:
    """Return features as (N, V, dim) float64: (N, dim) is one view."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    x = np.asarray(array, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or len(x) != n or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name} must have shape ({n}, dim) or ({n}, V, dim), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinity")
    return x


def _n_folds(labels: np.ndarray, rows: np.ndarray, max_folds: int) -> int:
    """Return how many folds `rows` allow: 0 when some category is present or absent fewer
    than MIN_CV_EXAMPLES times there."""
    y = labels[rows]
    positives = y.sum(axis=0)
    if min(int(positives.min()), int((len(y) - positives).min())) < MIN_CV_EXAMPLES:
        return 0
    return min(max_folds, len(rows))


@dataclass
class _Selection:
    """What one set of rows chose: the candidate, its thresholds and the CV table."""

    rows: np.ndarray
    candidate: Candidate
    thresholds: np.ndarray
    table: list[dict[str, Any]]


class _Engine:
    """Cross-validated scoring and fitting on one data set, batched into joint L-BFGS runs."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        labels: np.ndarray,
        label_names: Sequence[str],
        *,
        seed: int,
        near_tie: float = NEAR_TIE,
        l2_grid: Sequence[float] | None = None,
    ) -> None:
        self.arrays = arrays
        self.labels = labels
        self.names = list(label_names)
        self.seed = seed
        self.near_tie = near_tie
        self.l2_grid = sorted(l2_grid if l2_grid is not None else L2_GRID_MULTILABEL)
        self.default_l2 = DEFAULT_L2 if l2_grid is None else self.l2_grid[0]
        self.backbones = list(arrays)

    def _fit(self, backbone: str, image_sets: Sequence[np.ndarray],
             problems: Sequence[tuple[int, float]]) -> list[MultiLabelHead]:
        """Return one head (thresholds 0.5) per (image set index, l2), all views of the images
        in training."""
        array = self.arrays[backbone]
        n, v, dim = array.shape
        images = np.repeat(np.arange(n), v)
        masks = np.zeros((len(image_sets), n), dtype=bool)
        for m, rows in enumerate(image_sets):
            masks[m, rows] = True
        return _fit_sigmoid_many(array.reshape(n * v, dim), self.labels[images].astype(np.float64),
                                 masks[:, images], problems)

    def select(self, selections: Sequence[np.ndarray], *, max_folds: int) -> list[_Selection]:
        """Return, per set of images, the candidate and thresholds its inner CV chose."""
        folds: list[tuple[np.ndarray, np.ndarray]] = []
        fold_ids: list[list[int]] = []
        for rows in selections:
            n_inner = _n_folds(self.labels, rows, max_folds)
            plan = multilabel_folds(self.labels, rows, n_splits=n_inner, seed=self.seed) \
                if n_inner >= 2 else []
            fold_ids.append(list(range(len(folds), len(folds) + len(plan))))
            folds.extend(plan)
        needed = sorted({i for ids in fold_ids for i in ids})
        # Validation probabilities per (backbone, l2) and fold index: one joint run per l2.
        probs: dict[tuple[str, float], dict[int, np.ndarray]] = {}
        if needed:
            for backbone in self.backbones:
                problems = [(m, l2) for l2 in self.l2_grid for m in range(len(needed))]
                heads = self._fit(backbone, [folds[i][0] for i in needed], problems)
                for (m, l2), head in zip(problems, heads, strict=True):
                    val = folds[needed[m]][1]
                    probs.setdefault((backbone, l2), {})[needed[m]] = \
                        head.predict_proba(self.arrays[backbone][val, 0])
        out = []
        for rows, ids in zip(selections, fold_ids, strict=True):
            if not ids:
                backbone = min(self.backbones, key=few_shot_rank)
                out.append(_Selection(rows, self._candidate(backbone, self.default_l2),
                                      np.full(len(self.names), DEFAULT_THRESHOLD), []))
                continue
            val = np.concatenate([folds[i][1] for i in ids])
            table, thresholds = [], {}
            for backbone in self.backbones:
                for l2 in self.l2_grid:
                    p = np.concatenate([probs[(backbone, l2)][i] for i in ids])
                    row, thresholds[(backbone, l2)] = self._score(backbone, l2, val, p)
                    table.append(row)
            best = self._choose(table)
            out.append(_Selection(rows, self._candidate(best["backbone"], best["l2"]),
                                  thresholds[(best["backbone"], best["l2"])], table))
        return out

    def _candidate(self, backbone: str, l2: float) -> Candidate:
        return Candidate(backbone, MultiLabelHead.kind, float(l2))

    def _score(self, backbone: str, l2: float, val: np.ndarray,
               p: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        y = self.labels[val]
        thresholds = best_thresholds(y, p)
        decided = (p >= thresholds).astype(int)
        _, _, f1, _ = precision_recall_fscore_support(y, decided, average=None, zero_division=0)
        micro = precision_recall_fscore_support(y, decided, average="micro", zero_division=0)[2]
        aps = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1])
               if y[:, c].any()]
        clipped = np.clip(p, 1e-15, 1 - 1e-15)
        bce = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)).sum(axis=1).mean()
        return {
            "backbone": backbone,
            "head": MultiLabelHead.kind,
            "l2": float(l2),
            "cv_micro_f1": float(micro),
            "cv_macro_f1": float(np.mean(f1)),
            "cv_mean_average_precision": float(np.mean(aps)),
            "cv_log_loss": float(bce),
        }, thresholds

    def _choose(self, table: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per backbone the l2 of lowest log loss (ties: stronger); then the best micro-F1,
        near-ties to the better few-shot rank, then the lower log loss."""
        eligible = []
        for backbone in self.backbones:
            rows = [r for r in table if r["backbone"] == backbone]
            lowest = min(r["cv_log_loss"] for r in rows)
            eligible.append(max((r for r in rows if r["cv_log_loss"] <= lowest + 1e-9),
                                key=lambda r: r["l2"]))
        top = max(r["cv_micro_f1"] for r in eligible)
        near = [r for r in eligible if r["cv_micro_f1"] >= top - self.near_tie - 1e-12]
        return min(near, key=lambda r: (few_shot_rank(r["backbone"]), r["cv_log_loss"]))

    def fit_many(self, selections: Sequence[_Selection]) -> list[MultiLabelHead]:
        """Return each selection's candidate fitted on its rows, with its thresholds."""
        heads: list[MultiLabelHead | None] = [None] * len(selections)
        groups: dict[tuple[str, float], list[int]] = {}
        for j, selection in enumerate(selections):
            key = (selection.candidate.backbone, float(selection.candidate.l2 or DEFAULT_L2))
            groups.setdefault(key, []).append(j)
        for (backbone, l2), index in groups.items():
            fitted = self._fit(backbone, [selections[j].rows for j in index],
                               [(m, l2) for m in range(len(index))])
            for j, head in zip(index, fitted, strict=True):
                head.thresholds = selections[j].thresholds.copy()
                heads[j] = head
        return [head for head in heads if head is not None]


def _fit_sigmoid_many(
    x: np.ndarray,
    targets: np.ndarray,
    train_masks: np.ndarray,
    problems: Sequence[tuple[int, float]],
    *,
    max_iter: int = 200,
) -> list[MultiLabelHead]:
    """Return one head per (train mask index, l2) problem, fitted jointly (thresholds 0.5).

    The same scheme as heads.fit_logistic_many, with summed binary cross-entropy in place of
    softmax cross-entropy: the problem solved in the row space of x, each fold's centring and
    normalisation folded into the logits, one L-BFGS run per l2 over every fold (their sum is
    separable), strongest l2 first and each weaker one warm-started from the previous.
    """
    if not problems:
        return []
    folds = np.asarray([fold for fold, _ in problems], dtype=np.int64)
    l2s = np.asarray([l2 for _, l2 in problems], dtype=np.float64)
    if not (l2s > 0).all():
        raise ValueError(f"every l2 must be > 0, got {l2s.tolist()}")
    if not train_masks.any(axis=1).all():
        raise ValueError("every train mask must select at least one row")
    rows = int(train_masks.shape[1]) * len(problems)
    with _fit_threads(joint=rows >= _JOINT_ROWS):
        basis = _row_space_basis(x)
        xb = x if basis is None else x @ basis
        weights, means, means_b, inv_norms = fold_geometry(x, xb, train_masks)
        n_categories = targets.shape[1]
        weight = np.zeros((len(folds), n_categories, xb.shape[1]))
        bias = np.zeros((len(folds), n_categories))
        x_t, y_t = torch.from_numpy(xb), torch.from_numpy(targets)

        def solve(index: np.ndarray, l2: float, start_w: np.ndarray, start_b: np.ndarray) -> None:
            weight[index], bias[index] = _lbfgs_sigmoid(
                x=x_t, targets=y_t,
                means=torch.from_numpy(means_b[folds[index]]),
                inv_norms=torch.from_numpy(FEATURE_SCALE * inv_norms[folds[index]]),
                row_weights=torch.from_numpy(weights[folds[index]]),
                l2s=torch.from_numpy(np.full(len(index), l2)),
                start=(torch.from_numpy(start_w), torch.from_numpy(start_b)),
                max_iter=max_iter,
            )

        solve_along_path(l2s, folds, weight, bias, solve)
        if basis is not None:
            weight = weight @ basis.T
    return [
        MultiLabelHead(mean=means[fold].copy(), weight=w, bias=b, scale=FEATURE_SCALE,
                       thresholds=np.full(n_categories, DEFAULT_THRESHOLD))
        for fold, w, b in zip(folds, weight, bias, strict=True)
    ]


def _lbfgs_sigmoid(
    *,
    x: torch.Tensor,
    targets: torch.Tensor,
    means: torch.Tensor,
    inv_norms: torch.Tensor,
    row_weights: torch.Tensor,
    l2s: torch.Tensor,
    start: tuple[torch.Tensor, torch.Tensor],
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise over problems p: weighted sum over rows of the summed per-category binary
    cross-entropy + l2_p/2 ||W_p||^2 (bias free)."""
    n_problems, n_categories, dim = len(l2s), targets.shape[1], x.shape[1]
    # A fixed start and a deterministic full-batch optimiser: reproducible without a seed.
    weight = start[0].clone().requires_grad_()
    bias = start[1].clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-6,
        tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )
    expanded = targets.unsqueeze(0).expand(n_problems, -1, -1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        raw = (x @ weight.reshape(-1, dim).T).reshape(len(x), n_problems, n_categories)
        shift = torch.einsum("pd,pcd->pc", means, weight)
        logits = (raw.transpose(0, 1) - shift[:, None, :]) * inv_norms[:, :, None]
        logits = logits + bias[:, None, :]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, expanded, reduction="none"
        ).sum(dim=2)  # (P, N)
        penalty = 0.5 * (l2s * weight.pow(2).sum(dim=(1, 2))).sum()
        loss = (row_weights * bce).sum() + penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()
