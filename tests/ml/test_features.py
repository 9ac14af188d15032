import numpy as np
import pytest
import torch
from PIL import Image

from app.ml import backbones
from app.ml.backbones import BackboneUnavailable
from app.ml.features import extract_features
from tests.ml.conftest import DATASETS, dataset_rows, image_loader


class _MeanPool(torch.nn.Module):
    """Stand-in backbone: (N, 3, S, S) -> (N, 1280), recording the batch sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()  # runs under inference_mode
        self.batches.append(len(x))
        return x.mean(dim=(2, 3)).repeat(1, 1280 // 3 + 1)[:, :1280]


@pytest.fixture
def fake_backbone(monkeypatch):
    model = _MeanPool()
    monkeypatch.setattr(backbones, "load_backbone", lambda name, device="cpu": model)
    return model


def _images(n):
    return [Image.new("RGB", (64 + i, 48), (10 * i, 0, 200)) for i in range(n)]


def test_batches_and_keeps_order(fake_backbone):
    images = _images(7)
    out = extract_features("mobilenet_v2", images, batch_size=3)
    assert out.shape == (7, 1280) and out.dtype == np.float32
    assert fake_backbone.batches == [3, 3, 1]
    one_by_one = np.vstack([extract_features("mobilenet_v2", [im]) for im in images])
    np.testing.assert_allclose(out, one_by_one, rtol=1e-6)


def test_no_images_gives_an_empty_matrix(fake_backbone):
    out = extract_features("efficientnet_lite2", [])
    assert out.shape == (0, 1280) and out.dtype == np.float32
    assert fake_backbone.batches == []


def test_bad_arguments_are_rejected(fake_backbone):
    with pytest.raises(ValueError):
        extract_features("mobilenet_v2", _images(1), batch_size=0)
    with pytest.raises(BackboneUnavailable):
        extract_features("no_such_net", _images(1))


@pytest.mark.slow
def test_real_features_do_not_depend_on_the_batch():
    rows = dataset_rows("hymenoptera", "val")[:5]
    images = [image_loader(DATASETS / "hymenoptera" / row["path"])() for row in rows]
    batched = extract_features("mobilenet_v2", images, batch_size=4)
    single = extract_features("mobilenet_v2", images, batch_size=1)
    assert batched.shape == (5, 1280)
    assert np.isfinite(batched).all() and (batched >= 0).all()  # pooled after ReLU6
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_a_composite_concatenates_weighted_components(fake_backbone):
    from app.ml.backbones import component_weights
    from app.ml.features import extract_features_many

    images = _images(3)
    name = "mobilenet_v2+efficientnet_lite2"
    out = extract_features(name, images)
    assert out.shape == (3, 2560) and out.dtype == np.float32
    w_mobile, w_lite = component_weights(name)
    np.testing.assert_allclose(out[:, :1280], extract_features("mobilenet_v2", images) * w_mobile)
    lite = extract_features("efficientnet_lite2", images)
    np.testing.assert_allclose(out[:, 1280:], lite * w_lite)

    fake_backbone.batches.clear()
    many = extract_features_many(["efficientnet_lite2", name], images)
    np.testing.assert_array_equal(many[name], out)
    assert len(fake_backbone.batches) == 2  # each network ran once for both names


def test_classify_runs_each_network_once_and_flags_unknowns(fake_backbone):
    from app.ml.evaluate import stratified_folds
    from app.ml.heads import fit_prototype
    from app.ml.predict import classify
    from app.ml.unknown import calibrate_unknown

    images = _images(10)
    name = "mobilenet_v2+efficientnet_lite2"
    x = extract_features(name, images)
    lite = extract_features("efficientnet_lite2", images)
    y = np.arange(10) % 2
    head = fit_prototype(x, y, n_classes=2)
    folds = stratified_folds(y, np.arange(10), n_splits=5, seed=0)
    detector = calibrate_unknown(lite, y, folds=folds, n_classes=2, backbone="efficientnet_lite2")
    fake_backbone.batches.clear()
    probs, unknown = classify(head, {"backbone": name, "unknown": detector}, images)
    assert len(fake_backbone.batches) == 2  # Lite2 ran once for the head and the detector
    np.testing.assert_allclose(probs, head.predict_proba(x))
    assert unknown.shape == (10,) and unknown.dtype == bool
    probs, unknown = classify(head, {"backbone": name}, images)
    assert not unknown.any()
