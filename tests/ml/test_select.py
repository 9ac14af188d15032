import json
import time

import numpy as np
import pytest

from app.ml.augment import DEFAULT_VIEWS
from app.ml.evaluate import L2_GRID, ONE_IMAGE_NOTE
from app.ml.select import (
    FEW_SHOT_CLASS,
    Candidate,
    candidates,
    default_candidate,
    fit_candidate,
    fit_candidate_many,
    fit_model,
)
from app.ml.unknown import unknown_mask
from tests.ml.conftest import CLASSIFICATION_KEYS, blobs

NAMES3 = ["ants", "bees", "wasps"]


def _views(x, *, n_views=3, jitter=0.05, seed=0):
    """Return (N, V, dim): view 0 is x, the others x plus a little noise (like augmentations)."""
    rng = np.random.default_rng(seed)
    out = np.repeat(x[:, None, :], n_views, axis=1)
    out[:, 1:] += jitter * rng.standard_normal(out[:, 1:].shape)
    return out.astype(np.float32)


def test_candidates_follow_the_data_size():
    backbones = ["mobilenet_v2", "efficientnet_lite2"]
    few = candidates(backbones, smallest_class=FEW_SHOT_CLASS - 1)
    assert {c.backbone for c in few} == {"efficientnet_lite2"}  # the best few-shot backbone
    assert {c.head for c in few} == {"logistic", "prototype"}
    many = candidates(backbones, smallest_class=FEW_SHOT_CLASS)
    assert {c.backbone for c in many} == set(backbones)
    assert {c.head for c in many} == {"logistic", "prototype"}
    assert sorted(c.l2 for c in many if c.head == "logistic" and c.backbone == "mobilenet_v2") == (
        sorted(L2_GRID)
    )
    assert default_candidate(["mobilenet_v2", "mobilenet_v2+efficientnet_lite2"]) == Candidate(
        "mobilenet_v2+efficientnet_lite2", "prototype"
    )
    assert default_candidate(["mobilenet_v2"]).backbone == "mobilenet_v2"


@pytest.mark.parametrize("head", ["logistic", "prototype"])
def test_fit_candidate_trains_on_every_view(head):
    x, y = blobs(n_per_class=10, n_classes=3)
    features = _views(x)
    l2 = None if head == "prototype" else 1e-2
    fitted = fit_candidate(Candidate("mobilenet_v2", head, l2), features, y, n_classes=3)
    assert fitted.kind == head
    np.testing.assert_allclose(fitted.mean, features.reshape(-1, 64).mean(axis=0, dtype=np.float64))
    assert (fitted.predict_proba(x).argmax(axis=1) == y).mean() >= 0.95
    with pytest.raises(ValueError, match="forest"):
        fit_candidate(Candidate("mobilenet_v2", "forest"), features, y, n_classes=3)
    with pytest.raises(ValueError, match="mlp"):
        fit_candidate(Candidate("mobilenet_v2", "mlp", 1e-3), features, y, n_classes=3)


@pytest.mark.parametrize("head", ["logistic", "prototype"])
def test_fit_candidate_many_equals_one_fit_per_row_set(head):
    x, y = blobs(n_per_class=12, n_classes=3)
    features = _views(x)
    candidate = Candidate("mobilenet_v2", head, None if head == "prototype" else 1e-2)
    rng = np.random.default_rng(5)
    row_sets = [np.sort(np.concatenate([rng.choice(np.flatnonzero(y == k), n, replace=False)
                                        for k in range(3)])) for n in (2, 5, 9)]
    many = fit_candidate_many(candidate, features, y, row_sets, n_classes=3)
    for rows, joint in zip(row_sets, many, strict=True):
        alone = fit_candidate(candidate, features[rows], y[rows], n_classes=3)
        np.testing.assert_allclose(joint.predict_proba(x), alone.predict_proba(x), atol=1e-4)
    assert fit_candidate_many(candidate, features, y, [], n_classes=3) == []


def test_fit_model_reports_nested_metrics_a_table_and_a_detector():
    x, y = blobs(n_per_class=12, n_classes=3, spread=1.0)
    features = {"mobilenet_v2": _views(x), "efficientnet_lite2": _views(x[:, ::-1].copy(), seed=1)}
    result = fit_model(features, y, NAMES3)
    metrics = result.metrics
    json.dumps(metrics)
    json.dumps(result.scores)
    json.dumps(result.unknown)
    assert CLASSIFICATION_KEYS | {"calibration_error", "backbone", "head", "selection"} == set(
        metrics
    )
    assert metrics["selection"] == "nested"
    assert (metrics["backbone"], metrics["head"]) == (
        result.candidate.backbone,
        result.candidate.head,
    )
    assert metrics["accuracy"] >= 0.95 and 0.0 <= metrics["calibration_error"] <= 1.0
    assert metrics["n_folds"] == 5 and metrics["n_images"] == 36
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == 36
    assert result.metrics_note is None
    rows = {(r["backbone"], r["head"], r["l2"]) for r in result.scores}
    assert ("mobilenet_v2", "prototype", None) in rows
    assert {("efficientnet_lite2", "logistic", l2) for l2 in L2_GRID} <= rows
    keys = {"backbone", "head", "l2", "cv_accuracy", "cv_log_loss"}
    assert all(set(row) == keys for row in result.scores)
    assert result.unknown["backbone"] == "efficientnet_lite2"
    head_features = features[result.candidate.backbone][:, 0]
    assert (result.head.predict_proba(head_features).argmax(axis=1) == y).all()


def test_augmented_views_of_validation_images_never_reach_training():
    # Random labels on 512-d noise: every view of an image is nearly the same point, so if any
    # view of a validation image were trained on, it would be recognised (accuracy near 1).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 512))
    y = rng.permutation(np.repeat([0, 1], 30))
    result = fit_model({"efficientnet_lite2": _views(x, jitter=0.01)}, y, ["a", "b"])
    assert result.metrics["accuracy"] < 0.72
    assert max(row["cv_accuracy"] for row in result.scores) < 0.75


def test_validation_scores_view_zero_only():
    # The label is written into the augmented views only; view 0 is pure noise. Scoring any
    # augmented view would find the label, scoring view 0 cannot.
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 30)
    features = rng.standard_normal((60, 3, 128))
    features[:, 1:, 0] += 20.0 * (2 * y[:, None] - 1)
    result = fit_model({"efficientnet_lite2": features.astype(np.float32)}, y, ["a", "b"])
    assert result.metrics["accuracy"] < 0.72


def test_near_ties_go_to_the_backbone_that_transfers_best_from_few_images():
    x, y = blobs(n_per_class=FEW_SHOT_CLASS, n_classes=2, spread=0.5)
    same = _views(x)
    features = {"mobilenet_v2": same, "mobilenet_v2+efficientnet_lite2": same.copy(),
                "efficientnet_lite2": same.copy()}
    result = fit_model(features, y, ["a", "b"])
    assert result.candidate.backbone == "efficientnet_lite2"
    del features["efficientnet_lite2"]
    result = fit_model(features, y, ["a", "b"])
    assert result.candidate.backbone == "mobilenet_v2+efficientnet_lite2"


def test_a_clearly_better_cheaper_backbone_still_wins():
    x, y = blobs(n_per_class=FEW_SHOT_CLASS, n_classes=2, spread=0.5)
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    result = fit_model({"mobilenet_v2": _views(x), "efficientnet_lite2": _views(noise)}, y,
                         ["a", "b"])
    assert result.candidate.backbone == "mobilenet_v2"


def test_the_detector_uses_the_registry_choice_when_it_is_a_candidate():
    x, y = blobs(n_per_class=FEW_SHOT_CLASS, n_classes=2, spread=0.5)
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    both = fit_model({"mobilenet_v2": _views(x), "efficientnet_lite2": _views(noise)}, y,
                     ["a", "b"])
    assert both.candidate.backbone == "mobilenet_v2"
    assert both.unknown["backbone"] == "efficientnet_lite2"
    alone = fit_model({"mobilenet_v2": _views(x)}, y, ["a", "b"])
    assert alone.unknown["backbone"] == "mobilenet_v2"


def test_a_class_with_one_image_gives_the_default_candidate_and_no_metrics():
    x, y = blobs(n_per_class=4, n_classes=2)
    x, y = np.vstack([x, x[:1] + 5.0]), np.append(y, 2)
    result = fit_model({"mobilenet_v2": _views(x), "efficientnet_lite2": _views(x)}, y, NAMES3)
    assert result.metrics is None and result.metrics_note == ONE_IMAGE_NOTE
    assert result.candidate == Candidate("efficientnet_lite2", "prototype")
    assert result.scores == [] and result.unknown is None
    assert result.head.predict_proba(x[-1:]).argmax() == 2


def test_two_images_per_class_use_two_outer_folds_and_defaults_inside():
    x, y = blobs(n_per_class=2, n_classes=2)
    result = fit_model({"efficientnet_lite2": _views(x)}, y, ["a", "b"])
    assert result.metrics["n_folds"] == 2
    assert result.metrics["method"] == "nested stratified 2-fold cross-validation"


def test_selection_is_deterministic_for_a_seed():
    x, y = blobs(n_per_class=10, n_classes=3, spread=1.5)
    features = {"mobilenet_v2": _views(x)}
    a = fit_model(features, y, NAMES3, seed=2)
    b = fit_model(features, y, NAMES3, seed=2)
    assert a.candidate == b.candidate and a.metrics == b.metrics and a.scores == b.scores
    np.testing.assert_array_equal(a.head.predict_proba(x), b.head.predict_proba(x))


@pytest.mark.parametrize(
    ("features", "labels", "names", "message"),
    [
        ({}, [0, 1], ["a", "b"], "at least one backbone"),
        ({"mobilenet_v2": np.zeros((2, 4))}, [0, 1], ["a", "b"], "shape"),
        ({"mobilenet_v2": np.zeros((3, 1, 4))}, [0, 1], ["a", "b"], "shape"),
        ({"mobilenet_v2": np.zeros((2, 1, 4))}, [0, 0], ["a", "b"], "empty: b"),
        ({"mobilenet_v2": np.zeros((2, 1, 4))}, [0, 0], ["a"], "at least 2"),
        ({"mobilenet_v2": np.full((2, 1, 4), np.nan)}, [0, 1], ["a", "b"], "NaN"),
    ],
)
def test_bad_inputs_are_rejected(features, labels, names, message):
    with pytest.raises(ValueError, match=message):
        fit_model(features, np.array(labels), names)


# --- real photos (slow) ----------------------------------------------------------------------

# The candidate set here is the zoo's MobileNetV2 + Lite2 corner: the composite and both of its
# parts cost two networks' extraction, a third of what all five candidates would.
REAL_BACKBONES = ["mobilenet_v2", "efficientnet_lite2", "mobilenet_v2+efficientnet_lite2"]


def _fit_on(dataset_views, name):
    """Fit on a dataset's train split as the service does; return it with val and fit seconds."""
    train, y_train, names = dataset_views(name, "train", REAL_BACKBONES, n_views=DEFAULT_VIEWS + 1)
    val, y_val, _ = dataset_views(name, "val", REAL_BACKBONES)
    started = time.perf_counter()
    result = fit_model(train, y_train, names)
    seconds = time.perf_counter() - started
    return train, y_train, val, y_val, names, result, seconds


@pytest.fixture(scope="module")
def hymenoptera(dataset_views):
    return _fit_on(dataset_views, "hymenoptera")


def _val_accuracy(result, val, y_val):
    probs = result.head.predict_proba(val[result.candidate.backbone][:, 0])
    return float((probs.argmax(axis=1) == y_val).mean())


@pytest.mark.slow
def test_hymenoptera_all_images_is_accurate_and_honest(hymenoptera):
    _, _, val, y_val, _, result, seconds = hymenoptera
    accuracy = _val_accuracy(result, val, y_val)
    report = (f"{result.candidate} val {accuracy:.3f} nested {result.metrics['accuracy']:.3f} "
              f"fit {seconds:.1f}s")
    assert accuracy >= 0.96, report
    assert abs(result.metrics["accuracy"] - accuracy) <= 0.03, report
    # The choice docs/EXPERIMENTS.md reports for the default candidates ("Selection").
    assert result.candidate == Candidate("efficientnet_lite2", "logistic", 3e-3), report


@pytest.mark.slow
def test_hymenoptera_five_images_per_class(hymenoptera):
    train, y_train, val, y_val, names, _, _ = hymenoptera
    accuracies = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rows = np.concatenate(
            [rng.choice(np.flatnonzero(y_train == c), 5, replace=False) for c in range(2)]
        )
        result = fit_model({b: f[rows] for b, f in train.items()}, y_train[rows], names)
        accuracies.append(_val_accuracy(result, val, y_val))
    assert np.mean(accuracies) >= 0.93, accuracies


@pytest.mark.slow
def test_hymenoptera_model_calls_flowers_unknown(hymenoptera, dataset_views):
    _, _, val, _, _, result, _ = hymenoptera
    detector = result.unknown
    backbone = detector["backbone"]
    flowers = np.concatenate(
        [dataset_views("flower_photos_small", split, [backbone])[0][backbone][:, 0]
         for split in ("train", "val")]
    )
    own = unknown_mask(detector, val[backbone][:, 0]).mean()
    foreign = unknown_mask(detector, flowers).mean()
    report = f"unknown ({backbone}): own val {own:.3f}, flowers {foreign:.3f}"
    assert backbone == "efficientnet_lite2", report  # the registry's unknown detector
    assert own <= 0.10, report
    assert foreign >= 0.70, report


@pytest.mark.slow
def test_flowers_all_images(dataset_views):
    _, _, val, y_val, _, result, seconds = _fit_on(dataset_views, "flower_photos_small")
    accuracy = _val_accuracy(result, val, y_val)
    report = (f"{result.candidate} val {accuracy:.3f} nested {result.metrics['accuracy']:.3f} "
              f"fit {seconds:.1f}s")
    # Below the 0.92 goal: on this split every candidate scores ~0.80 in cross-validation and
    # 0.82-0.90 on val (one val image is 0.02), see docs/EXPERIMENTS.md ("Selection").
    assert accuracy >= 0.86, report
    assert result.metrics["accuracy"] >= 0.75, report
    chosen = Candidate("mobilenet_v2+efficientnet_lite2", "logistic", 1e-3)
    assert result.candidate == chosen, report
