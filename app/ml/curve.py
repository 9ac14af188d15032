"""How much data is enough: learning curves measured by cross-validation and a fitted power law.

Meaning of "images per class" here:

* A learning-curve point at n means n training images per class were actually used to fit the
  model that was scored. Points are drawn from the training part of each cross-validation fold,
  which holds only (k-1)/k of the images, so the largest point is below the user's count.
* A projection is indexed by the full set's count (the smallest class), because the deployed
  model trains on every image: factor 2 means "twice the images you have now".
Both use the same curve, so they are directly comparable.

Each point also carries n_images, the number of distinct images scored (the folds' validation
parts cover the whole set), which fit_curve uses to smooth perfect scores on tiny sets.

Cost: learning_curve calls fit_predict at most MAX_FITS times (see _plan). How close the
projections come to measured accuracy: docs/EXPERIMENTS.md, "Learning curve".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""fit_predict(train_rows, val_rows) -> (len(val_rows), n_classes) probabilities.

Fits the already-chosen model configuration on the training rows and predicts the validation
rows; the caller closes over features, labels and the chosen backbone and head, so this module
stays model-agnostic. Column j is the probability of label value j.
"""

FitPredictMany = Callable[[Sequence[tuple[np.ndarray, np.ndarray]]], Sequence[np.ndarray]]
"""fit_predict_many([(train_rows, val_rows), ...]) -> one fit_predict answer per pair.

The same as calling fit_predict per pair; given, learning_curve makes every draw first and
calls it once, so a caller can fit all of them in one batched optimiser run (150 separate
L-BFGS runs cost 7.7 s of a 245-image training, one joint run a fraction: docs/EXPERIMENTS.md).
"""

# Keeps a learning curve to seconds, not minutes. Plans above it first lose repeats (the folds
# still give a spread), then sizes (see _plan). The floor is two sizes with one draw per fold,
# so the cap holds for any max_folds <= MAX_FITS // 2.
MAX_FITS = 150

# Sizes ladder: about x1.6 per step, with round numbers a user recognises (1.3 gives 1 at the
# first decade, then 13, 130, ...).
_LADDER_MANTISSAS = (1.3, 2.0, 3.0, 5.0, 8.0)
# A ladder size this close below the largest size adds a fit but almost no information.
_MIN_STEP = 1.25

FORM = "error = a + b * n^-c"
# Bounds of the exponent. Learning curves of linear heads on pretrained features fall roughly as
# n^-0.3 .. n^-1; the bounds only keep noisy fits out of absurd shapes (c -> 0 is a straight line
# in log n that never flattens, c >> 1 is a step that claims no further gain).
C_BOUNDS = (0.05, 2.0)
# Exponent used when the points cannot pin it down (see fit_curve): the 1/sqrt(n) rate of a
# statistical estimate, mid-range of the exponents learning curves show.
DEFAULT_C = 0.5
# c is fitted only with at least this many points spanning at least this factor in n.
_MIN_POINTS_FREE_C = 4
_MIN_SPAN_FREE_C = 10.0

TARGETS = (0.80, 0.90, 0.95, 0.98, 0.99)
DEFAULT_FACTORS = (2.0, 4.0, 10.0)


def default_sizes(largest: int) -> list[int]:
    """Return the ladder 1, 2, 3, 5, 8, 13, 20, 30, 50, ... up to and including `largest`."""
    if largest < 1:
        return []
    ladder: set[int] = set()
    scale = 1
    while scale <= largest:
        ladder.update(round(m * scale) for m in _LADDER_MANTISSAS)
        scale *= 10
    sizes = [n for n in sorted(ladder) if n * _MIN_STEP <= largest]
    return sizes + [largest]


def learning_curve(
    labels: np.ndarray,
    fit_predict: FitPredict | None,
    *,
    seed: int = 0,
    max_folds: int = 5,
    repeats: int = 3,
    sizes: Sequence[int] | None = None,
    fit_predict_many: FitPredictMany | None = None,
) -> list[dict[str, Any]]:
    """Return accuracy by training images per class, subsampled inside stratified CV folds.

    Give `fit_predict` or `fit_predict_many` (which takes precedence)."""
    labels = _check_labels(labels)
    if fit_predict is None and fit_predict_many is None:
        raise ValueError("give fit_predict or fit_predict_many")
    if max_folds < 2:
        raise ValueError(f"max_folds must be >= 2, got {max_folds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return []  # no stratified CV with a class of one image (or a single class)

    n_folds = min(max_folds, int(counts.min()))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = [(train, val) for train, val in splitter.split(np.zeros(len(labels)), labels)]
    # train_counts[f, k]: rows of class k in fold f's training part.
    train_counts = np.array([[np.sum(labels[t] == k) for k in classes] for t, _ in folds])
    largest = int(train_counts.min())
    if sizes is None:
        wanted = default_sizes(largest)
    else:
        if any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must be >= 1, got {list(sizes)}")
        # A size some class cannot supply in some fold would not be n per class: drop it.
        wanted = sorted({int(n) for n in sizes if int(n) <= largest})
    n_sizes, n_repeats = _plan(wanted, train_counts, repeats)

    rng = np.random.default_rng(seed)
    draws: list[tuple[int, np.ndarray, np.ndarray]] = []  # (n, training rows, validation rows)
    for train, val in folds:
        by_class = [train[labels[train] == k] for k in classes]
        seen: set[tuple[int, ...]] = set()
        for _ in range(n_repeats):
            # Nested draws: within a repeat the n-image set contains every smaller set, so the
            # differences between sizes come from the images added, not from a fresh draw.
            orders = [rng.permutation(rows) for rows in by_class]
            for n in n_sizes:
                rows = np.sort(np.concatenate([order[:n] for order in orders]))
                key = tuple(rows.tolist())
                if key in seen:
                    continue  # n covers whole classes: every repeat draws the same rows
                seen.add(key)
                draws.append((n, rows, val))
    pairs = [(rows, val) for _, rows, val in draws]
    if fit_predict_many is not None:
        answers = list(fit_predict_many(pairs))
        if len(answers) != len(pairs):
            raise ValueError(f"fit_predict_many gave {len(answers)} answers for {len(pairs)}")
    else:
        assert fit_predict is not None
        answers = [fit_predict(rows, val) for rows, val in pairs]
    accuracies: dict[int, list[float]] = {n: [] for n in n_sizes}
    for (n, _, val), answer in zip(draws, answers, strict=True):
        accuracies[n].append(_accuracy(answer, val, labels))
    return [
        {
            "images_per_class": int(n),
            "accuracy": float(np.mean(accuracies[n])),
            "std": float(np.std(accuracies[n])),
            "n_evaluations": len(accuracies[n]),
            # The folds' validation parts partition the set, so every draw scores every image.
            "n_images": len(labels),
        }
        for n in n_sizes
    ]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    return labels


def _distinct_draws(n: int, fold_counts: np.ndarray, repeats: int) -> int:
    """Return how many distinct training sets `repeats` draws of n per class give in one fold."""
    return 1 if (fold_counts <= n).all() else repeats


def _calls(sizes: Sequence[int], train_counts: np.ndarray, repeats: int) -> int:
    return sum(_distinct_draws(n, counts, repeats) for counts in train_counts for n in sizes)


def _plan(sizes: list[int], train_counts: np.ndarray, repeats: int) -> tuple[list[int], int]:
    """Return (sizes, repeats) trimmed so the number of fit_predict calls is <= MAX_FITS."""
    # Repeats go first: the folds already give several evaluations per size. Sizes go next,
    # evenly on a log scale, always keeping the smallest and the largest (the largest is the
    # best-measured point and anchors the projection).
    while repeats > 1 and _calls(sizes, train_counts, repeats) > MAX_FITS:
        repeats -= 1
    keep = len(sizes)
    chosen = sizes
    while keep > 2 and _calls(chosen, train_counts, repeats) > MAX_FITS:
        keep -= 1
        spots = np.geomspace(sizes[0], sizes[-1], keep)
        chosen = sorted({min(sizes, key=lambda s: abs(math.log(s / spot))) for spot in spots})
    return chosen, repeats


def _accuracy(answer: np.ndarray, val: np.ndarray, labels: np.ndarray) -> float:
    probabilities = np.asarray(answer)
    if probabilities.ndim != 2 or len(probabilities) != len(val):
        raise ValueError(
            f"fit_predict must return ({len(val)}, n_classes) probabilities, "
            f"got shape {probabilities.shape}"
        )
    return float(np.mean(probabilities.argmax(axis=1) == labels[val]))


def fit_curve(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Return {"a", "b", "c", "form"} of error = a + b * n^-c fitted to points, or None (< 2)."""
    if len(points) < 2:
        return None
    points = sorted(points, key=lambda p: p["images_per_class"])
    n = np.array([p["images_per_class"] for p in points], dtype=np.float64)
    error = np.array([_smoothed_error(p) for p in points])
    # Least squares weighted by n_evaluations (residuals times its square root).
    weight = np.sqrt(np.array([max(p.get("n_evaluations", 1), 1) for p in points], float))
    # Over less than a decade of n, n^-c for different c are nearly collinear with a + b * x, so
    # the exponent is not identifiable: noise alone swings it between a curve that never
    # flattens and one that is already flat, and the projection with it. There (and with 2-3
    # points) c is fixed at DEFAULT_C and only a and b are fitted; over a decade or more, c is
    # fitted within C_BOUNDS from several starts (the problem is not convex in c).
    free_c = len(points) >= _MIN_POINTS_FREE_C and n[-1] >= _MIN_SPAN_FREE_C * n[0]
    best: tuple[float, tuple[float, float, float]] | None = None
    for c0 in (0.3, 0.7, 1.5) if free_c else (DEFAULT_C,):
        a, b, c = _fit_from(n, error, weight, c0=c0, free_c=free_c)
        cost = float(np.sum((weight * (a + b * n**-c - error)) ** 2))
        if best is None or cost < best[0] - 1e-12:  # ties keep the earlier start
            best = (cost, (a, b, c))
    assert best is not None
    a, b, c = best[1]
    return {"a": a, "b": b, "c": c, "form": FORM}


def _smoothed_error(point: dict[str, Any]) -> float:
    """Return the point's error rate, Jeffreys-smoothed when its image count is known."""
    error = 1.0 - float(point["accuracy"])
    n_images = point.get("n_images")
    if not n_images:
        return error
    # A perfect score on 20 images does not mean a zero error rate, yet read literally it pulls
    # the asymptote a to 0 and projects 100%. The posterior mean under a Jeffreys prior,
    # (errors + 1/2) / (images + 1), keeps such points at a plausible error (2.4% for 20
    # images) and vanishes as the image count grows.
    return (error * n_images + 0.5) / (n_images + 1)


def _fit_from(
    n: np.ndarray, error: np.ndarray, weight: np.ndarray, *, c0: float, free_c: bool
) -> tuple[float, float, float]:
    """Return bounded least-squares (a, b, c) started at c0; c stays at c0 unless free_c."""
    from scipy.optimize import least_squares  # imported here: scipy is slow to import

    # Start at the curve through the first and last points with exponent c0, clipped to bounds.
    span = n[0] ** -c0 - n[-1] ** -c0
    b0 = float(np.clip((error[0] - error[-1]) / span if span > 0 else 0.0, 0.0, 1.0))
    a0 = float(np.clip(error[-1] - b0 * n[-1] ** -c0, 0.0, 1.0))

    def residuals(params: np.ndarray) -> np.ndarray:
        a, b = params[0], params[1]
        c = params[2] if free_c else c0
        return weight * (a + b * n**-c - error)

    lower = [0.0, 0.0, C_BOUNDS[0]] if free_c else [0.0, 0.0]
    # b <= 1: error at n = 1 is a + b, and an error above 1 is meaningless.
    upper = [1.0, 1.0, C_BOUNDS[1]] if free_c else [1.0, 1.0]
    start = np.clip([a0, b0, c0] if free_c else [a0, b0], lower, upper)
    result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
    a, b = float(result.x[0]), float(result.x[1])
    return a, b, float(result.x[2]) if free_c else c0


def _error(curve: dict[str, Any], n: float) -> float:
    return float(curve["a"] + curve["b"] * max(n, 1e-9) ** -curve["c"])


def project(
    curve: dict[str, Any],
    *,
    images_per_class: int,
    factors: Sequence[float] = DEFAULT_FACTORS,
) -> list[dict[str, Any]]:
    """Return the fitted accuracy at round(f * images_per_class) images per class for each f."""
    out = []
    for factor in factors:
        n = round(factor * images_per_class)
        accuracy = float(np.clip(1.0 - _error(curve, n), 0.0, 1.0))
        out.append({"images_per_class": n, "accuracy": accuracy})
    return out


def images_needed(curve: dict[str, Any], *, target: float) -> float | None:
    """Return images per class where fitted accuracy reaches target; None if never (asymptote)."""
    allowed = 1.0 - target  # error at the target accuracy
    a, b, c = curve["a"], curve["b"], curve["c"]
    if a >= allowed - 1e-12:  # 1e-12: 1 - 0.98 is 0.0200000000000000018
        return None
    if b <= 0:
        return 1.0  # flat curve already below the allowed error
    return max(1.0, float((b / (allowed - a)) ** (1.0 / c)))


def friendly_count(value: float) -> int:
    """Return value rounded up to a number a person would say: 7, 15, 30, 150, 1,200, ..."""
    value = max(1.0, float(value))
    if value <= 10:
        return math.ceil(value)
    step = 5 if value <= 50 else 10 if value <= 200 else 50 if value <= 1000 else 100
    if value > 10_000:
        step = 10 ** (int(math.log10(value)) - 1)  # two significant figures
    return int(math.ceil(value / step) * step)


def _percent(value: float) -> str:
    """Return value as a whole percentage rounded down, so 99.6% never reads as 100%."""
    return f"{math.floor(100 * value + 1e-9)}%"  # 1e-9: 100 * 0.95 is 94.99999...


def accuracy_floor(accuracy: float, n_images: int, *, confidence: float = 0.95) -> float:
    """Return the one-sided Clopper-Pearson lower bound of an accuracy measured on n_images."""
    from scipy.stats import beta

    correct = round(accuracy * n_images)
    if correct <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, correct, n_images - correct + 1))


def advice(
    curve: dict[str, Any] | None,
    *,
    images_per_class: int,
    accuracy: float,
    n_images: int | None = None,
) -> str:
    """Return one plain sentence on how many more images per class would reach the next target.

    n_images: how many images `accuracy` was measured on. A perfect score on 20 images is not
    evidence of 99% (its 95% lower bound is 86%); then the sentence says what it does show.
    """
    if accuracy >= TARGETS[-1]:
        floor = accuracy_floor(accuracy, n_images) if n_images else 1.0
        if floor < TARGETS[-3]:
            return (
                f"Cross-validation got {_percent(accuracy)} of {n_images} images right, but so "
                f"few images only show that accuracy is likely above {_percent(floor)}; more "
                "images per class would tell how much higher it is."
            )
        return (
            f"Accuracy is already {_percent(accuracy)}; more images are unlikely to make a "
            "noticeable difference."
        )
    if curve is None:
        return "Add a few more images to every category to estimate how much more data would help."
    target = next(t for t in TARGETS if t > accuracy)
    needed = images_needed(curve, target=target)
    if needed is None:
        ceiling = max(1.0 - curve["a"], accuracy)
        return (
            f"More images alone are unlikely to go past about {_percent(ceiling)}; to reach "
            f"{_percent(target)}, try another backbone or make sure the categories are labelled "
            "consistently and look distinct in the photos."
        )
    more = needed - images_per_class
    if more <= 0:
        # The fit says the current count should already do it, yet the measured accuracy is
        # below target: the gap is noise, and a few more images is the honest suggestion.
        return f"A few more images per class should reach {_percent(target)} accuracy."
    if needed > 10 * max(images_per_class, 1):
        return (
            f"Reaching {_percent(target)} accuracy would take roughly "
            f"{friendly_count(needed):,} images per class, far beyond what was measured, so "
            "treat this as a rough guess."
        )
    count = friendly_count(more)
    more_text = "One more image" if count == 1 else f"About {count:,} more images"
    return f"{more_text} per class should reach {_percent(target)} accuracy."


def summarize(
    labels: np.ndarray,
    fit_predict: FitPredict | None,
    *,
    accuracy: float,
    seed: int = 0,
    fit_predict_many: FitPredictMany | None = None,
) -> dict[str, Any]:
    """Return {"points", "projection", "curve", "advice"}, JSON-serialisable."""
    labels = _check_labels(labels)
    points = learning_curve(labels, fit_predict, seed=seed, fit_predict_many=fit_predict_many)
    curve = fit_curve(points)
    # The deployed model trains on every image, so projections start from the full set's count.
    counts = np.unique(labels, return_counts=True)[1]
    images_per_class = int(counts.min()) if len(counts) else 0
    projection = project(curve, images_per_class=images_per_class) if curve else []
    return {
        "points": points,
        "projection": projection,
        "curve": curve,
        "advice": advice(curve, images_per_class=images_per_class, accuracy=accuracy,
                         n_images=len(labels)),
    }
