"""The backbone runners: ONNX Runtime exports agree with torch on real photos, are made once
and cached by weights and recipe, and a bad export never serves."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml import engines
from app.ml.backbones import available_backbones, get_network, preprocess
from app.ml.engines import OnnxRunner, TorchRunner, bulk_runner, export_path, make_runner
from app.ml.registry import BACKBONES
from tests.conftest import DATASETS, ENGINES

PLAIN = [name for name in available_backbones() if BACKBONES[name].network is not None]
PHOTOS = sorted((DATASETS / "hymenoptera" / "val" / "bees").glob("*.jpg"))[:6]


def photo_batch(backbone: str) -> np.ndarray:
    network = get_network(backbone)
    images = [Image.open(path).convert("RGB") for path in PHOTOS]
    return torch.stack([preprocess(network, image) for image in images]).numpy()


@pytest.fixture(scope="module")
def shared() -> OnnxRunner:
    return OnnxRunner(ENGINES)  # the run's export folder: each backbone is exported once


@pytest.mark.parametrize("backbone", PLAIN)
def test_onnx_features_match_torch_on_real_photos(shared: OnnxRunner, backbone: str) -> None:
    batch = photo_batch(backbone)
    ours = shared.run(backbone, batch)
    theirs = TorchRunner("cpu").run(backbone, batch)
    assert ours.shape == theirs.shape == (len(PHOTOS), get_network(backbone).dim)
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-4
    assert shared.session(backbone) is not None  # ONNX Runtime answered, not the fallback
    one = shared.run(backbone, batch[:1])  # any batch size: the batch axis is dynamic
    assert np.abs(one - theirs[:1]).max() <= 1e-4


def test_an_export_is_made_once_and_reused(shared: OnnxRunner, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shared.session("mobilenet_v2")  # exported into the run's folder, if not yet
    cached = export_path(ENGINES, "mobilenet_v2")
    assert cached.is_file()
    assert cached.name.startswith("mobilenet_v2-" + get_network("mobilenet_v2").weights_sha256[:16])
    assert f"-r{engines.EXPORT_RECIPE}." in cached.name

    def no_export(*_args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(engines, "_export", no_export)
    again = OnnxRunner(ENGINES)  # another process, the same folder
    assert again.session("mobilenet_v2") is not None


def test_sessions_spin_only_when_asked(shared: OnnxRunner) -> None:
    def spinning(runner: OnnxRunner) -> str:
        session = runner.session("mobilenet_v2")
        assert session is not None
        options = session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(shared) == "1"  # between the operators of a run, not after it
    assert spinning(OnnxRunner(ENGINES, spin=True)) == "1"


def test_a_checked_export_leaves_no_torch_copy_behind(tmp_path: Path) -> None:
    from app.ml import backbones

    backbones.load_backbone("mobilenet_v2")  # as the export and the parity check load it
    runner = OnnxRunner(ENGINES)
    assert runner.session("mobilenet_v2") is not None
    assert ("mobilenet_v2", "cpu") not in backbones._models


def test_a_damaged_export_is_made_again(tmp_path: Path, shared: OnnxRunner) -> None:
    shared.session("mobilenet_v2")
    path = export_path(tmp_path, "mobilenet_v2")
    path.write_bytes(export_path(ENGINES, "mobilenet_v2").read_bytes()[:5000])  # truncated
    runner = OnnxRunner(tmp_path)
    assert runner.session("mobilenet_v2") is not None
    assert path.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_export_that_disagrees_with_torch_is_not_used(
        tmp_path: Path, shared: OnnxRunner, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    shared.session("mobilenet_v2")
    monkeypatch.setattr(engines, "PARITY_TOLERANCE", -1.0)  # any difference is too much
    runner = OnnxRunner(ENGINES)
    with caplog.at_level(logging.ERROR, logger="app.ml.engines"):
        assert runner.session("mobilenet_v2") is None
    assert "onnx.parity_failed backbone=mobilenet_v2" in caplog.text
    batch = photo_batch("mobilenet_v2")[:2]
    assert np.array_equal(runner.run("mobilenet_v2", batch),
                          TorchRunner("cpu").run("mobilenet_v2", batch))


def test_the_runner_follows_the_settings(tmp_path: Path) -> None:
    assert isinstance(make_runner("cpu", tmp_path), OnnxRunner)
    assert isinstance(make_runner("cpu", tmp_path, engine="torch"), TorchRunner)
    gpu = make_runner("cuda", tmp_path)
    assert isinstance(gpu, TorchRunner) and gpu.device == "cuda"
    with pytest.raises(ValueError, match="runs on the CPU"):
        make_runner("cuda", tmp_path, engine="onnx")
    assert make_runner("cpu", tmp_path, threads=1).threads == 1  # type: ignore[attr-defined]
    assert make_runner("cpu", tmp_path).spin is False  # type: ignore[attr-defined]
    assert make_runner("cpu", tmp_path, spin=True).spin is True  # type: ignore[attr-defined]


def test_bulk_work_runs_single_threaded_sessions_of_the_same_export(shared: OnnxRunner) -> None:
    from app.ml.batching import BatchingRunner

    runner = OnnxRunner(ENGINES, threads=2)
    single, streams = bulk_runner(runner)
    assert streams == 2 and single is runner.single_threaded
    batch = photo_batch("mobilenet_v2")
    ours = single.run("mobilenet_v2", batch)
    assert np.abs(ours - runner.run("mobilenet_v2", batch)).max() <= 1e-5
    session = runner.single_session("mobilenet_v2")
    assert session is not None and session is not runner.session("mobilenet_v2")
    assert session.get_session_options().intra_op_num_threads == 1
    # Through the micro-batcher too: bulk work bypasses its lanes.
    batching = BatchingRunner(runner, window_s=0.002, max_size=8)
    assert bulk_runner(batching) == (runner.single_threaded, 2)
    # One stream, or another engine: the runner itself, one call at a time.
    one = OnnxRunner(ENGINES, threads=1)
    assert bulk_runner(one) == (one, 1)
    torch_runner = TorchRunner("cpu")
    assert bulk_runner(torch_runner) == (torch_runner, 1)


def test_an_export_that_fails_its_check_is_not_used_in_bulk_either(
        shared: OnnxRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    shared.session("mobilenet_v2")
    monkeypatch.setattr(engines, "PARITY_TOLERANCE", -1.0)
    runner = OnnxRunner(ENGINES, threads=2)
    single, _ = bulk_runner(runner)
    batch = photo_batch("mobilenet_v2")[:2]
    assert runner.single_session("mobilenet_v2") is None
    assert np.array_equal(single.run("mobilenet_v2", batch),
                          TorchRunner("cpu").run("mobilenet_v2", batch))


def test_composites_are_run_by_their_parts(shared: OnnxRunner) -> None:
    composite = next(name for name, spec in BACKBONES.items() if spec.network is None)
    with pytest.raises(ValueError, match="composite"):
        shared.run(composite, np.zeros((1, 3, 224, 224), dtype=np.float32))
