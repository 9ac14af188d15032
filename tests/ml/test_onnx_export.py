"""The exported ONNX graph is backbone + head.predict_proba exactly, and the README's client
snippet (docs/onnx_snippet.py) preprocesses photos exactly as the server does."""

from __future__ import annotations

import io
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from app.ml import onnx_export
from app.ml.backbones import components, get_network, preprocess_array
from app.ml.engines import OnnxRunner, TorchRunner, export_path
from app.ml.features import extract_features_many
from app.ml.heads import PrototypeHead, fit_logistic
from app.ml.imaging import decode_image
from tests.conftest import DATASETS, ENGINES, ROOT

pytestmark = pytest.mark.slow

COMPOSITE = "mobilenet_v2+efficientnet_lite2"
SNIPPET = ROOT / "docs" / "onnx_snippet.py"
ANTS = sorted((DATASETS / "hymenoptera" / "val" / "ants").glob("*.jpg"))[:4]
BEES = sorted((DATASETS / "hymenoptera" / "val" / "bees").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def runner() -> OnnxRunner:
    return OnnxRunner(ENGINES)  # the run's export folder: each backbone is exported once


def build(head: Any, backbone: str, runner: OnnxRunner, path: Path, labels: list[str]) -> Path:
    for part in components(backbone):
        assert runner.session(part) is not None  # exported into ENGINES and checked
    files = {part: export_path(ENGINES, part) for part in components(backbone)}
    model = onnx_export.build_model(head=head, backbone=backbone, backbone_files=files,
                                    labels=labels, metadata={"model_id": "m1"}, model_version=3)
    onnx_export.save_model(model, path)
    return path


def odd_photos(folder: Path) -> list[Path]:
    """Photos that take every branch of the server's decode: a big JPEG (draft mode, shrink)
    with an EXIF rotation, a very wide one, a PNG with partial transparency, a palette GIF, a
    grayscale PNG."""
    with Image.open(BEES[0]) as photo:
        base = photo.convert("RGB")
    big = folder / "big_rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    base.resize((3000, 2250), Image.Resampling.BICUBIC).save(big, quality=90, exif=exif)
    wide = folder / "wide.jpg"
    base.resize((1900, 300)).save(wide, quality=90)
    rgba = base.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, base.width, dtype=np.uint8), (base.height, 1))
    rgba.putalpha(Image.fromarray(alpha, mode="L"))
    png = folder / "transparent.png"
    rgba.save(png)
    gif = folder / "palette.gif"
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(gif)
    gray = folder / "gray.png"
    base.convert("L").save(gray)
    return [big, wide, png, gif, gray]


def run_snippet(model: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
                ) -> dict[str, Any]:
    monkeypatch.setattr(sys, "argv", [str(SNIPPET), str(model), *map(str, photos)])
    return runpy.run_path(str(SNIPPET), run_name="__main__")


def decoded(paths: list[Path]) -> list[Image.Image]:
    return [decode_image(io.BytesIO(path.read_bytes())).image for path in paths]


def test_composite_graph_and_snippet_match_the_server(
        runner: OnnxRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    torch_runner = TorchRunner("cpu")
    train = decoded(ANTS + BEES)
    features = extract_features_many([COMPOSITE], train, runner=torch_runner)[COMPOSITE]
    head = fit_logistic(features, np.array([0] * len(ANTS) + [1] * len(BEES)), n_classes=2,
                        l2=1e-2)
    path = build(head, COMPOSITE, runner, tmp_path / "composite.onnx", ["ants", "bees"])

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["mobilenet_v2", "efficientnet_lite2"]
    meta = {p.key: p.value for p in model.metadata_props}
    recipes = json.loads(meta["preprocessing"])
    assert {name: r["size"] for name, r in recipes.items()} == {
        "mobilenet_v2": 224, "efficientnet_lite2": 260}
    assert recipes["efficientnet_lite2"]["mean"] == [0.5, 0.5, 0.5]
    assert recipes["mobilenet_v2"]["layout"] == "NCHW" and recipes["mobilenet_v2"]["color"] == "RGB"
    assert json.loads(meta["labels"]) == ["ants", "bees"] and meta["backbone"] == COMPOSITE
    assert meta["model_id"] == "m1" and model.model_version == 3

    photos = ANTS + BEES + odd_photos(tmp_path)
    ran = run_snippet(path, photos, monkeypatch)
    assert len(capsys.readouterr().out.splitlines()) == len(photos)
    images = decoded(photos)
    for part in components(COMPOSITE):  # the snippet's arrays are the server's, bit for bit
        server = np.stack([preprocess_array(get_network(part), image) for image in images])
        assert np.array_equal(ran["feeds"][part], server), part
    # ...and the file's probabilities are the head's on torch's features of those arrays.
    blocks = extract_features_many([COMPOSITE], images, runner=torch_runner)[COMPOSITE]
    expected = head.predict_proba(blocks)
    assert np.abs(ran["probabilities"] - expected).max() <= 1e-4
    assert onnx_export.parity(path, head=head, backbone=COMPOSITE,
                              features=runner.run) <= onnx_export.PARITY_TOLERANCE


def test_prototype_head_with_an_empty_class(runner: OnnxRunner, tmp_path: Path) -> None:
    network = get_network("mobilenet_v2")
    batch = np.stack([preprocess_array(network, image) for image in decoded(ANTS + BEES)])
    features = runner.run("mobilenet_v2", batch)
    mean = features.mean(axis=0)
    z = (features - mean) / np.linalg.norm(features - mean, axis=1, keepdims=True)
    prototypes = np.stack([z[:4].sum(0), z[4:].sum(0), np.zeros(z.shape[1])])
    prototypes[:2] /= np.linalg.norm(prototypes[:2], axis=1, keepdims=True)
    head = PrototypeHead(mean=mean, prototypes=prototypes, temperature=12.5)
    path = build(head, "mobilenet_v2", runner, tmp_path / "proto.onnx", ["a", "b", "none"])

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert json.loads({p.key: p.value for p in model.metadata_props}["preprocessing"]) \
        .keys() == {"input"}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (batch[:1], batch):  # the batch axis is dynamic
        ours = session.run(None, {"input": rows})[0]
        assert ours.dtype == np.float32 and ours.shape == (len(rows), 3)
        expected = head.predict_proba(features[:len(rows)])
        assert np.abs(ours - expected).max() <= 1e-6
    assert (ours[:, 2] < ours[:, :2].max(axis=1)).all()  # the class without images never wins


def test_a_head_of_the_wrong_size_is_refused(runner: OnnxRunner, tmp_path: Path) -> None:
    head = PrototypeHead(mean=np.zeros(7), prototypes=np.eye(2, 7), temperature=1.0)
    with pytest.raises(ValueError, match="1280"):
        build(head, "mobilenet_v2", runner, tmp_path / "bad.onnx", ["a", "b"])
