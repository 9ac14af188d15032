import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from app.ml.artifacts import load_artifact, save_artifact
from app.ml.heads import FEATURE_SCALE, normalise
from app.ml.multilabel import (
    CV_NOTE,
    DEFAULT_THRESHOLD,
    MultiLabelHead,
    _fit_sigmoid_many,
    best_thresholds,
    evaluate_multilabel,
    fit_multilabel,
    multilabel_folds,
    multilabel_metrics,
    ranked_predictions,
    select_multilabel,
)
from tests.ml.conftest import image_loader
from tests.multilabel_set import (  # noqa: F401 - multilabel_set is a fixture
    available,
    build_multilabel_set,
    label_matrix,
    multilabel_set,
)

NAMES = ["cat", "dog", "sofa", "rare"]


def multilabel_blobs(n=160, dim=48, rates=(0.5, 0.4, 0.3, 0.08), spread=0.5, seed=0):
    """Features that add one direction per category present (like pooled features of the parts
    of an image), plus noise; returns (features, (n, C) labels)."""
    rng = np.random.default_rng(seed)
    directions = rng.uniform(0.0, 2.0, size=(len(rates), dim))
    y = (rng.random((n, len(rates))) < np.asarray(rates)).astype(np.int64)
    y[: len(rates)] = np.eye(len(rates), dtype=np.int64)  # every category present at least once
    x = 1.0 + y @ directions + spread * rng.standard_normal((n, dim))
    return x.astype(np.float32), y


# --- the head and its fit --------------------------------------------------------------------


def test_fit_finds_each_category_and_probabilities_are_independent():
    x, y = multilabel_blobs(n=240)
    head = fit_multilabel(x[:160], y[:160])
    probs = head.predict_proba(x[160:])
    assert probs.shape == (80, 4) and head.n_categories == 4
    assert not np.allclose(probs.sum(axis=1), 1.0)  # sigmoids, not a softmax
    assert ((probs >= 0) & (probs <= 1)).all()
    predicted = head.predict(x[160:])
    np.testing.assert_array_equal(predicted, probs >= head.thresholds)
    assert f1_score(y[160:], predicted, average="micro") >= 0.95
    np.testing.assert_allclose(head.mean, x[:160].mean(axis=0, dtype=np.float64))
    assert head.scale == FEATURE_SCALE


def test_fit_is_deterministic():
    x, y = multilabel_blobs(seed=3)
    a, b = fit_multilabel(x, y), fit_multilabel(x, y)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)


def test_the_objective_is_one_vs_rest_logistic_regression():
    # sum over categories of mean BCE + l2/2 ||W||^2 on FEATURE_SCALE * normalise(x): per
    # category, scikit-learn's binary logistic regression with C = 1 / (n l2).
    x, y = multilabel_blobs(n=120, spread=1.0)
    l2 = 1e-2
    (head,) = _fit_sigmoid_many(x.astype(np.float64), y.astype(np.float64),
                                np.ones((1, len(y)), dtype=bool), [(0, l2)], max_iter=500)
    z = FEATURE_SCALE * normalise(x, x.astype(np.float64).mean(axis=0))
    for c in range(y.shape[1]):
        reference = LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10, max_iter=10_000)
        reference.fit(z, y[:, c])
        np.testing.assert_allclose(head.weight[c] * head.scale / FEATURE_SCALE,
                                   reference.coef_[0], atol=2e-3)
        np.testing.assert_allclose(head.bias[c], reference.intercept_[0], rtol=1e-3, atol=2e-3)


def test_joint_fits_equal_separate_ones():
    x, y = multilabel_blobs(n=100)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    rng = np.random.default_rng(0)
    masks = rng.random((3, len(y))) < 0.7
    problems = [(m, l2) for l2 in (1e-2, 1e-3) for m in range(3)]
    joint = _fit_sigmoid_many(x64, y64, masks, problems)
    for (m, l2), head in zip(problems, joint, strict=True):
        (alone,) = _fit_sigmoid_many(x64[masks[m]], y64[masks[m]],
                                     np.ones((1, masks[m].sum()), dtype=bool), [(0, l2)])
        np.testing.assert_allclose(head.predict_proba(x), alone.predict_proba(x), atol=2e-3)


def test_a_category_absent_from_a_training_part_gets_low_probability():
    x, y = multilabel_blobs(n=100)
    train = y[:, 3] == 0  # a fold without the rare category: the inner fits must survive it
    (head,) = _fit_sigmoid_many(x.astype(np.float64), y.astype(np.float64), train[None, :],
                                [(0, 1e-2)])
    assert head.predict_proba(x)[:, 3].max() < 0.05


# --- thresholds ------------------------------------------------------------------------------


def test_threshold_maximises_f1_and_moves_from_half_only_when_that_pays():
    y = np.array([[1, 1], [1, 1], [1, 0], [0, 0], [0, 0], [0, 0], [1, 1], [0, 0]])
    p = np.array([
        # category 0: positives at 0.30, 0.35, 0.40, 0.32; negatives at 0.10-0.20 -> between
        # 0.20 and 0.30 every row is right; category 1: separable around 0.5 already.
        [0.30, 0.9], [0.35, 0.8], [0.40, 0.2], [0.10, 0.3], [0.20, 0.1], [0.15, 0.2],
        [0.32, 0.7], [0.12, 0.4],
    ])
    thresholds = best_thresholds(y, p)
    assert thresholds[0] == pytest.approx(0.25)  # the midpoint nearest 0.5 of the best F1
    assert thresholds[1] == 0.5  # 0.5 is among the best (F1 = 1): it stays
    assert f1_score(y[:, 0], p[:, 0] >= thresholds[0]) == 1.0
    assert f1_score(y[:, 0], p[:, 0] >= 0.5) == 0.0


def test_ties_go_to_the_threshold_nearest_half():
    # Perfect for any t in (0.3, 0.6]: the candidates 0.45 and 0.5 tie, 0.5 wins.
    y = np.array([[1], [1], [1], [0], [0], [0]])
    p = np.array([[0.6], [0.7], [0.9], [0.1], [0.2], [0.3]])
    assert best_thresholds(y, p)[0] == 0.5
    # F1 2/3 both at 0.05 (everything positive) and at 0.775 (only the top one), 1/2 at 0.5:
    # 0.775 is nearer to 0.5.
    y = np.array([[1], [0], [0], [1]])
    p = np.array([[0.1], [0.2], [0.6], [0.95]])
    f1 = {t: f1_score(y[:, 0], p[:, 0] >= t) for t in (0.05, 0.5, 0.775)}
    assert f1[0.05] == pytest.approx(f1[0.775]) == pytest.approx(2 / 3) and f1[0.5] == 0.5
    assert best_thresholds(y, p, min_examples=2)[0] == pytest.approx(0.775)


def test_a_category_with_too_few_positives_keeps_the_default_threshold():
    # Both categories peak at a low threshold; only the first has 3 positives to trust it.
    y = np.array([[1, 1], [1, 0], [1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
    p = np.array([[0.3, 0.3], [0.3, 0.1], [0.35, 0.1], [0.1, 0.3], [0.1, 0.1], [0.1, 0.1],
                  [0.1, 0.1], [0.1, 0.1]])
    thresholds = best_thresholds(y, p)
    assert thresholds[0] == pytest.approx(0.2)
    assert thresholds[1] == DEFAULT_THRESHOLD
    assert best_thresholds(y, p, min_examples=2)[1] == pytest.approx(0.2)


def test_tuned_thresholds_help_a_rare_category():
    x, y = multilabel_blobs(n=400, rates=(0.5, 0.5, 0.5, 0.06), spread=1.2, seed=1)
    head = fit_multilabel(x[:200], y[:200])
    probs = head.predict_proba(x[200:])
    tuned = f1_score(y[200:, 3], probs[:, 3] >= head.thresholds[3])
    fixed = f1_score(y[200:, 3], probs[:, 3] >= 0.5)
    assert head.thresholds[3] < 0.5
    assert tuned >= fixed, (tuned, fixed, head.thresholds)


# --- folds and metrics -----------------------------------------------------------------------


def test_folds_partition_the_rows_and_keep_every_category_in_training():
    _, y = multilabel_blobs(n=150)
    y[:, 3] = 0
    y[[7, 70], 3] = 1  # a category with exactly two images
    rows = np.arange(5, 150)
    folds = multilabel_folds(y, rows, n_splits=5, seed=0)
    validation = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(validation), rows)
    for train, val in folds:
        assert not set(train) & set(val) and set(train) | set(val) == set(rows)
        assert y[train].sum(axis=0).min() >= 1  # every category in every training part
        # Shares kept: each common category's count per fold within 1 of its fifth.
        np.testing.assert_array_less(np.abs(y[val, :3].sum(axis=0) - y[rows, :3].sum(axis=0) / 5),
                                     1.01)
    again = multilabel_folds(y, rows, n_splits=5, seed=0)
    other = multilabel_folds(y, rows, n_splits=5, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((50, 4)) < 0.4).astype(int)
    y[:, 3] = 0  # no positives held out: AP undefined
    p = np.clip(y * 0.4 + rng.random((50, 4)) * 0.6, 0, 1)
    thresholds = np.array([0.5, 0.6, 0.4, 0.5])
    predicted = p >= thresholds
    metrics = multilabel_metrics(y, p, predicted, NAMES, thresholds=thresholds, n_folds=5)
    json.dumps(metrics)  # plain Python types only
    assert metrics["micro_f1"] == pytest.approx(f1_score(y, predicted, average="micro"))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y, predicted, average="macro", zero_division=0))
    assert metrics["micro_precision"] == pytest.approx(precision_score(y, predicted,
                                                                       average="micro"))
    assert metrics["micro_recall"] == pytest.approx(recall_score(y, predicted, average="micro"))
    aps = []
    for c, row in enumerate(metrics["per_category"]):
        assert row["label"] == NAMES[c] and row["threshold"] == thresholds[c]
        assert row["support"] == y[:, c].sum()
        assert row["precision"] == pytest.approx(precision_score(y[:, c], predicted[:, c],
                                                                 zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y[:, c], predicted[:, c],
                                                           zero_division=0))
        assert row["f1"] == pytest.approx(f1_score(y[:, c], predicted[:, c], zero_division=0))
        if c < 3:
            aps.append(average_precision_score(y[:, c], p[:, c]))
            assert row["average_precision"] == pytest.approx(aps[-1])
    assert metrics["per_category"][3]["average_precision"] is None
    assert metrics["mean_average_precision"] == pytest.approx(np.mean(aps))
    assert metrics["exact_match"] == pytest.approx((y == predicted).all(axis=1).mean())
    assert (metrics["n_images"], metrics["n_folds"]) == (50, 5)


# --- evaluation and selection ----------------------------------------------------------------


def test_evaluate_reports_nested_metrics_and_the_head_on_all_images():
    x, y = multilabel_blobs()
    result = evaluate_multilabel(x, y, NAMES)
    assert result.metrics is not None and result.metrics_note is None
    assert result.metrics["micro_f1"] >= 0.9
    assert result.metrics["selection"] == "nested" and result.metrics["n_folds"] == 5
    assert result.out_of_fold.shape == y.shape
    np.testing.assert_array_equal(result.thresholds, result.head.thresholds)
    assert [row["threshold"] for row in result.metrics["per_category"]] == \
        result.head.thresholds.tolist()
    # The head on all images is fit_multilabel's (up to the tolerance of a joint L-BFGS run).
    alone = fit_multilabel(x, y)
    np.testing.assert_allclose(result.head.predict_proba(x), alone.predict_proba(x), atol=1e-3)
    np.testing.assert_allclose(result.thresholds, alone.thresholds, atol=1e-3)
    assert {row["l2"] for row in result.scores} == {1e-3, 3e-3, 1e-2, 3e-2, 1e-1}


def test_every_held_out_row_is_predicted_by_a_fit_that_never_saw_it():
    # Rebuild the outer folds by hand: fit_multilabel on each training part alone (its own
    # inner CV picks l2 and thresholds) must give the reported out-of-fold figures.
    x, y = multilabel_blobs(n=120, spread=1.0)
    result = evaluate_multilabel(x, y, NAMES, seed=4)
    for train, val in multilabel_folds(y, np.arange(len(y)), n_splits=5, seed=4):
        head = fit_multilabel(x[train], y[train], seed=4)
        np.testing.assert_allclose(result.out_of_fold[val], head.predict_proba(x[val]),
                                   atol=5e-3)
        decided = result.out_of_fold_predicted[val]
        assert (decided == (head.predict_proba(x[val]) >= head.thresholds)).mean() >= 0.98


def test_metrics_of_noise_are_not_inflated():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 200)).astype(np.float32)
    y = (rng.random((120, 3)) < 0.3).astype(int)
    result = evaluate_multilabel(x, y, NAMES[:3])
    # Calling every category present scores 2r / (1 + r) at a positive rate r; noise features
    # can teach nothing better, and nested CV must not claim more.
    rate = y.mean()
    assert result.metrics["micro_f1"] <= 2 * rate / (1 + rate) + 0.05, result.metrics


def test_augmented_views_enter_training_only():
    # A second view equal to the first changes nothing (the same rows, weighted equally)...
    x, y = multilabel_blobs(n=100)
    same = evaluate_multilabel(np.stack([x, x], axis=1), y, NAMES)
    plain = evaluate_multilabel(x, y, NAMES)
    np.testing.assert_allclose(same.out_of_fold, plain.out_of_fold, atol=5e-3)
    # ...and one far off is never what an image is scored on: view 0 is.
    far = np.stack([x, x + 100.0], axis=1)
    shifted = evaluate_multilabel(far, y, NAMES)
    assert shifted.metrics["micro_f1"] >= 0.8


def test_select_picks_the_informative_backbone_and_reports_a_table():
    x, y = multilabel_blobs()
    noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    result = select_multilabel({"noise": noise, "signal": x}, y, NAMES)
    assert result.candidate.backbone == "signal"
    assert result.candidate.head == MultiLabelHead.kind
    assert {row["backbone"] for row in result.scores} == {"noise", "signal"}
    assert len(result.scores) == 10
    signal = [r for r in result.scores if r["backbone"] == "signal"]
    assert min(r["cv_micro_f1"] for r in signal) > max(
        r["cv_micro_f1"] for r in result.scores if r["backbone"] == "noise")
    assert result.metrics["backbone"] == "signal"


def test_near_ties_go_to_the_backbone_that_transfers_best_from_few_images():
    x, y = multilabel_blobs()
    result = select_multilabel({"mobilenet_v2": x, "efficientnet_lite2": x.copy()}, y, NAMES)
    assert result.candidate.backbone == "efficientnet_lite2"  # registry few-shot rank 1


def test_too_few_images_for_cross_validation_give_defaults_and_a_note():
    x, y = multilabel_blobs(n=40)
    y[:, 3] = 0
    y[0, 3] = 1  # one image of "rare": no fold split can train on it and validate it
    result = evaluate_multilabel(x, y, NAMES)
    assert result.metrics is None and result.metrics_note == CV_NOTE
    np.testing.assert_array_equal(result.thresholds, DEFAULT_THRESHOLD)
    assert result.head.predict_proba(x).shape == (40, 4)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[1, 0], [1, 0], [0, 0], [1, 0]]), "no image has dog"),
        (np.array([[1, 1], [1, 0], [1, 0], [1, 1]]), "every image has cat"),
        (np.array([[2, 0], [1, 1], [0, 0], [1, 0]]), "only 0 and 1"),
        (np.array([1, 0, 1, 0]), r"\(N, C\)"),
    ],
)
def test_bad_labels_are_rejected_with_the_category_named(labels, message):
    x, _ = multilabel_blobs(n=4)
    with pytest.raises(ValueError, match=message):
        evaluate_multilabel(x, labels, ["cat", "dog"])
    with pytest.raises(ValueError, match=message):
        fit_multilabel(x, labels, label_names=["cat", "dog"])


def test_bad_features_are_rejected():
    x, y = multilabel_blobs(n=20)
    with pytest.raises(ValueError, match="shape"):
        evaluate_multilabel(x[:10], y, NAMES)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_multilabel(x, y, NAMES)
    with pytest.raises(ValueError, match="label names"):
        evaluate_multilabel(x, y, NAMES[:2])


def test_torch_features_are_accepted():
    x, y = multilabel_blobs(n=60)
    a = fit_multilabel(torch.from_numpy(x), y)
    b = fit_multilabel(x, y)
    np.testing.assert_array_equal(a.weight, b.weight)


# --- serialisation and prediction output ------------------------------------------------------


def test_save_and_load_give_identical_probabilities(tmp_path):
    # The artifact is the single-label one (artifacts.py), its kind "multilabel_logistic".
    x, y = multilabel_blobs()
    head = fit_multilabel(x, y)
    meta = {"labels": NAMES, "backbone": "mobilenet_v2", "kind": "multi_label"}
    path = tmp_path / "models" / "v1.pt"
    save_artifact(path, head=head, meta=meta)
    loaded, loaded_meta = load_artifact(path)
    assert loaded_meta == meta and isinstance(loaded, MultiLabelHead)
    np.testing.assert_array_equal(loaded.predict_proba(x), head.predict_proba(x))
    np.testing.assert_array_equal(loaded.thresholds, head.thresholds)
    assert [p.name for p in path.parent.iterdir()] == ["v1.pt"]  # no temp file left
    assert torch.load(path, weights_only=True)["kind"] == MultiLabelHead.kind


def test_a_head_with_inconsistent_state_is_refused():
    x, y = multilabel_blobs(n=60)
    state = fit_multilabel(x, y).to_state()
    with pytest.raises(ValueError, match="shapes"):
        MultiLabelHead.from_state({**state, "thresholds": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="not a saved"):
        MultiLabelHead.from_state({k: v for k, v in state.items() if k != "thresholds"})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MultiLabelHead.from_state({**state, "thresholds": torch.full((4,), 1.5,
                                                                     dtype=torch.float64)})


def test_ranked_predictions_mark_categories_at_or_above_their_threshold():
    probs = np.array([[0.2, 0.9, 0.4], [0.6, 0.1, 0.3]])
    thresholds = np.array([0.5, 0.5, 0.3])
    assert ranked_predictions(probs, thresholds, ["a", "b", "c"]) == [
        [("b", 0.9, True), ("c", 0.4, True), ("a", 0.2, False)],
        [("a", 0.6, True), ("c", 0.3, True), ("b", 0.1, False)],
    ]
    with pytest.raises(ValueError, match="thresholds"):
        ranked_predictions(probs, thresholds[:2], ["a", "b", "c"])


# --- the real-photo set ----------------------------------------------------------------------


def test_the_set_is_deterministic_and_sized_for_ci(tmp_path):
    if not available():
        pytest.skip("shared datasets not found")
    a = build_multilabel_set(tmp_path / "a")
    b = build_multilabel_set(tmp_path / "b")
    assert (len(a.train), len(a.heldout)) == (120, 60)
    assert [(p.name, labels) for p, labels in a.train] == [(p.name, ls) for p, ls in b.train]
    collages = [(p, q) for (p, _), (q, _) in zip(a.heldout, b.heldout, strict=True)
                if p.name.startswith("collage")]
    assert len(collages) == 30
    assert all(p.read_bytes() == q.read_bytes() for p, q in collages)
    train_photos = {p for p, _ in a.train if not p.name.startswith("collage")}
    heldout_photos = {p for p, _ in a.heldout if not p.name.startswith("collage")}
    assert not train_photos & heldout_photos
    assert {labels for _, labels in a.train} == {
        ("insect", "ant"), ("insect", "bee"), ("flower",),
        ("insect", "ant", "flower"), ("insect", "bee", "flower"),
    }
    y = label_matrix(a.train, a.categories)
    assert y.shape == (120, 4) and y.sum(axis=0).min() >= 20
    species = build_multilabel_set(tmp_path / "c", flower_species=True)
    assert "rose" in species.categories
    assert any(set(labels) == {"insect", "ant", "flower", "rose"} for _, labels in species.train)


@pytest.mark.slow
def test_mobilenet_v2_features_of_the_multilabel_set(multilabel_set, feature_cache):  # noqa: F811
    def features(examples):
        items = [(hashlib.sha256(path.read_bytes()).hexdigest(), image_loader(path))
                 for path, _ in examples]
        return feature_cache.features_for("mobilenet_v2", items)

    data = multilabel_set
    x_train, x_heldout = features(data.train), features(data.heldout)
    y_train = label_matrix(data.train, data.categories)
    y_heldout = label_matrix(data.heldout, data.categories)
    result = evaluate_multilabel(x_train, y_train, data.categories)
    predicted = result.head.predict(x_heldout)
    micro = f1_score(y_heldout, predicted, average="micro")
    per_category = {name: round(float(f1_score(y_heldout[:, c], predicted[:, c])), 3)
                    for c, name in enumerate(data.categories)}
    macro = f1_score(y_heldout, predicted, average="macro")
    report = (f"held-out micro-F1 {micro:.3f}, macro {macro:.3f}, per category {per_category}; "
              f"nested micro-F1 "
              f"{result.metrics['micro_f1']:.3f}, l2 {result.candidate.l2}, thresholds "
              f"{np.round(result.thresholds, 2).tolist()}")
    assert micro >= 0.85, report
    assert abs(result.metrics["micro_f1"] - micro) <= 0.08, report  # the nested figure is honest
