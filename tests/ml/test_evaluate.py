import json

import numpy as np
import pytest

from app.ml import evaluate
from app.ml.evaluate import L2_GRID, ONE_IMAGE_NOTE, train_head
from app.ml.heads import fit_logistic
from tests.ml.conftest import CLASSIFICATION_KEYS, blobs

NAMES3 = ["ants", "bees", "wasps"]


def test_separable_blobs_score_near_perfect():
    x, y = blobs(n_per_class=20, n_classes=3)
    result = train_head(x, y, NAMES3)
    assert result.metrics is not None and result.metrics_note is None
    assert result.metrics["accuracy"] >= 0.98
    assert result.metrics["balanced_accuracy"] >= 0.98
    assert result.l2 in L2_GRID
    assert (result.head.predict_proba(x).argmax(axis=1) == y).all()


def test_noise_with_random_labels_scores_near_chance():
    # 1280-d noise, 100 images: any leak of validation images into fitting or l2 selection
    # would show up as accuracy far above 0.5, because the training data is perfectly separable.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((100, 1280)).astype(np.float32)
    y = rng.permutation(np.repeat([0, 1], 50))
    result = train_head(x, y, ["a", "b"])
    assert result.metrics["accuracy"] < 0.7
    assert (result.head.predict_proba(x).argmax(axis=1) == y).mean() == 1.0  # it did memorise


def test_metrics_have_the_documented_shape_and_are_json():
    x, y = blobs(n_per_class=12, n_classes=3, spread=1.2, seed=2)
    y[:3] = 2  # uneven classes: 11 / 10 / 15 or so
    metrics = train_head(x, y, NAMES3).metrics
    json.dumps(metrics)  # plain Python types only
    assert set(metrics) == CLASSIFICATION_KEYS
    counts = np.bincount(y, minlength=3)
    assert metrics["n_images"] == len(y)
    assert metrics["n_folds"] == min(5, counts.min())
    assert metrics["method"] == f"nested stratified {metrics['n_folds']}-fold cross-validation"
    assert [c["label"] for c in metrics["per_class"]] == NAMES3
    assert [c["support"] for c in metrics["per_class"]] == counts.tolist()
    for entry in metrics["per_class"]:
        assert 0.0 <= entry["precision"] <= 1.0 and 0.0 <= entry["f1"] <= 1.0
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert metrics["confusion_matrix"]["labels"] == NAMES3
    # Every image is predicted exactly once: rows are the true classes.
    assert matrix.sum() == len(y)
    np.testing.assert_array_equal(matrix.sum(axis=1), counts)
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / len(y))
    assert metrics["log_loss"] > 0


def test_a_class_with_one_image_gives_no_metrics_and_says_why():
    x, y = blobs(n_per_class=5, n_classes=2)
    x = np.vstack([x, x[:1] + 5.0])
    y = np.append(y, 2)
    result = train_head(x, y, NAMES3)
    assert result.metrics is None
    assert result.metrics_note == ONE_IMAGE_NOTE
    assert result.l2 == sorted(L2_GRID)[(len(L2_GRID) - 1) // 2]
    assert result.head.predict_proba(x[-1:]).argmax() == 2


def test_two_images_per_class_uses_two_folds_and_the_default_l2_inside():
    x, y = blobs(n_per_class=2, n_classes=2)
    result = train_head(x, y, ["a", "b"])
    assert result.metrics["n_folds"] == 2
    assert result.metrics["n_images"] == 4
    # No inner split is possible on 1 image per class, so the final head's l2 is picked by the
    # 2-fold CV on all data and must come from the grid.
    assert result.l2 in L2_GRID


def test_final_head_is_fit_logistic_on_all_data():
    x, y = blobs(n_per_class=10, n_classes=2, spread=1.0)
    result = train_head(x, y, ["a", "b"])
    direct = fit_logistic(x, y, n_classes=2, l2=result.l2)
    np.testing.assert_array_equal(result.head.weight, direct.weight)


def test_training_is_deterministic_for_a_seed():
    x, y = blobs(n_per_class=15, n_classes=3, spread=1.5)
    a = train_head(x, y, NAMES3, seed=3)
    b = train_head(x, y, NAMES3, seed=3)
    assert a.metrics == b.metrics and a.l2 == b.l2
    np.testing.assert_array_equal(a.head.weight, b.head.weight)


def test_l2_is_chosen_by_cross_validation(monkeypatch):
    # With a score that prefers the largest l2, selection must follow it (and not the default).
    monkeypatch.setattr(evaluate, "_score", lambda labels, probs, n_classes: 0.0)
    x, y = blobs(n_per_class=10, n_classes=2)
    assert train_head(x, y, ["a", "b"], l2_grid=(1e-3, 1e-2, 1e-1)).l2 == 1e-1  # ties -> largest


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        ([0, 0, 0], ["only"], "at least 2 categories"),
        ([0, 0, 0], ["a", "b"], "empty: b"),
        ([0, 1, 2], ["a", "b"], r"\[0, 2\)"),
    ],
)
def test_bad_inputs_are_rejected(labels, names, message):
    x = np.random.default_rng(0).random((len(labels), 8))
    with pytest.raises(ValueError, match=message):
        train_head(x, np.array(labels), names)


@pytest.mark.slow
def test_hymenoptera_lite2_accuracy_and_honest_cv(dataset_features):
    x_train, y_train, names = dataset_features("hymenoptera", "train", "efficientnet_lite2")
    x_val, y_val, val_names = dataset_features("hymenoptera", "val", "efficientnet_lite2")
    assert names == val_names == ["ants", "bees"]
    result = train_head(x_train, y_train, names)
    val_accuracy = (result.head.predict_proba(x_val).argmax(axis=1) == y_val).mean()
    assert val_accuracy >= 0.93
    assert abs(result.metrics["accuracy"] - val_accuracy) <= 0.05
