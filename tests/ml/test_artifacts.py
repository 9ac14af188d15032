import json

import numpy as np
import pytest
import torch

from app.ml.artifacts import load_artifact, save_artifact
from app.ml.evaluate import stratified_folds
from app.ml.heads import fit_logistic, fit_prototype
from app.ml.select import fit_model
from app.ml.unknown import calibrate_unknown
from tests.ml.conftest import blobs


def test_artifact_round_trips_head_and_meta(tmp_path):
    x, y = blobs(n_per_class=8, n_classes=3)
    result = fit_model({"efficientnet_lite2": x[:, None, :]}, y, ["a", "b", "c"])
    meta = {
        "labels": ["a", "b", "c"],
        "backbone": result.candidate.backbone,
        "l2": result.candidate.l2,
        "metrics": result.metrics,
        "unknown": result.unknown,
        "note": None,
    }
    path = tmp_path / "models" / "model.pt"
    save_artifact(path, head=result.head, meta=meta)
    head, loaded_meta = load_artifact(path)
    assert loaded_meta == meta
    json.dumps(loaded_meta)
    np.testing.assert_array_equal(head.predict_proba(x), result.head.predict_proba(x))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp files
    assert torch.load(path, weights_only=True)["format"] == 2


def test_save_replaces_an_existing_artifact(tmp_path):
    x, y = blobs(n_per_class=5, n_classes=2)
    path = tmp_path / "model.pt"
    for version in (1, 2):
        head = fit_logistic(x, y, n_classes=2, l2=1e-2)
        save_artifact(path, head=head, meta={"version": version})
    assert load_artifact(path)[1] == {"version": 2}


def test_unknown_format_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": 99, "head": {}, "meta": {}}, path)
    with pytest.raises(ValueError, match="format"):
        load_artifact(path)


def test_garbage_and_code_carrying_files_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError):
        load_artifact(garbage)
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "head": {}, "meta": {}, "x": np.random.default_rng(0)}, evil)
    with pytest.raises(ValueError):
        load_artifact(evil)  # weights_only refuses arbitrary objects


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        load_artifact(tmp_path / "absent.pt")


@pytest.mark.parametrize("kind", ["logistic", "prototype"])
def test_every_head_kind_round_trips_with_its_unknown_detector(tmp_path, kind):
    x, y = blobs(n_per_class=10, n_classes=2)
    fit = {"logistic": lambda: fit_logistic(x, y, n_classes=2, l2=1e-2),
           "prototype": lambda: fit_prototype(x, y, n_classes=2)}[kind]
    head = fit()
    folds = stratified_folds(y, np.arange(len(y)), n_splits=5, seed=0)
    detector = calibrate_unknown(x, y, folds=folds, n_classes=2, backbone="efficientnet_lite2")
    meta = {"labels": ["a", "b"], "backbone": "efficientnet_lite2", "unknown": detector}
    path = tmp_path / "model.pt"
    save_artifact(path, head=head, meta=meta)
    loaded, loaded_meta = load_artifact(path)
    assert loaded.kind == kind and type(loaded) is type(head)
    np.testing.assert_allclose(loaded.predict_proba(x), head.predict_proba(x), atol=1e-6)
    assert loaded_meta == meta
    json.dumps(loaded_meta)
    assert torch.load(path, weights_only=True)["kind"] == kind


def test_format_1_files_still_load_as_logistic(tmp_path):
    x, y = blobs(n_per_class=6, n_classes=2)
    head = fit_logistic(x, y, n_classes=2, l2=1e-2)
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "head": head.to_state(), "meta": {"labels": ["a", "b"]}}, path)
    loaded, meta = load_artifact(path)
    assert loaded.kind == "logistic" and meta == {"labels": ["a", "b"]}
    np.testing.assert_array_equal(loaded.predict_proba(x), head.predict_proba(x))


def test_an_unknown_head_kind_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": 2, "kind": "forest", "head": {}, "meta": {}}, path)
    with pytest.raises(ValueError, match="kind"):
        load_artifact(path)


def test_a_model_saved_with_the_retired_mlp_head_must_be_retrained(tmp_path):
    # What an earlier version wrote for its one-hidden-layer head.
    state = {"mean": torch.zeros(4), "w1": torch.zeros(8, 4), "b1": torch.zeros(8),
             "w2": torch.zeros(2, 8), "b2": torch.zeros(2), "scale": 10.0}
    path = tmp_path / "model.pt"
    torch.save({"format": 2, "kind": "mlp", "head": state, "meta": {"labels": ["a", "b"]}}, path)
    with pytest.raises(ValueError, match="retrain"):
        load_artifact(path)
