"""Choose backbone x head x regularisation by cross-validation on cached features, and report
metrics from nested cross-validation, so the choice itself cannot inflate them.

Features come as {backbone: (N, V, dim)}: view 0 is the eval view, views 1..V-1 augmentations
(augment.DEFAULT_VIEWS of them). Augmented views only ever enter training folds; every
validation score is on view 0. Typical use, with a FeatureCache and (hash, loader) items:

    features = cache.views_for(backbones, items, views=range(DEFAULT_VIEWS + 1))
    result = fit_nanonet(features, labels, label_names)

Measured on the shared data sets' val splits (five candidate backbones, 2 augmented views,
2-core CPU): ants/bees 0.961-0.967 val vs 0.980 nested CV, fit 25 s; flowers 0.82-0.90 val vs
0.78-0.84 nested CV, fit 12 s. On that flowers split every candidate scores ~0.80 in
cross-validation but up to 0.90 on val, so the nested estimate sits below val there.
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
from app.ml.unknown import PREFERRED_BACKBONE, calibrate_unknown

HEAD_KINDS: tuple[str, ...] = ("logistic", "prototype", "mlp")
# The MLP is only tried when every class has this many training images: below it, an MLP has
# nothing to gain over the linear head and its CV estimate is too noisy to trust.
MLP_MIN_CLASS = 10
MLP_L2 = 1e-3
# The prior: backbones in order of how well they transfer from few images, measured on the
# shared sets (BACKBONES.md: 1-shot ants/bees accuracy in this order; Lite2 and the concatenation
# best or near-best at every k). Where inner CV is impossible (a class with one image) the
# prototype head on the first of these wins outright; elsewhere the order breaks near-ties.
FEW_SHOT_ORDER: tuple[str, ...] = (
    "efficientnet_lite2",
    "mobilenet_v2+efficientnet_lite2",
    "efficientnet_lite1",
    "efficientnet_lite0",
    "mobilenet_v2",
)
# Accuracy differences below this count as ties; then the backbone earlier in FEW_SHOT_ORDER,
# then the lower log loss, wins. 0.01 is one image in a hundred: about half a standard error of
# a CV accuracy of 0.95 on 245 images (SE 0.014), a third of one on 85 images at 0.90 (SE 0.033).
# Ties are common at 10-20 images per class, where CV accuracy saturates at 1.0 for several
# backbones. Breaking them towards the cheaper backbone (the first rule we had) picked
# MobileNetV2 there, which generalises worst on ants/bees: val accuracy over 5 subsets each of
# 10 and 20 ants/bees per class plus all images, mean 0.950 (cheaper first), 0.958 (lower log
# loss first), 0.964 (this order). On flowers no near-tie occurred (same choice either way).
# Serving cost barely differs: the unknown detector runs Lite2 at predict time anyway.
NEAR_TIE = 0.01
# Below this many images in the smallest class, CV over a few dozen validation images cannot
# tell backbones apart, and the best of ~25 noisy scores is often a weak backbone. There only
# the best few-shot backbone passed is a candidate; CV still picks its head and l2. 5-shot
# ants/bees val accuracy (mean of 3 subsets, 0/1/2 augmented views): choosing among all five
# backbones 0.919/0.917/0.928, Lite2 only 0.948/0.956/0.946. At 10+ per class BACKBONES.md
# shows backbones swapping ranks between data sets, so selection starts to pay.
FEW_SHOT_CLASS = 10
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
    """Return the candidates worth scoring for these backbones given the smallest class's size.

    Below FEW_SHOT_CLASS images in the smallest class only the best few-shot backbone passed is
    a candidate (see FEW_SHOT_CLASS); the MLP only from MLP_MIN_CLASS images on.
    """
    if smallest_class < FEW_SHOT_CLASS and backbones:
        backbones = [default_candidate(backbones).backbone]
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
    """Return the candidate's head fitted on all views of (N, V, dim) features; raise ValueError."""
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
            head = fit_candidate(
                chosen, arrays[chosen.backbone], labels, n_classes=n_classes, seed=seed
            )
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
        detector_backbone = (
            PREFERRED_BACKBONE if PREFERRED_BACKBONE in arrays else chosen.backbone
        )
        unknown = calibrate_unknown(
            arrays[detector_backbone][:, 0],
            labels,
            folds=outer,
            n_classes=n_classes,
            backbone=detector_backbone,
        )
    return FitResult(chosen, head, metrics, None, tables[0], unknown)


def _prior_rank(backbone: str) -> tuple[int, float]:
    """Sort key of a backbone in the prior: FEW_SHOT_ORDER, then (unlisted ones) by cost."""
    if backbone in FEW_SHOT_ORDER:
        return FEW_SHOT_ORDER.index(backbone), 0.0
    return len(FEW_SHOT_ORDER), cost(backbone)


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
        pool = candidates(self.backbones, smallest_class=FEW_SHOT_CLASS)
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
        folds: list[tuple[np.ndarray, np.ndarray]] = []
        fold_ids: list[list[int]] = []  # per selection, its inner folds' indices into `folds`
        pools: list[list[Candidate]] = []
        for rows in selections:
            smallest = int(np.bincount(self.labels[rows], minlength=self.n_classes).min())
            pools.append(candidates(self.backbones, smallest_class=smallest))
            n_inner = min(max_folds, smallest)
            plan = (
                _stratified_folds(self.labels, rows, n_splits=n_inner, seed=self.seed)
                if n_inner >= 2
                else []  # a class with one image here: the default candidate, no CV
            )
            fold_ids.append(list(range(len(folds), len(folds) + len(plan))))
            folds.extend(plan)

        # Out-of-fold probabilities of the logistic and prototype candidates, per fold index;
        # each backbone is scored on the folds of the selections whose pool includes it.
        probs: dict[Candidate, dict[int, np.ndarray]] = {}
        for backbone in self.backbones:
            needed = sorted(
                {
                    i
                    for pool, ids in zip(pools, fold_ids)
                    if any(c.backbone == backbone for c in pool)
                    for i in ids
                }
            )
            if needed:
                probs.update(self._logistic_cv(backbone, needed, folds))
                probs.update(self._prototype_cv(backbone, needed, folds))

        chosen: list[Candidate] = []
        tables: list[list[dict[str, Any]]] = []
        for pool, ids in zip(pools, fold_ids):
            if not ids:
                chosen.append(default_candidate(self.backbones))
                tables.append([])
                continue
            plan = [folds[i] for i in ids]
            table = [
                self._row(c, plan, [probs[c][i] for i in ids]) for c in pool if c.head != "mlp"
            ]
            chosen.append(self._choose(table))
            tables.append(table)

        # The MLP is tried only on the backbone the linear and prototype heads found best: a fit
        # costs ~50 logistic ones, and a backbone that is not best for a linear head is very
        # unlikely to be best for an MLP on the same few hundred images.
        tries = [
            (s, c)
            for s, (pool, ids) in enumerate(zip(pools, fold_ids))
            if ids
            for c in pool
            if c.head == "mlp" and c.backbone == chosen[s].backbone
        ]
        results = self._mlp_cv([(c, [folds[i] for i in fold_ids[s]]) for s, c in tries])
        for (s, _), (candidate, fold_probs) in zip(tries, results):
            tables[s].append(self._row(candidate, [folds[i] for i in fold_ids[s]], fold_probs))
        for s in sorted({s for s, _ in tries}):
            chosen[s] = self._choose(tables[s])
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
        """Return the most accurate candidate; near-ties: FEW_SHOT_ORDER, then log loss."""
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
        best = min(near, key=lambda r: (_prior_rank(r["backbone"]), r["cv_log_loss"]))
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
        for (m, l2), head in zip(problems, heads):
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
