import json

import numpy as np
import pytest

from app.ml.evaluate import calibration_error, classification_metrics, stratified_folds
from tests.ml.conftest import CLASSIFICATION_KEYS

NAMES3 = ["ants", "bees", "wasps"]


def test_stratified_folds_partition_the_rows_and_keep_class_shares():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    rows = np.arange(5, 60)  # a subset, as an outer training part is
    folds = stratified_folds(labels, rows, n_splits=5, seed=0)
    assert len(folds) == 5
    validation = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(validation), rows)  # every row validated exactly once
    for train, val in folds:
        assert set(train) | set(val) == set(rows) and not set(train) & set(val)
        # Indices point into `labels`, not into `rows`; each class is split 1 : 4.
        counts = np.bincount(labels[val], minlength=3)
        np.testing.assert_array_equal(counts, np.bincount(labels[rows], minlength=3) // 5)
    again = stratified_folds(labels, rows, n_splits=5, seed=0)
    other = stratified_folds(labels, rows, n_splits=5, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_metrics_of_known_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    # Predicted classes 0, 0, 1, 1, 1, 0: four of six right.
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
         [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.2, 0.3]]
    )
    metrics = classification_metrics(labels, probs, NAMES3, n_folds=2)
    json.dumps(metrics)  # plain Python types only
    assert set(metrics) == CLASSIFICATION_KEYS
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    truth = probs[np.arange(6), labels]
    assert metrics["log_loss"] == pytest.approx(-np.log(truth).mean())
    assert metrics["confusion_matrix"] == {
        "labels": NAMES3,
        "matrix": [[2, 1, 0], [0, 2, 0], [1, 0, 0]],
    }
    ants, bees, wasps = metrics["per_class"]
    assert ants == {"label": "ants", "precision": pytest.approx(2 / 3),
                    "recall": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3), "support": 3}
    assert bees["precision"] == pytest.approx(2 / 3) and bees["recall"] == 1.0
    assert wasps["precision"] == 0.0 and wasps["f1"] == 0.0 and wasps["support"] == 1
    assert (metrics["n_images"], metrics["n_folds"]) == (6, 2)
    assert metrics["method"] == "nested stratified 2-fold cross-validation"


def test_calibration_error_of_known_cases():
    labels = np.array([0, 0, 1, 1])
    perfect = np.eye(2)[labels]
    assert calibration_error(labels, perfect) == 0.0
    # Always 0.8 confident, right half the time: |0.5 - 0.8| = 0.3.
    probs = np.array([[0.8, 0.2], [0.2, 0.8], [0.2, 0.8], [0.8, 0.2]])
    assert calibration_error(labels, probs) == pytest.approx(0.3)
    # Two bins: half the images at 0.6 (all right, gap 0.4), half at 0.9 (all wrong, gap 0.9).
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9]])
    assert calibration_error(np.array([0, 0, 0, 0]), probs) == pytest.approx(0.65)
