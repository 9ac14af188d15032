import io

import numpy as np
import pytest
import torch

from app.ml.heads import FEATURE_SCALE, LogisticHead, fit_logistic, fit_logistic_many, normalise
from app.ml.predict import predict_proba, top_predictions
from tests.ml.conftest import blobs


def test_normalise_centres_and_gives_unit_rows():
    x = np.array([[4.0, 5.0], [1.0, 1.0], [2.0, 2.0]])
    z = normalise(x, np.array([1.0, 1.0]))
    np.testing.assert_allclose(z[0], [0.6, 0.8])
    np.testing.assert_array_equal(z[1], [0.0, 0.0])  # a row equal to the mean stays zero, no NaN
    np.testing.assert_allclose(np.linalg.norm(z[[0, 2]], axis=1), 1.0)


def test_fit_separates_blobs_and_probabilities_sum_to_one():
    x, y = blobs(n_per_class=30, n_classes=3)
    head = fit_logistic(x, y, n_classes=3, l2=1e-2)
    probs = head.predict_proba(x)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == y).mean() == 1.0
    assert head.scale == FEATURE_SCALE
    np.testing.assert_allclose(head.mean, x.mean(axis=0, dtype=np.float64))


def test_fit_is_deterministic():
    x, y = blobs(n_per_class=20, n_classes=2, seed=3)
    a = fit_logistic(x, y, n_classes=2, l2=1e-3)
    b = fit_logistic(x, y, n_classes=2, l2=1e-3)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)


def test_stronger_l2_shrinks_weights():
    x, y = blobs(n_per_class=20, n_classes=2, spread=1.0)
    heads = [fit_logistic(x, y, n_classes=2, l2=l2) for l2 in (1e-3, 1e-1, 10)]
    norms = [np.linalg.norm(head.weight) for head in heads]
    assert norms[0] > norms[1] > norms[2]


def test_bias_is_not_penalised():
    # With W crushed to ~0 the bias alone must still learn the class frequencies (3:1).
    x, y = blobs(n_per_class=40, n_classes=2)
    y = np.where(np.arange(len(y)) % 4 == 0, 1, 0)
    head = fit_logistic(x, y, n_classes=2, l2=1e4)
    np.testing.assert_allclose(head.predict_proba(x).mean(axis=0), [0.75, 0.25], atol=0.01)


def test_class_absent_from_training_gets_low_probability():
    x, y = blobs(n_per_class=10, n_classes=2)
    head = fit_logistic(x, y, n_classes=3, l2=1e-2)
    assert head.weight.shape == (3, x.shape[1])
    assert head.predict_proba(x)[:, 2].max() < 0.05


def test_fit_many_matches_separate_fits():
    x, y = blobs(n_per_class=25, n_classes=3, spread=1.5, seed=1)
    rng = np.random.default_rng(0)
    masks = rng.random((3, len(y))) < 0.7
    problems = [(0, 1e-2), (1, 1e-2), (2, 1e-2)]
    joint = fit_logistic_many(x, y, masks, problems, n_classes=3)
    for (fold, l2), head in zip(problems, joint):
        alone = fit_logistic(x[masks[fold]], y[masks[fold]], n_classes=3, l2=l2)
        np.testing.assert_allclose(head.mean, alone.mean)
        np.testing.assert_allclose(head.predict_proba(x), alone.predict_proba(x), atol=2e-3)


def test_fit_many_without_row_space_shortcut_agrees():
    # More rows than dimensions skips the row-space basis; both paths must solve the same problem.
    x, y = blobs(n_per_class=40, n_classes=2, dim=16, spread=2.0)
    wide = fit_logistic(x[:10], y[:10], n_classes=2, l2=1e-2)  # 10 rows < 16 dims: basis path
    tall = fit_logistic(x, y, n_classes=2, l2=1e-2)
    assert wide.weight.shape == tall.weight.shape == (2, 16)
    assert (tall.predict_proba(x).argmax(axis=1) == y).mean() > 0.9


@pytest.mark.parametrize(
    ("features", "labels", "n_classes", "l2"),
    [
        (np.zeros((0, 4)), np.zeros(0, dtype=int), 2, 1e-2),
        (np.ones((3, 4)), np.array([0, 1]), 2, 1e-2),
        (np.ones((2, 4)), np.array([0, 2]), 2, 1e-2),
        (np.ones((2, 4)), np.array([0, 1]), 1, 1e-2),
        (np.ones((2, 4)), np.array([0, 1]), 2, 0.0),
        (np.full((2, 4), np.nan), np.array([0, 1]), 2, 1e-2),
        (np.ones((2, 4)), np.array([0.0, 1.0]), 2, 1e-2),
    ],
)
def test_fit_rejects_bad_input(features, labels, n_classes, l2):
    with pytest.raises(ValueError):
        fit_logistic(features, labels, n_classes=n_classes, l2=l2)


def test_state_round_trips_through_torch_weights_only():
    x, y = blobs(n_per_class=10, n_classes=2)
    head = fit_logistic(x, y, n_classes=2, l2=1e-2)
    buffer = io.BytesIO()
    torch.save(head.to_state(), buffer)
    buffer.seek(0)
    restored = LogisticHead.from_state(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(restored.predict_proba(x), head.predict_proba(x))
    assert restored.scale == head.scale


def test_from_state_rejects_inconsistent_shapes():
    state = LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(3), 10.0).to_state()
    with pytest.raises(ValueError, match="inconsistent"):
        LogisticHead.from_state(state)
    with pytest.raises(ValueError):
        LogisticHead.from_state({"mean": [0.0]})


def test_predict_rejects_wrong_dimension():
    head = LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(2), 10.0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        predict_proba(head, np.zeros((1, 5)))


def test_top_predictions_sorts_every_label_by_probability():
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    ranked = top_predictions(probs, ["ant", "bee", "wasp"])
    assert ranked[0] == [("bee", 0.5), ("wasp", 0.3), ("ant", 0.2)]
    assert ranked[1] == [("ant", 0.4), ("bee", 0.4), ("wasp", 0.2)]  # ties keep label order
    assert all(isinstance(p, float) for _, p in ranked[0])
    with pytest.raises(ValueError):
        top_predictions(probs, ["ant", "bee"])
