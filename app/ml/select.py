"""Choose backbone x head x regularisation by cross-validation on cached features, and report
metrics from nested cross-validation, so the choice itself cannot inflate them.

Features come as {backbone: (N, V, dim)}: view 0 is the eval view, views 1..V-1 augmentations.
Augmented views only ever enter training folds; every validation score is on view 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from app.ml.backbones import cost
from app.ml.evaluate import L2_GRID, ONE_IMAGE_NOTE, classification_metrics
from app.ml.heads import Head, fit_logistic_many, fit_mlp, fit_mlp_many, fit_prototype
from app.ml.unknown import calibrate_unknown

HEAD_KINDS: tuple[str, ...] = ("logistic", "prototype", "mlp")
# The MLP is only tried when every class has this many training images: below it, an MLP has
# nothing to gain over the linear head and its CV estimate is too noisy to trust.
MLP_MIN_CLASS = 10
MLP_L2 = 1e-3
# Where inner CV is impossible (a class with one image), the prototype head on the best
# few-shot backbone passed in: BACKBONES.md measured 1-shot ants/bees accuracy in this order.
FEW_SHOT_ORDER: tuple[str, ...] = (
    "efficientnet_lite2",
    "mobilenet_v2+efficientnet_lite2",
    "efficientnet_lite1",
    "efficientnet_lite0",
    "mobilenet_v2",
)
# Accuracy differences below this count as ties (then the cheaper backbone, then the lower log
# loss, wins). 0.01 is one image in a hundred: about half a standard error of a CV accuracy of
# 0.95 on 245 images (SE 0.014), a third of one on 85 images at 0.90 (SE 0.033).
NEAR_TIE = 0.01
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Candidate:
    """One way to classify: a backbone's features, a head kind and its regularisation."""

    backbone: str
    head: str  # "logistic" | "prototype" | "mlp"
    l2: float | None = None  # logistic/mlp regularisation


@dataclass
class FitResult:
    """The chosen candidate, its head fitted on all images, honest metrics and the CV table."""

    candidate: Candidate
    head: Head
    metrics: dict[str, Any] | None
    metrics_note: str | None
    scores: list[dict[str, Any]] = field(default_factory=list)
    unknown: dict[str, Any] | None = None


def candidates(backbones: Sequence[str], *, smallest_class: int) -> list[Candidate]:
    """Return every candidate for these backbones given the smallest class's image count."""
    out: list[Candidate] = []
    for backbone in backbones:
        out.extend(Candidate(backbone, "logistic", l2) for l2 in sorted(L2_GRID))
        out.append(Candidate(backbone, "prototype"))
        if smallest_class >= MLP_MIN_CLASS:
            out.append(Candidate(backbone, "mlp", MLP_L2))
    return out


def default_candidate(backbones: Sequence[str]) -> Candidate:
    """Return the candidate used where no cross-validation is possible; raise ValueError."""
    if not backbones:
        raise ValueError("need at least one backbone")
    ranked = [name for name in FEW_SHOT_ORDER if name in backbones]
    return Candidate(ranked[0] if ranked else backbones[0], "prototype")


def fit_candidate(
    candidate: Candidate,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    seed: int = 0,
) -> Head:
    """Return the candidate's head fitted on all views of these (N, V, dim) rows; raise ValueError."""
    x, y, groups = _flatten(features, labels)
    if candidate.head == "logistic":
        l2 = _required_l2(candidate)
        train = np.ones((1, len(y)), dtype=bool)
        return fit_logistic_many(x, y, train, [(0, l2)], n_classes=n_classes)[0]
    if candidate.head == "prototype":
        return fit_prototype(x, y, n_classes=n_classes, groups=groups)
    if candidate.head == "mlp":
        return fit_mlp(x, y, n_classes=n_classes, l2=_required_l2(candidate), seed=seed)
    raise ValueError(f"unknown head kind {candidate.head!r}; expected one of {HEAD_KINDS}")


def fit_nanonet(
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
            head = fit_candidate(chosen, arrays[chosen.backbone], labels, n_classes=n_classes, seed=seed)
            return FitResult(chosen, head, None, ONE_IMAGE_NOTE, [], None)

        outer = _stratified_folds(labels, everything, n_splits=n_outer, seed=seed)
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
        for (_, val), head, candidate in zip(outer, fits, chosen_all[1:]):
            probs[val] = head.predict_proba(arrays[candidate.backbone][val, 0])
        head = fits[-1]

        metrics = classification_metrics(labels, probs, label_names, n_folds=n_outer)
        metrics.update(
            calibration_error=calibration_error(labels, probs),
            backbone=chosen.backbone,
            head=chosen.head,
            selection="nested",
        )
        unknown = calibrate_unknown(
            arrays[chosen.backbone], labels, folds=outer, n_classes=n_classes
        )
    return FitResult(chosen, head, metrics, None, tables[0], unknown)


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


# --- internals -------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS on one thread for the duration (torch fits already are single-threaded)."""
    # Selection is many small matrix products; on a busy 2-core machine multi-threaded BLAS
    # waits on descheduled threads (a 600 x 600 eigh took 3.8 s on two threads, 0.7 s on one).
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


def _stratified_folds(
    labels: np.ndarray, rows: np.ndarray, *, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (train image indices, validation image indices) per stratified fold of `rows`."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [
        (rows[train], rows[val])
        for train, val in splitter.split(np.zeros(len(rows)), labels[rows])
    ]


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
        # Logistic and prototype candidates are scored on every backbone; MLP ones separately.
        pool = candidates(self.backbones, smallest_class=0)
        self.l2_grid = sorted({c.l2 for c in pool if c.head == "logistic" and c.l2 is not None})
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
        plans: list[list[tuple[np.ndarray, np.ndarray]] | None] = []
        for rows in selections:
            smallest = int(np.bincount(self.labels[rows], minlength=self.n_classes).min())
            n_inner = min(max_folds, smallest)
            plans.append(
                _stratified_folds(self.labels, rows, n_splits=n_inner, seed=self.seed)
                if n_inner >= 2
                else None
            )
        folds = [fold for plan in plans if plan is not None for fold in plan]
        fold_ids: list[list[int]] = []
        start = 0
        for plan in plans:
            size = 0 if plan is None else len(plan)
            fold_ids.append(list(range(start, start + size)))
            start += size

        # Out-of-fold validation probabilities, per candidate and fold.
        probs: dict[Candidate, dict[int, np.ndarray]] = {}
        if folds:
            probs.update(self._logistic_cv(folds))
            probs.update(self._prototype_cv(folds))

        chosen: list[Candidate | None] = []
        tables: list[list[dict[str, Any]]] = []
        for plan, ids in zip(plans, fold_ids):
            if plan is None:
                chosen.append(default_candidate(self.backbones))
                tables.append([])
                continue
            table = [
                self._row(candidate, plan, [fold_probs[i] for i in ids])
                for candidate, fold_probs in probs.items()
            ]
            chosen.append(self._choose(table))
            tables.append(table)

        # The MLP is tried only on the backbone the linear and prototype heads found best: a fit
        # costs ~100 logistic ones, and a backbone that is not best for a linear head is very
        # unlikely to be best for an MLP on the same few hundred images.
        tries = [
            s
            for s, (rows, plan) in enumerate(zip(selections, plans))
            if plan is not None
            and np.bincount(self.labels[rows], minlength=self.n_classes).min() >= MLP_MIN_CLASS
        ]
        mlp_probs = self._mlp_cv(
            [(Candidate(chosen[s].backbone, "mlp", MLP_L2), plans[s]) for s in tries]
        )
        for s, (candidate, fold_probs) in zip(tries, mlp_probs):
            tables[s].append(self._row(candidate, plans[s], fold_probs))
            chosen[s] = self._choose(tables[s])
        return [c for c in chosen if c is not None], tables

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
        """Return the most accurate candidate; near-ties go to the cheaper backbone, then log loss."""
        # Within the logistic family of a backbone, l2 is chosen by log loss (it ranks l2 more
        # finely than accuracy's few distinct values); ties go to the stronger regularisation.
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
        best = min(near, key=lambda r: (cost(r["backbone"]), r["cv_log_loss"]))
        return Candidate(best["backbone"], best["head"], best["l2"])

    def _logistic_cv(
        self, folds: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> dict[Candidate, dict[int, np.ndarray]]:
        out: dict[Candidate, dict[int, np.ndarray]] = {}
        for backbone in self.backbones:
            x, y, _ = self.flat[backbone]
            masks = np.stack([self._row_mask(backbone, train) for train, _ in folds])
            problems = [(m, l2) for l2 in self.l2_grid for m in range(len(folds))]
            heads = fit_logistic_many(x, y, masks, problems, n_classes=self.n_classes)
            for (m, l2), head in zip(problems, heads):
                val = folds[m][1]
                probs = head.predict_proba(self.arrays[backbone][val, 0])
                out.setdefault(Candidate(backbone, "logistic", l2), {})[m] = probs
        return out

    def _prototype_cv(
        self, folds: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> dict[Candidate, dict[int, np.ndarray]]:
        out: dict[Candidate, dict[int, np.ndarray]] = {}
        for backbone in self.backbones:
            x, y, images = self.flat[backbone]
            fold_probs = {}
            for m, (train, val) in enumerate(folds):
                mask = self._row_mask(backbone, train)
                head = fit_prototype(x[mask], y[mask], n_classes=self.n_classes, groups=images[mask])
                fold_probs[m] = head.predict_proba(self.arrays[backbone][val, 0])
            out[Candidate(backbone, "prototype")] = fold_probs
        return out

    def _mlp_cv(
        self, jobs: Sequence[tuple[Candidate, Sequence[tuple[np.ndarray, np.ndarray]]]]
    ) -> list[tuple[Candidate, list[np.ndarray]]]:
        """Return (candidate, validation probabilities per fold) per (MLP candidate, folds)."""
        out: list[tuple[Candidate, list[np.ndarray]]] = [(c, []) for c, _ in jobs]
        for backbone in dict.fromkeys(c.backbone for c, _ in jobs):
            # One batched fit per backbone over every fold of every selection that needs it.
            mine = [j for j, (c, _) in enumerate(jobs) if c.backbone == backbone]
            folds = [(j, fold) for j in mine for fold in jobs[j][1]]
            x, y, _ = self.flat[backbone]
            masks = np.stack([self._row_mask(backbone, train) for _, (train, _) in folds])
            heads = fit_mlp_many(
                x, y, masks, n_classes=self.n_classes, l2=MLP_L2, seed=self.seed
            )
            for (j, (_, val)), head in zip(folds, heads):
                out[j][1].append(head.predict_proba(self.arrays[backbone][val, 0]))
        return out

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
                    seed=self.seed,
                )
        for (backbone, l2), index in groups.items():
            x, y, _ = self.flat[backbone]
            masks = np.stack([self._row_mask(backbone, jobs[j][1]) for j in index])
            fitted = fit_logistic_many(
                x, y, masks, [(m, l2) for m in range(len(index))], n_classes=self.n_classes
            )
            for j, head in zip(index, fitted):
                heads[j] = head
        return [head for head in heads if head is not None]
