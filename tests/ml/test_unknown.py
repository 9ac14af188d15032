import json

import numpy as np
import pytest

from app.ml.evaluate import stratified_folds
from app.ml.unknown import QUANTILE, calibrate_unknown, unknown_mask, unknown_scores
from tests.ml.conftest import blobs


def _detector(x, y, n_classes, **kwargs):
    folds = stratified_folds(y, np.arange(len(y)), n_splits=5, seed=0)
    return calibrate_unknown(
        x, y, folds=folds, n_classes=n_classes, backbone="efficientnet_lite2", **kwargs
    )


def test_images_unlike_every_category_are_unknown():
    x, y = blobs(n_per_class=40, n_classes=3, spread=0.3)
    detector = _detector(x, y, 3)
    json.dumps(detector)
    assert detector["method"] == "max_prototype_cosine"
    assert detector["backbone"] == "efficientnet_lite2"
    assert detector["quantile"] == QUANTILE
    assert np.shape(detector["prototypes"]) == (3, 64)
    # Fresh images of the known categories are mostly known; another cluster is unknown.
    fresh, _ = blobs(n_per_class=40, n_classes=3, spread=0.3)  # same centres, new noise
    assert unknown_mask(detector, fresh).mean() <= 0.15
    rng = np.random.default_rng(9)
    others = rng.uniform(0.0, 2.0, size=(1, 64)) + 0.3 * rng.standard_normal((50, 64))
    assert unknown_mask(detector, others).mean() >= 0.9


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_threshold_is_the_quantile_of_out_of_fold_scores():
    x, y = blobs(n_per_class=50, n_classes=2, spread=1.0)
    detector = _detector(x, y, 2, quantile=0.1)
    # By hand: each image's best cosine to the class directions of the folds it was not in.
    out_of_fold = np.empty(len(y))
    for train, val in stratified_folds(y, np.arange(len(y)), n_splits=5, seed=0):
        directions = _unit(np.stack([_unit(x[train][y[train] == c]).mean(axis=0) for c in (0, 1)]))
        out_of_fold[val] = (_unit(x[val]) @ directions.T).max(axis=1)
    assert detector["threshold"] == pytest.approx(np.quantile(out_of_fold, 0.1))
    # In fold (scored against prototypes that include them) some, but at most 10 %, fall below.
    flagged = unknown_mask(detector, x).mean()
    assert 0.0 < flagged <= 0.1
    scores = unknown_scores(detector, x)
    assert scores.shape == (100,) and (scores <= 1.0 + 1e-9).all()


def test_no_folds_means_no_detector_and_bad_input_is_rejected():
    x, y = blobs(n_per_class=5, n_classes=2)
    assert calibrate_unknown(x, y, folds=[], n_classes=2, backbone="b") is None
    with pytest.raises(ValueError):
        _detector(x, y, 2, quantile=1.5)
    detector = _detector(x, y, 2)
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        unknown_mask(detector, x[:, :5])
    with pytest.raises(ValueError, match="method"):
        unknown_mask({**detector, "method": "magic"}, x)
    with pytest.raises(ValueError, match="once"):
        calibrate_unknown(x, y, folds=[(np.arange(5), np.arange(5, 8))], n_classes=2, backbone="b")
