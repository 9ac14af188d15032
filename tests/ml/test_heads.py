import io

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from app.ml.heads import (
    DEFAULT_TEMPERATURE,
    FEATURE_SCALE,
    LogisticHead,
    PrototypeHead,
    fit_logistic,
    fit_logistic_many,
    fit_prototype,
    head_from_state,
    normalise,
)
from app.ml.predict import top_predictions
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


def _sklearn_reference(x, y, *, n_classes, l2):
    """Return (weight, bias) of scikit-learn's multinomial logistic regression on the same
    objective: mean cross-entropy + l2/2 ||W||^2 (bias free) on FEATURE_SCALE * normalise(x)."""
    z = FEATURE_SCALE * normalise(x, x.astype(np.float64).mean(axis=0))
    # sklearn minimises C * sum(cross-entropy) + 1/2 ||W||^2, the same optimum for C = 1/(n l2).
    reference = LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10, max_iter=10_000)
    reference.fit(z, y)
    assert reference.coef_.shape == (n_classes, x.shape[1])  # multinomial, every class present
    return reference.coef_, reference.intercept_


def _assert_matches_reference(head, x, y, *, n_classes, l2):
    weight, bias = _sklearn_reference(x, y, n_classes=n_classes, l2=l2)
    np.testing.assert_allclose(head.weight, weight, atol=2e-3 * np.abs(weight).max())
    # Softmax ignores a shift shared by every bias; both solvers keep the sum at zero.
    np.testing.assert_allclose(head.bias - head.bias.mean(), bias - bias.mean(), atol=3e-3)
    z = FEATURE_SCALE * normalise(x, head.mean)
    logits = z @ weight.T + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(head.predict_proba(x), expected, atol=1e-4)


@pytest.mark.parametrize(("n_per_class", "l2"), [(8, 1e-2), (30, 1e-3), (30, 3e-2)])
def test_fit_logistic_solves_the_documented_objective(n_per_class, l2):
    # 8 per class x 3 classes < 64 dims runs the row-space shortcut, 30 per class does not.
    x, y = blobs(n_per_class=n_per_class, n_classes=3, spread=1.5, seed=1)
    head = fit_logistic(x, y, n_classes=3, l2=l2)
    _assert_matches_reference(head, x, y, n_classes=3, l2=l2)


def test_fit_logistic_many_solves_each_problem_on_its_own_rows():
    x, y = blobs(n_per_class=25, n_classes=3, spread=1.5, seed=1)
    masks = np.random.default_rng(0).random((3, len(y))) < 0.7
    problems = [(0, 1e-2), (1, 1e-2), (2, 3e-3), (0, 3e-2)]
    joint = fit_logistic_many(x, y, masks, problems, n_classes=3)
    for (fold, l2), head in zip(problems, joint, strict=True):
        rows = masks[fold]
        np.testing.assert_allclose(head.mean, x[rows].mean(axis=0, dtype=np.float64))
        _assert_matches_reference(head, x[rows], y[rows], n_classes=3, l2=l2)


def test_fit_with_and_without_row_space_shortcut_agree_on_the_same_rows():
    # The same 20 rows in 32 dimensions: alone they take the row-space basis (20 < 32); as a mask
    # over 60 rows they do not (60 >= 32). Both must solve the same problem.
    x, y = blobs(n_per_class=20, n_classes=3, dim=32, spread=2.0)
    rows = np.zeros(len(y), dtype=bool)
    rows[np.concatenate([np.flatnonzero(y == c)[:7] for c in range(3)])] = True
    shortcut = fit_logistic(x[rows], y[rows], n_classes=3, l2=1e-2)
    direct = fit_logistic_many(x, y, rows[None], [(0, 1e-2)], n_classes=3)[0]
    np.testing.assert_allclose(shortcut.mean, direct.mean)
    np.testing.assert_allclose(shortcut.weight, direct.weight, atol=1e-3)
    np.testing.assert_allclose(shortcut.predict_proba(x), direct.predict_proba(x), atol=5e-4)


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


def _through_torch(state):
    """Return state after torch.save and torch.load(weights_only=True), as an artifact goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trips_through_torch_weights_only():
    x, y = blobs(n_per_class=10, n_classes=2)
    head = fit_logistic(x, y, n_classes=2, l2=1e-2)
    restored = LogisticHead.from_state(_through_torch(head.to_state()))
    np.testing.assert_array_equal(restored.predict_proba(x), head.predict_proba(x))
    assert restored.scale == head.scale


def test_from_state_rejects_inconsistent_shapes():
    state = LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(2), 10.0).to_state()
    state["bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="inconsistent"):
        LogisticHead.from_state(state)
    with pytest.raises(ValueError, match="not a saved LogisticHead"):
        LogisticHead.from_state({"mean": [0.0]})
    with pytest.raises(ValueError, match="inconsistent"):
        LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(3), 10.0)


def test_predict_rejects_wrong_dimension():
    head = LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(2), 10.0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        head.predict_proba(np.zeros((1, 5)))


def test_top_predictions_sorts_every_label_by_probability():
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    ranked = top_predictions(probs, ["ant", "bee", "wasp"])
    assert ranked[0] == [("bee", 0.5), ("wasp", 0.3), ("ant", 0.2)]
    assert ranked[1] == [("ant", 0.4), ("bee", 0.4), ("wasp", 0.2)]  # ties keep label order
    assert all(isinstance(p, float) for _, p in ranked[0])
    with pytest.raises(ValueError):
        top_predictions(probs, ["ant", "bee"])


# --- prototype head ---------------------------------------------------------------------------

def _brute_force_loo_sims(x, y, groups, n_classes):
    """Cosine similarities of each row to the prototypes with its own image left out."""
    z = normalise(x, x.astype(np.float64).mean(axis=0))
    sims = np.empty((len(y), n_classes))
    for i in range(len(y)):
        for c in range(n_classes):
            keep = (y == c) & ((groups != groups[i]) if c == y[i] else True)
            proto = z[keep].sum(axis=0)
            sims[i, c] = z[i] @ proto / np.linalg.norm(proto)
    return sims


def test_prototype_head_separates_blobs_with_a_fitted_temperature():
    x, y = blobs(n_per_class=12, n_classes=3, spread=1.5)
    head = fit_prototype(x, y, n_classes=3)
    probs = head.predict_proba(x)
    assert head.kind == "prototype" and head.prototypes.shape == (3, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == y).mean() >= 0.95
    np.testing.assert_allclose(np.linalg.norm(head.prototypes, axis=1), 1.0)
    assert head.temperature != DEFAULT_TEMPERATURE


def test_temperature_minimises_the_leave_one_image_out_log_loss():
    x, y = blobs(n_per_class=6, n_classes=3, spread=2.5, seed=4)
    x = np.repeat(x, 2, axis=0) + 0.1 * np.random.default_rng(0).standard_normal((36, 64))
    y, groups = np.repeat(y, 2), np.repeat(np.arange(18), 2)  # two views per image
    head = fit_prototype(x, y, n_classes=3, groups=groups)
    sims = _brute_force_loo_sims(x, y, groups, 3)

    def loss(t):
        logits = t * sims
        logits -= logits.max(axis=1, keepdims=True)
        return -(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(axis=1))).mean()

    best = loss(head.temperature)
    for factor in (0.8, 0.95, 1.05, 1.25):
        assert best <= loss(head.temperature * factor) + 1e-9


def test_one_image_per_class_falls_back_to_the_default_temperature():
    x, y = blobs(n_per_class=1, n_classes=3)
    head = fit_prototype(x, y, n_classes=3)
    assert head.temperature == DEFAULT_TEMPERATURE
    assert (head.predict_proba(x).argmax(axis=1) == y).all()
    # A class with one image among classes with more: its rows are left out of the fit only.
    x2, y2 = blobs(n_per_class=5, n_classes=2, seed=1)
    x2, y2 = np.vstack([x2, x[:1]]), np.append(y2, 2)
    assert fit_prototype(x2, y2, n_classes=3).temperature != DEFAULT_TEMPERATURE


def test_a_class_without_images_is_never_preferred():
    x, y = blobs(n_per_class=8, n_classes=2)
    head = fit_prototype(x, y, n_classes=3)
    assert (head.prototypes[2] == 0).all()
    far = -5.0 * x[:3]  # unlike anything seen, still never the empty class
    assert (head.predict_proba(far).argmax(axis=1) != 2).all()


def test_prototype_state_round_trips_through_torch_weights_only():
    x, y = blobs(n_per_class=6, n_classes=2)
    head = fit_prototype(x, y, n_classes=2)
    restored = head_from_state("prototype", _through_torch(head.to_state()))
    assert isinstance(restored, PrototypeHead)
    np.testing.assert_array_equal(restored.predict_proba(x), head.predict_proba(x))
    with pytest.raises(ValueError, match="inconsistent"):
        PrototypeHead.from_state(
            {"mean": np.zeros(3), "prototypes": np.zeros((2, 4)), "temperature": 1.0}
        )
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        head.predict_proba(x[:, :10])


def test_head_from_state_dispatches_on_kind():
    head = LogisticHead(np.zeros(4), np.zeros((2, 4)), np.zeros(2), 10.0)
    assert isinstance(head_from_state("logistic", head.to_state()), LogisticHead)
    with pytest.raises(ValueError, match="unknown head kind"):
        head_from_state("forest", head.to_state())


def test_a_retired_mlp_head_asks_for_retraining():
    with pytest.raises(ValueError, match="MLP.*retrain"):
        head_from_state("mlp", {"mean": torch.zeros(4)})
