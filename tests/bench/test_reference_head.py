"""The benchmark's `baseline_lr` head (bench/fewshot/reference_head.py) does what it claims."""

import numpy as np
import pytest

from app.ml.evaluate import L2_GRID, ONE_IMAGE_NOTE
from bench.fewshot.reference_head import train_head
from tests.ml.conftest import blobs

NAMES3 = ["ants", "bees", "wasps"]


def test_separable_blobs_score_near_perfect():
    x, y = blobs(n_per_class=20, n_classes=3)
    result = train_head(x, y, NAMES3)
    assert result.metrics is not None and result.metrics_note is None
    assert result.metrics["accuracy"] >= 0.98
    assert result.metrics["n_folds"] == 5 and result.metrics["n_images"] == 60
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


def test_l2_is_chosen_by_cross_validated_log_loss():
    # Clean clusters reward confident (weakly regularised) heads; random labels reward heads
    # that stay near 1/2, the strongest l2 on offer.
    grid = (1e-3, 1e2)
    x, y = blobs(n_per_class=15, n_classes=2, spread=0.3)
    assert train_head(x, y, ["a", "b"], l2_grid=grid).l2 == 1e-3
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((40, 64)).astype(np.float32)
    random_labels = rng.permutation(np.repeat([0, 1], 20))
    assert train_head(noise, random_labels, ["a", "b"], l2_grid=grid).l2 == 1e2


def test_a_class_with_one_image_gives_no_metrics_and_says_why():
    x, y = blobs(n_per_class=5, n_classes=2)
    x = np.vstack([x, x[:1] + 5.0])
    y = np.append(y, 2)
    result = train_head(x, y, NAMES3)
    assert result.metrics is None and result.metrics_note == ONE_IMAGE_NOTE
    assert result.l2 == sorted(L2_GRID)[(len(L2_GRID) - 1) // 2]
    assert result.head.predict_proba(x[-1:]).argmax() == 2


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
