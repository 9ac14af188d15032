"""What a version's own predictions say about its training images, with no extra fitting.

Inputs are per image (row): the given label, the out-of-fold probabilities from nested
cross-validation (select.FitResult.out_of_fold) and the eval-view backbone features. Rows stay
rows here; the caller maps them to image ids. Typical use:

    issues = suspected_mislabels(labels, probs)
    groups = duplicate_groups(features)  # (N, dim) eval view of DUPLICATE_BACKBONE

How well the mislabel ranking finds flipped labels, and how the duplicate threshold was chosen:
docs/EXPERIMENTS.md, "Review".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Near-copies are found on MobileNetV2's eval-view features whatever backbone a version uses:
# Lite2's features move more under JPEG re-encoding than they differ between some different
# photos, MobileNetV2's do not (docs/EXPERIMENTS.md, "Review").
DUPLICATE_BACKBONE = "mobilenet_v2"
# Cosine of centred features at or above which two images count as one picture: JPEG-85 copies
# score >= 0.87, most JPEG-50 and 3/4-scaled ones >= 0.80, different photos of the shared sets
# at most 0.73.
DUPLICATE_COSINE = 0.80
# Rows of the similarity matrix computed at once: bounds memory at CHUNK x N floats.
_CHUNK = 1024


@dataclass(frozen=True)
class Mislabel:
    """An image whose given label the out-of-fold prediction disputes."""

    row: int
    label: int
    suggested: int  # the most probable other category
    confidence: float  # out-of-fold probability of `suggested`


@dataclass(frozen=True)
class DuplicateGroup:
    """Images whose features are near-identical; `similarity` is the lowest pairwise cosine."""

    rows: tuple[int, ...]
    similarity: float


@dataclass(frozen=True)
class Hard:
    """A correctly predicted image and the out-of-fold probability of its own label."""

    row: int
    probability: float


@dataclass(frozen=True)
class Confusion:
    """Images of category `label` predicted as `predicted`, most confidently wrong first."""

    label: int
    predicted: int
    count: int
    rows: tuple[int, ...]


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (len(probs),) or probs.shape[1] < 2:
        raise ValueError(
            f"need labels (N,) and probabilities (N, classes >= 2), got {labels.shape} "
            f"and {probs.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be integers in [0, {probs.shape[1]})")
    return labels.astype(np.int64), probs


def suspected_mislabels(labels: np.ndarray, probs: np.ndarray) -> list[Mislabel]:
    """Return the images confident learning flags as mislabelled, most likely first.

    cleanlab's `find_label_issues` (prune by noise rate) on out-of-fold probabilities, ranked
    by self-confidence (lowest probability of the given label first). Raise ValueError on
    inconsistent input.
    """
    from cleanlab.filter import find_label_issues

    labels, probs = _check(labels, probs)
    if len(labels) == 0:
        return []
    # n_jobs=1: no process pool inside a server thread; the work is a few milliseconds anyway.
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    out = []
    for row in ranked:
        suggested = int(others[row].argmax())
        out.append(Mislabel(int(row), int(labels[row]), suggested, float(probs[row, suggested])))
    return out


def cosine_matrix_rows(features: np.ndarray) -> np.ndarray:
    """Return the features centred on their mean and scaled to unit length, as float32 rows.

    Centring removes what every image shares (pooled ReLU features are all positive, so raw
    cosines of unrelated photos sit around 0.5-0.8), which leaves near-copies far apart from
    the rest. Raise ValueError unless features are (N, dim).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"need features (N, dim), got {features.shape}")
    centred = features - features.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


def duplicate_groups(
    features: np.ndarray, *, threshold: float = DUPLICATE_COSINE
) -> list[DuplicateGroup]:
    """Return groups of near-identical images (cosine >= threshold, joined transitively).

    Groups are sorted by similarity, highest first; each group's rows ascend. Raise ValueError
    unless features are (N, dim).
    """
    unit = cosine_matrix_rows(features)
    n = len(unit)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, _CHUNK):
        block = unit[start : start + _CHUNK] @ unit.T
        rows, cols = np.nonzero(block >= threshold)
        for first, second in zip(rows + start, cols, strict=True):
            if first < second:
                a, b = root(int(first)), root(int(second))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    groups = []
    for rows_of_group in members.values():
        if len(rows_of_group) < 2:
            continue
        sub = unit[rows_of_group] @ unit[rows_of_group].T
        lowest = float(sub[np.triu_indices(len(rows_of_group), k=1)].min())
        groups.append(DuplicateGroup(tuple(rows_of_group), min(lowest, 1.0)))
    groups.sort(key=lambda g: (-g.similarity, g.rows))
    return groups


def hardest(
    labels: np.ndarray, probs: np.ndarray, *, per_class: int = 3, exclude: set[int] | None = None
) -> dict[int, list[Hard]]:
    """Return, per category, the correctly predicted images with the lowest own-label probability.

    `exclude` rows (e.g. suspected mislabels) are left out. Raise ValueError on bad input.
    """
    labels, probs = _check(labels, probs)
    own = probs[np.arange(len(labels)), labels]
    correct = probs.argmax(axis=1) == labels
    skip = exclude or set()
    out: dict[int, list[Hard]] = {}
    for label in range(probs.shape[1]):
        rows = [int(r) for r in np.flatnonzero(correct & (labels == label)) if int(r) not in skip]
        rows.sort(key=lambda r: (own[r], r))
        out[label] = [Hard(r, float(own[r])) for r in rows[:per_class]]
    return out


def confusions(
    labels: np.ndarray, probs: np.ndarray, *, limit: int = 10, examples: int = 5
) -> list[Confusion]:
    """Return the off-diagonal cells of the out-of-fold confusion matrix, largest first.

    Each cell lists up to `examples` rows, the most confidently wrong first. Raise ValueError
    on bad input.
    """
    labels, probs = _check(labels, probs)
    predicted = probs.argmax(axis=1)
    cells: list[Confusion] = []
    for label in range(probs.shape[1]):
        for other in range(probs.shape[1]):
            if other == label:
                continue
            rows = np.flatnonzero((labels == label) & (predicted == other))
            if len(rows) == 0:
                continue
            ordered = sorted((int(r) for r in rows), key=lambda r: (-probs[r, other], r))
            cells.append(Confusion(label, other, len(rows), tuple(ordered[:examples])))
    cells.sort(key=lambda c: (-c.count, c.label, c.predicted))
    return cells[:limit]
