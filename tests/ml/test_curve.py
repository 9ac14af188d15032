import json

import numpy as np
import pytest

from app.ml import curve
from app.ml.curve import (
    C_BOUNDS,
    DEFAULT_C,
    MAX_FITS,
    accuracy_floor,
    advice,
    default_sizes,
    fit_curve,
    friendly_count,
    images_needed,
    learning_curve,
    project,
    summarize,
)
from app.ml.heads import fit_logistic
from tests.ml.conftest import blobs


def power_law_fit_predict(labels, *, a, b, c, n_classes, seed=0):
    """Return a fit_predict whose accuracy at n images per class is 1 - (a + b * n^-c)."""
    # Each row gets a fixed, evenly spread "difficulty" u; a row is predicted right when u is
    # above the error rate, so the accuracy over all rows is 1 - error to within 1 / N.
    u = (np.random.default_rng(seed).permutation(len(labels)) + 0.5) / len(labels)

    def fit_predict(train, val):
        error = a + b * (len(train) / n_classes) ** -c
        predicted = np.where(u[val] >= error, labels[val], (labels[val] + 1) % n_classes)
        return np.eye(n_classes)[predicted]

    return fit_predict


def centroid_fit_predict(features, labels, n_classes):
    """Return a nearest-centroid fit_predict: fast, and genuinely better with more images."""

    def fit_predict(train, val):
        centres = np.stack([features[train][labels[train] == k].mean(0) for k in range(n_classes)])
        distances = ((features[val][:, None, :] - centres[None]) ** 2).sum(axis=2)
        return np.eye(n_classes)[distances.argmin(axis=1)]

    return fit_predict


def counting(fit_predict):
    calls = []

    def wrapped(train, val):
        calls.append((train.copy(), val.copy()))
        return fit_predict(train, val)

    return wrapped, calls


def test_default_sizes_ladder_always_ends_at_largest():
    assert default_sizes(1) == [1]
    assert default_sizes(8) == [1, 2, 3, 5, 8]
    assert default_sizes(13) == [1, 2, 3, 5, 8, 13]
    # 80 is too close below 96 to be worth a fit of its own.
    assert default_sizes(96) == [1, 2, 3, 5, 8, 13, 20, 30, 50, 96]
    assert default_sizes(1000)[-4:] == [300, 500, 800, 1000]
    assert default_sizes(0) == []


def test_points_are_indexed_by_training_images_actually_used():
    labels = np.repeat([0, 1], 10)
    fit_predict, calls = counting(power_law_fit_predict(labels, a=0.1, b=0.4, c=0.5, n_classes=2))
    points = learning_curve(labels, fit_predict)
    # 5 folds: each training part holds 8 of a class's 10 images, so the largest point is 8.
    assert [p["images_per_class"] for p in points] == [1, 2, 3, 5, 8]
    for train, val in calls:
        assert len(np.intersect1d(train, val)) == 0
        counts = np.bincount(labels[train], minlength=2)
        assert counts[0] == counts[1] and counts[0] in (1, 2, 3, 5, 8)
        assert len(val) == 4  # the fold's whole validation part
    # Every repeat of n = 8 draws the whole training part, so it is fitted once per fold.
    assert [p["n_evaluations"] for p in points] == [15, 15, 15, 15, 5]
    assert len(calls) == sum(p["n_evaluations"] for p in points) == 65
    assert all(p["n_images"] == 20 for p in points)


def test_recovers_a_known_power_law():
    a, b, c = 0.05, 0.5, 0.7
    labels = np.repeat([0, 1], 200)
    fit_predict = power_law_fit_predict(labels, a=a, b=b, c=c, n_classes=2)
    points = learning_curve(labels, fit_predict)
    for p in points:
        assert p["accuracy"] == pytest.approx(1 - (a + b * p["images_per_class"] ** -c), abs=0.01)
    fitted = fit_curve(points)
    assert fitted["a"] == pytest.approx(a, abs=0.01)
    assert fitted["b"] == pytest.approx(b, abs=0.05)
    assert fitted["c"] == pytest.approx(c, abs=0.1)
    assert fitted["form"] == "error = a + b * n^-c"
    for point in project(fitted, images_per_class=200, factors=(2, 10)):
        truth = 1 - (a + b * point["images_per_class"] ** -c)
        assert point["accuracy"] == pytest.approx(truth, abs=0.005)


def test_less_than_a_decade_of_sizes_fixes_the_exponent():
    points = [
        {"images_per_class": n, "accuracy": 1 - (0.1 + 0.3 * n**-0.5), "n_evaluations": 15}
        for n in (1, 2, 3, 5, 8)
    ]
    fitted = fit_curve(points)
    assert fitted["c"] == DEFAULT_C
    assert fitted["a"] == pytest.approx(0.1, abs=1e-6)
    assert fitted["b"] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("n_points", [2, 3])
def test_two_or_three_points_fit_with_a_fixed_exponent(n_points):
    points = [
        {"images_per_class": n, "accuracy": acc, "std": 0.0, "n_evaluations": 5}
        for n, acc in list(zip((1, 4, 16), (0.6, 0.8, 0.9), strict=True))[:n_points]
    ]
    fitted = fit_curve(points)
    assert fitted["c"] == DEFAULT_C
    assert 0 <= fitted["a"] <= 1 and 0 <= fitted["b"] <= 1


def test_fewer_than_two_points_give_no_curve():
    assert fit_curve([]) is None
    assert fit_curve([{"images_per_class": 3, "accuracy": 0.9, "n_evaluations": 5}]) is None


@pytest.mark.parametrize("seed", range(8))
def test_fit_stays_in_bounds_on_noisy_curves(seed):
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 3, 5, 8, 13, 20, 30][: rng.integers(2, 9)]
    points = [
        {
            "images_per_class": n,
            "accuracy": float(rng.uniform(0.0, 1.0)),
            "n_evaluations": int(rng.integers(1, 16)),
            "n_images": 40,
        }
        for n in sizes
    ]
    fitted = fit_curve(points)
    assert 0 <= fitted["a"] <= 1
    assert 0 <= fitted["b"] <= 1
    assert C_BOUNDS[0] <= fitted["c"] <= C_BOUNDS[1]
    accuracies = [p["accuracy"] for p in project(fitted, images_per_class=30)]
    assert all(0 <= acc <= 1 for acc in accuracies)


def test_flat_and_falling_curves_project_no_gain():
    flat = [{"images_per_class": n, "accuracy": 0.8, "n_evaluations": 15} for n in (1, 3, 10, 30)]
    fitted = fit_curve(flat)
    assert fitted["a"] == pytest.approx(0.2, abs=1e-3)
    assert fitted["b"] == pytest.approx(0.0, abs=1e-3)
    falling = [
        {"images_per_class": n, "accuracy": acc, "n_evaluations": 15}
        for n, acc in ((1, 0.9), (3, 0.85), (10, 0.8), (30, 0.75))
    ]
    fitted = fit_curve(falling)
    assert fitted["b"] == pytest.approx(0.0, abs=1e-3)  # b >= 0: more data never hurts


def test_perfect_scores_on_few_images_do_not_project_certainty():
    scores = ((1, 0.85), (2, 0.95), (3, 1.0), (5, 1.0), (8, 1.0), (13, 1.0))
    points = [
        {"images_per_class": n, "accuracy": acc, "n_evaluations": 15, "n_images": 30}
        for n, acc in scores
    ]
    fitted = fit_curve(points)
    assert fitted["a"] > 0.005
    assert project(fitted, images_per_class=16, factors=(10,))[0]["accuracy"] < 0.995
    # Read literally (no image count to smooth with), 30/30 means zero error: 100% forever.
    literal = fit_curve([{k: v for k, v in p.items() if k != "n_images"} for p in points])
    assert project(literal, images_per_class=16, factors=(10,))[0]["accuracy"] > 0.999


def test_projection_is_monotone_and_starts_from_the_given_count():
    fitted = {"a": 0.05, "b": 0.4, "c": 0.6, "form": curve.FORM}
    points = project(fitted, images_per_class=10, factors=(1, 2, 4, 10, 100))
    assert [p["images_per_class"] for p in points] == [10, 20, 40, 100, 1000]
    accuracies = [p["accuracy"] for p in points]
    assert accuracies == sorted(accuracies)
    assert accuracies[-1] <= 0.95
    assert [p["images_per_class"] for p in project(fitted, images_per_class=10)] == [20, 40, 100]
    # Clipped to [0, 1] even for a curve whose error exceeds 1 at small n.
    assert project({"a": 0.9, "b": 1.0, "c": 0.5}, images_per_class=1, factors=(1,)) == [
        {"images_per_class": 1, "accuracy": 0.0}
    ]


def test_images_needed_inverts_the_curve():
    fitted = {"a": 0.02, "b": 0.5, "c": 0.5, "form": curve.FORM}
    needed = images_needed(fitted, target=0.95)
    assert needed == pytest.approx((0.5 / 0.03) ** 2)
    assert 1 - curve._error(fitted, needed) == pytest.approx(0.95)
    assert images_needed(fitted, target=0.98) is None  # asymptote is exactly 98%
    assert images_needed(fitted, target=0.99) is None
    assert images_needed({"a": 0.01, "b": 0.0, "c": 0.5}, target=0.95) == 1.0


def test_advice_gives_a_count_for_a_reachable_target():
    fitted = {"a": 0.0, "b": 0.5, "c": 0.5, "form": curve.FORM}
    # 95% needs (0.5 / 0.05)^2 = 100 images per class: 90 more than 10.
    assert (
        advice(fitted, images_per_class=10, accuracy=0.91)
        == "About 90 more images per class should reach 95% accuracy."
    )
    # The target is the next level above the current accuracy: 80% for 75%.
    assert advice(fitted, images_per_class=5, accuracy=0.75) == (
        "About 2 more images per class should reach 80% accuracy."
    )


def test_advice_says_when_more_images_will_not_reach_the_next_level():
    fitted = {"a": 0.07, "b": 0.3, "c": 0.5, "form": curve.FORM}
    sentence = advice(fitted, images_per_class=20, accuracy=0.91)
    assert sentence.startswith("More images alone are unlikely to go past about 93%; to reach 95%")


def test_advice_when_already_accurate_or_without_a_curve():
    assert advice(None, images_per_class=50, accuracy=0.995) == (
        "Accuracy is already 99%; more images are unlikely to make a noticeable difference."
    )
    assert advice(None, images_per_class=1, accuracy=0.5).startswith("Add a few more images")


def test_a_perfect_score_on_few_images_is_not_called_accurate_already():
    # 20 of 20 right: the 95% lower bound is 0.05 ** (1 / 20) = 86%, far from "already 100%"
    assert advice(None, images_per_class=10, accuracy=1.0, n_images=20) == (
        "Cross-validation got 100% of 20 images right, but so few images only show that "
        "accuracy is likely above 86%; more images per class would tell how much higher it is."
    )
    # 243 of 245 right: the bound (97%) is evidence enough
    assert advice(None, images_per_class=120, accuracy=243 / 245, n_images=245).startswith(
        "Accuracy is already 99%")
    assert accuracy_floor(1.0, 20) == pytest.approx(0.05 ** (1 / 20))


def test_advice_flags_far_extrapolation():
    fitted = {"a": 0.0, "b": 0.5, "c": 0.5, "form": curve.FORM}
    sentence = advice(fitted, images_per_class=5, accuracy=0.9)  # 95% needs 100 per class
    assert sentence == (
        "Reaching 95% accuracy would take roughly 100 images per class, far beyond what was "
        "measured, so treat this as a rough guess."
    )


@pytest.mark.parametrize(
    ("value", "friendly"),
    [(0.3, 1), (7.2, 8), (12, 15), (48, 50), (51, 60), (190, 190), (230, 250), (1234, 1300)],
)
def test_friendly_count_rounds_up_to_round_numbers(value, friendly):
    assert friendly_count(value) == friendly


@pytest.mark.parametrize("labels", [[0, 0, 1], [0, 1, 1, 2, 2], [0, 0, 0, 0], []])
def test_no_curve_without_two_images_in_every_class(labels):
    fit_predict, calls = counting(lambda train, val: np.full((len(val), 3), 1 / 3))
    assert learning_curve(np.array(labels, dtype=int), fit_predict) == []
    assert calls == []
    summary = summarize(np.array(labels, dtype=int), fit_predict, accuracy=0.5)
    assert summary["points"] == [] and summary["projection"] == [] and summary["curve"] is None


def test_same_seed_same_curve_other_seed_other_draws():
    x, y = blobs(n_per_class=15, n_classes=3, spread=2.0, seed=3)
    fit_predict = centroid_fit_predict(x, y, 3)
    first = learning_curve(y, fit_predict, seed=4)
    assert learning_curve(y, fit_predict, seed=4) == first
    assert learning_curve(y, fit_predict, seed=5) != first


def test_real_classifier_improves_with_more_images():
    x, y = blobs(n_per_class=30, n_classes=3, dim=32, spread=2.5, seed=1)
    points = learning_curve(y, centroid_fit_predict(x, y, 3))
    assert points[-1]["images_per_class"] == 24
    assert points[-1]["accuracy"] > points[0]["accuracy"] + 0.1
    fitted = fit_curve(points)
    accuracies = [p["accuracy"] for p in project(fitted, images_per_class=30)]
    assert accuracies == sorted(accuracies)
    assert accuracies[0] >= points[-1]["accuracy"] - 0.05


@pytest.mark.parametrize("per_class", [10, 60, 200, 5000])
def test_number_of_fits_is_bounded(per_class):
    labels = np.repeat(np.arange(4), per_class)
    fit_predict, calls = counting(lambda train, val: np.full((len(val), 4), 0.25))
    points = learning_curve(labels, fit_predict)
    assert len(calls) <= MAX_FITS
    assert len(calls) == sum(p["n_evaluations"] for p in points)
    sizes = [p["images_per_class"] for p in points]
    assert sizes[0] == 1 and sizes[-1] == per_class * 4 // 5  # smallest and largest kept


def test_many_requested_sizes_are_thinned_to_the_budget():
    labels = np.repeat([0, 1], 100)
    fit_predict, calls = counting(lambda train, val: np.full((len(val), 2), 0.5))
    points = learning_curve(labels, fit_predict, sizes=range(1, 81), repeats=1)
    assert len(calls) <= MAX_FITS
    sizes = [p["images_per_class"] for p in points]
    assert sizes[0] == 1 and sizes[-1] == 80 and sizes == sorted(set(sizes))


def test_requested_sizes_beyond_the_folds_are_dropped():
    labels = np.repeat([0, 1], 10)
    fit_predict = power_law_fit_predict(labels, a=0.1, b=0.4, c=0.5, n_classes=2)
    points = learning_curve(labels, fit_predict, sizes=[4, 2, 9, 8, 50])
    assert [p["images_per_class"] for p in points] == [2, 4, 8]
    with pytest.raises(ValueError, match="sizes"):
        learning_curve(labels, fit_predict, sizes=[0, 2])


def test_bad_fit_predict_output_is_rejected():
    labels = np.repeat([0, 1], 5)
    with pytest.raises(ValueError, match="fit_predict must return"):
        learning_curve(labels, lambda train, val: np.zeros(len(val)))


def test_summary_projects_from_the_full_set_and_is_json():
    labels = np.concatenate([np.repeat(0, 12), np.repeat(1, 10)])  # smallest class: 10
    fit_predict = power_law_fit_predict(labels, a=0.05, b=0.4, c=0.5, n_classes=2)
    summary = summarize(labels, fit_predict, accuracy=0.85)
    json.dumps(summary)
    assert set(summary) == {"points", "projection", "curve", "advice"}
    assert summary["points"][-1]["images_per_class"] == 8  # 4/5 of 10
    assert [p["images_per_class"] for p in summary["projection"]] == [20, 40, 100]
    assert summary["advice"].endswith("should reach 90% accuracy.")


@pytest.mark.slow
def test_hymenoptera_lite2_projection_from_10_to_40_per_class(dataset_features):
    # Product criterion: trained on 10 images per class, the projection for 40 per class is
    # within 0.04 of the accuracy measured when training on 40 per class.
    x_train, y_train, names = dataset_features("hymenoptera", "train", "efficientnet_lite2")
    x_val, y_val, val_names = dataset_features("hymenoptera", "val", "efficientnet_lite2")
    assert names == val_names == ["ants", "bees"]

    def subset(rng, n):
        return np.concatenate(
            [rng.choice(np.flatnonzero(y_train == k), n, replace=False) for k in range(2)]
        )

    rows = subset(np.random.default_rng(0), 10)
    x, y = x_train[rows], y_train[rows]

    def fit_predict(train, val):
        return fit_logistic(x[train], y[train], n_classes=2, l2=3e-3).predict_proba(x[val])

    summary = summarize(y, fit_predict, accuracy=0.9)
    predicted = {p["images_per_class"]: p["accuracy"] for p in summary["projection"]}[40]

    rng = np.random.default_rng(1)
    measured = []
    for _ in range(5):
        big = subset(rng, 40)
        head = fit_logistic(x_train[big], y_train[big], n_classes=2, l2=3e-3)
        measured.append((head.predict_proba(x_val).argmax(axis=1) == y_val).mean())
    assert abs(predicted - np.mean(measured)) <= 0.04


def test_fit_predict_many_sees_every_draw_once_and_gives_the_same_curve():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    x = rng.standard_normal((60, 4)) + y[:, None]

    def fit_predict(train, val):
        means = np.stack([x[train][y[train] == k].mean(axis=0) for k in (0, 1)])
        d = -((x[val][:, None, :] - means[None]) ** 2).sum(axis=2)
        p = np.exp(d - d.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    batches: list[int] = []

    def fit_predict_many(pairs):
        batches.append(len(pairs))
        return [fit_predict(train, val) for train, val in pairs]

    one_by_one = learning_curve(y, fit_predict, seed=1)
    batched = learning_curve(y, None, seed=1, fit_predict_many=fit_predict_many)
    assert batched == one_by_one
    assert len(batches) == 1 and batches[0] == sum(p["n_evaluations"] for p in batched)
    with pytest.raises(ValueError):
        learning_curve(y, None)
