"""Choose backbone x head x regularisation by cross-validation on cached features, and report
metrics from nested cross-validation, so the choice itself cannot inflate them.

Features come as {backbone: (N, V, dim)}: view 0 is the eval view, views 1..V-1 augmentations
(augment.DEFAULT_VIEWS of them). Augmented views only ever enter training folds; every
validation score is on view 0. Typical use, with a FeatureCache and (hash, loader) items:

    features = cache.views_for(backbones, items, views=range(DEFAULT_VIEWS + 1))
    result = fit_model(features, labels, label_names)

How its reported accuracy compares with held-out images: docs/EXPERIMENTS.md, "Selection".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from app.ml.evaluate import (
    L2_GRID,
    ONE_IMAGE_NOTE,
    calibration_error,
    classification_metrics,
    stratified_folds,
)
from app.ml.heads import HEAD_KINDS, Head, fit_logistic_many, fit_prototype
from app.ml.registry import few_shot_rank, unknown_detector
from app.ml.unknown import calibrate_unknown

# Accuracy differences below this count as ties; then the backbone with the better few-shot
# rank (registry.BackboneSpec.few_shot_rank), then the lower log loss, wins. 0.01 is one image
# in a hundred, well under a standard error of CV accuracy on a few hundred images; ties are
# common at 10-20 images per class, where CV accuracy saturates (docs/EXPERIMENTS.md).
NEAR_TIE = 0.01
# Below this many images in the smallest class, CV over a few dozen validation images cannot
# tell backbones apart, and the best of many noisy scores is often a weak backbone: there only
# the best few-shot backbone passed is a candidate; CV still picks its head and l2
# (docs/EXPERIMENTS.md, "Few-shot backbone").
FEW_SHOT_CLASS = 10


@dataclass(frozen=True)
class Candidate:
    """One way to classify: a backbone's features, a head kind and its regularisation."""

    backbone: str
    head: str  # a heads.HEAD_KINDS key: "logistic" | "prototype"
    l2: float | None = None  # logistic regularisation


@dataclass
class FitResult:
    """The chosen candidate, its head fitted on all images, honest metrics and the CV table."""

    candidate: Candidate
    head: Head
    metrics: dict[str, Any] | None
    metrics_note: str | None
    scores: list[dict[str, Any]] = field(default_factory=list)
    unknown: dict[str, Any] | None = None
    # (N, n_classes) probabilities of each image (row order = the labels passed) from the outer
    # fold that did not train on it: what the metrics were computed from. None without metrics.
    out_of_fold: np.ndarray | None = None


def candidates(backbones: Sequence[str], *, smallest_class: int) -> list[Candidate]:
    """Return the candidates worth scoring for these backbones given the smallest class's size.

    Below FEW_SHOT_CLASS images in the smallest class only the best few-shot backbone passed is
    a candidate (see FEW_SHOT_CLASS).
    """
    if smallest_class < FEW_SHOT_CLASS and backbones:
        backbones = [default_candidate(backbones).backbone]
    out: list[Candidate] = []
    for backbone in backbones:
        out.extend(Candidate(backbone, "logistic", l2) for l2 in sorted(L2_GRID))
        out.append(Candidate(backbone, "prototype"))
    return out


def default_candidate(backbones: Sequence[str]) -> Candidate:
    """Return the candidate used where no cross-validation is possible; raise ValueError."""
    if not backbones:
        raise ValueError("need at least one backbone")
    return Candidate(min(backbones, key=few_shot_rank), "prototype")


def fit_candidate(
    candidate: Candidate,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
) -> Head:
    """Return the candidate's head fitted on all views of (N, V, dim) features; raise ValueError."""
    x, y, groups = _flatten(features, labels)
    if candidate.head == "logistic":
        l2 = _required_l2(candidate)
        train = np.ones((1, len(y)), dtype=bool)
        return fit_logistic_many(x, y, train, [(0, l2)], n_classes=n_classes)[0]
    if candidate.head == "prototype":
        return fit_prototype(x, y, n_classes=n_classes, groups=groups)
    raise ValueError(f"unknown head kind {candidate.head!r}; expected one of {sorted(HEAD_KINDS)}")


def fit_candidate_many(
    candidate: Candidate,
    features: np.ndarray,
    labels: np.ndarray,
    row_sets: Sequence[np.ndarray],
    *,
    n_classes: int,
) -> list[Head]:
    """Return fit_candidate(candidate, features[rows], labels[rows]) for each set of image rows;
    logistic heads are fitted in one joint L-BFGS run (see fit_logistic_many)."""
    if candidate.head != "logistic":
        return [fit_candidate(candidate, features[rows], labels[rows], n_classes=n_classes)
                for rows in row_sets]
    if not row_sets:
        return []
    x, y, images = _flatten(features, labels)
    masks = np.stack([np.isin(images, rows) for rows in row_sets])
    l2 = _required_l2(candidate)
    return list[Head](fit_logistic_many(x, y, masks, [(m, l2) for m in range(len(row_sets))],
                                        n_classes=n_classes))


def fit_model(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    seed: int = 0,
    max_folds: int = 5,
    near_tie: float = NEAR_TIE,
) -> FitResult:
    """Return the selected head fitted on all images, nested-CV metrics and the unknown detector.

    `features` maps each candidate backbone to its (N, V, dim) features (row order = labels).
    Raise ValueError on inconsistent input.
    """
    labels = np.asarray(labels)
    n_classes = len(label_names)
    backbones = list(features)
    arrays = {name: np.asarray(features[name]) for name in backbones}
    _check_input(arrays, labels, label_names, max_folds=max_folds)
    counts = np.bincount(labels, minlength=n_classes)

    with _single_threaded_blas():
        engine = _Engine(arrays, labels, n_classes=n_classes, seed=seed, near_tie=near_tie)
        everything = np.arange(len(labels))
        n_outer = min(max_folds, int(counts.min()))
        if n_outer < 2:
            chosen = default_candidate(backbones)
            head = fit_candidate(chosen, arrays[chosen.backbone], labels, n_classes=n_classes)
            return FitResult(chosen, head, None, ONE_IMAGE_NOTE, [], None)

        outer = stratified_folds(labels, everything, n_splits=n_outer, seed=seed)
        # The top-level selection (on all images) and one per outer training part, all scored in
        # one batch so each (backbone, l2) costs one joint L-BFGS run.
        selections = [everything] + [train for train, _ in outer]
        chosen_all, tables = engine.select(selections, max_folds=max_folds)
        chosen = chosen_all[0]

        # Every image is predicted once, by a candidate chosen and fitted without it.
        fits = engine.fit_many(
            [(chosen_all[1 + f], train) for f, (train, _) in enumerate(outer)]
            + [(chosen, everything)]
        )
        probs = np.empty((len(labels), n_classes))
        for (_, val), head, candidate in zip(outer, fits[:-1], chosen_all[1:], strict=True):
            probs[val] = head.predict_proba(arrays[candidate.backbone][val, 0])
        head = fits[-1]

        metrics = classification_metrics(labels, probs, label_names, n_folds=n_outer)
        metrics.update(
            calibration_error=calibration_error(labels, probs),
            backbone=chosen.backbone,
            head=chosen.head,
            selection="nested",
        )
        preferred = unknown_detector()
        detector_backbone = preferred if preferred in arrays else chosen.backbone
        unknown = calibrate_unknown(
            arrays[detector_backbone][:, 0],
            labels,
            folds=outer,
            n_classes=n_classes,
            backbone=detector_backbone,
        )
    return FitResult(chosen, head, metrics, None, tables[0], unknown, out_of_fold=probs)


# --- internals -------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS on one thread for the duration (torch fits already are single-threaded)."""
    # Selection is many small matrix products, and on a busy machine multi-threaded BLAS waits
    # on descheduled threads (docs/EXPERIMENTS.md, "Threads").
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _required_l2(candidate: Candidate) -> float:
    if candidate.l2 is None or candidate.l2 <= 0:
        raise ValueError(f"{candidate.head} candidate needs l2 > 0, got {candidate.l2!r}")
    return float(candidate.l2)


def _flatten(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (N*V, dim) rows, their labels and their image index (views of an image adjacent)."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 3 or len(features) != len(labels) or features.shape[1] < 1:
        raise ValueError(
            f"need features (N, V, dim) and labels (N,), got {features.shape} and {labels.shape}"
        )
    n, v, dim = features.shape
    images = np.repeat(np.arange(n), v)
    return features.reshape(n * v, dim), labels[images], images


def _check_input(
    arrays: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    max_folds: int,
) -> None:
    n_classes = len(label_names)
    if n_classes < 2:
        raise ValueError(f"need at least 2 categories, got {n_classes}")
    if max_folds < 2:
        raise ValueError(f"max_folds must be >= 2, got {max_folds}")
    if not arrays:
        raise ValueError("need features for at least one backbone")
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be integers in [0, {n_classes})")
    for name, array in arrays.items():
        if array.ndim != 3 or len(array) != len(labels) or array.shape[1] < 1:
            raise ValueError(
                f"features[{name!r}] must have shape ({len(labels)}, V, dim), got {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"features[{name!r}] contain NaN or infinity")
    counts = np.bincount(labels, minlength=n_classes)
    empty = [str(label_names[int(i)]) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"every category needs at least 1 image; empty: {', '.join(empty)}")


class _Engine:
    """Cross-validated scoring and fitting of candidates on one data set, batched for speed."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        labels: np.ndarray,
        *,
        n_classes: int,
        seed: int,
        near_tie: float,
    ) -> None:
        self.arrays = arrays
        self.labels = labels
        self.n_classes = n_classes
        self.seed = seed
        self.near_tie = near_tie
        self.backbones = list(arrays)
        self.l2_grid = sorted(L2_GRID)
        self.flat = {name: _flatten(array, labels) for name, array in arrays.items()}

    def _row_mask(self, backbone: str, images: np.ndarray) -> np.ndarray:
        """Return the mask over flattened rows selecting every view of these images."""
        selected = np.zeros(len(self.labels), dtype=bool)
        selected[images] = True
        return selected[self.flat[backbone][2]]

    # -- selection --

    def select(
        self, selections: Sequence[np.ndarray], *, max_folds: int
    ) -> tuple[list[Candidate], list[list[dict[str, Any]]]]:
        """Return, per selection of images, the chosen candidate and its CV table."""
        folds: list[tuple[np.ndarray, np.ndarray]] = []
        fold_ids: list[list[int]] = []  # per selection, its inner folds' indices into `folds`
        pools: list[list[Candidate]] = []
        for rows in selections:
            smallest = int(np.bincount(self.labels[rows], minlength=self.n_classes).min())
            pools.append(candidates(self.backbones, smallest_class=smallest))
            n_inner = min(max_folds, smallest)
            plan = (
                stratified_folds(self.labels, rows, n_splits=n_inner, seed=self.seed)
                if n_inner >= 2
                else []  # a class with one image here: the default candidate, no CV
            )
            fold_ids.append(list(range(len(folds), len(folds) + len(plan))))
            folds.extend(plan)

        # Out-of-fold probabilities of every candidate, per fold index; each backbone is scored
        # on the folds of the selections whose pool includes it.
        probs: dict[Candidate, dict[int, np.ndarray]] = {}
        for backbone in self.backbones:
            needed = sorted(
                {
                    i
                    for pool, ids in zip(pools, fold_ids, strict=True)
                    if any(c.backbone == backbone for c in pool)
                    for i in ids
                }
            )
            if needed:
                probs.update(self._logistic_cv(backbone, needed, folds))
                probs.update(self._prototype_cv(backbone, needed, folds))

        chosen: list[Candidate] = []
        tables: list[list[dict[str, Any]]] = []
        for pool, ids in zip(pools, fold_ids, strict=True):
            if not ids:
                chosen.append(default_candidate(self.backbones))
                tables.append([])
                continue
            plan = [folds[i] for i in ids]
            table = [self._row(c, plan, [probs[c][i] for i in ids]) for c in pool]
            chosen.append(self._choose(table))
            tables.append(table)
        return chosen, tables

    def _row(
        self,
        candidate: Candidate,
        plan: Sequence[tuple[np.ndarray, np.ndarray]],
        fold_probs: Sequence[np.ndarray],
    ) -> dict[str, Any]:
        val = np.concatenate([v for _, v in plan])
        p = np.concatenate(fold_probs)
        y = self.labels[val]
        return {
            "backbone": candidate.backbone,
            "head": candidate.head,
            "l2": candidate.l2,
            "cv_accuracy": float((p.argmax(axis=1) == y).mean()),
            "cv_log_loss": float(log_loss(y, p, labels=list(range(self.n_classes)))),
        }

    def _choose(self, table: Sequence[dict[str, Any]]) -> Candidate:
        """Return the most accurate candidate; near-ties: few-shot rank, then log loss."""
        # Within the logistic family of a backbone, l2 is chosen by log loss first (it ranks l2
        # values more finely than accuracy's few distinct values); ties go to the stronger l2.
        eligible: list[dict[str, Any]] = []
        for backbone in self.backbones:
            rows = [r for r in table if r["backbone"] == backbone]
            logistic = [r for r in rows if r["head"] == "logistic"]
            if logistic:
                best = min(r["cv_log_loss"] for r in logistic)
                eligible.append(
                    max(
                        (r for r in logistic if r["cv_log_loss"] <= best + 1e-9),
                        key=lambda r: r["l2"],
                    )
                )
            eligible.extend(r for r in rows if r["head"] != "logistic")
        top = max(r["cv_accuracy"] for r in eligible)
        near = [r for r in eligible if r["cv_accuracy"] >= top - self.near_tie - 1e-12]
        best = min(near, key=lambda r: (few_shot_rank(r["backbone"]), r["cv_log_loss"]))
        return Candidate(best["backbone"], best["head"], best["l2"])

    def _logistic_cv(
        self, backbone: str, ids: Sequence[int], folds: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> dict[Candidate, dict[int, np.ndarray]]:
        """Return validation probabilities per logistic candidate of `backbone` and fold index."""
        x, y, _ = self.flat[backbone]
        masks = np.stack([self._row_mask(backbone, folds[i][0]) for i in ids])
        # One call: inside, one L-BFGS run per l2 over every fold, warm-started along the path.
        problems = [(m, l2) for l2 in self.l2_grid for m in range(len(ids))]
        heads = fit_logistic_many(x, y, masks, problems, n_classes=self.n_classes)
        out: dict[Candidate, dict[int, np.ndarray]] = {}
        for (m, l2), head in zip(problems, heads, strict=True):
            val = folds[ids[m]][1]
            probs = head.predict_proba(self.arrays[backbone][val, 0])
            out.setdefault(Candidate(backbone, "logistic", l2), {})[ids[m]] = probs
        return out

    def _prototype_cv(
        self, backbone: str, ids: Sequence[int], folds: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> dict[Candidate, dict[int, np.ndarray]]:
        """Return validation probabilities of the prototype candidate of `backbone` per fold."""
        x, y, images = self.flat[backbone]
        out = {}
        for i in ids:
            train, val = folds[i]
            mask = self._row_mask(backbone, train)
            head = fit_prototype(x[mask], y[mask], n_classes=self.n_classes, groups=images[mask])
            out[i] = head.predict_proba(self.arrays[backbone][val, 0])
        return {Candidate(backbone, "prototype"): out}

    # -- fitting --

    def fit_many(self, jobs: Sequence[tuple[Candidate, np.ndarray]]) -> list[Head]:
        """Return one head per (candidate, training images); logistic ones share L-BFGS runs."""
        heads: list[Head | None] = [None] * len(jobs)
        groups: dict[tuple[str, float], list[int]] = {}
        for j, (candidate, images) in enumerate(jobs):
            if candidate.head == "logistic":
                groups.setdefault((candidate.backbone, _required_l2(candidate)), []).append(j)
            else:
                heads[j] = fit_candidate(
                    candidate,
                    self.arrays[candidate.backbone][images],
                    self.labels[images],
                    n_classes=self.n_classes,
                )
        for (backbone, l2), index in groups.items():
            x, y, _ = self.flat[backbone]
            masks = np.stack([self._row_mask(backbone, jobs[j][1]) for j in index])
            fitted = fit_logistic_many(
                x, y, masks, [(m, l2) for m in range(len(index))], n_classes=self.n_classes
            )
            for j, head in zip(index, fitted, strict=True):
                heads[j] = head
        return [head for head in heads if head is not None]
