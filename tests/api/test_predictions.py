"""POST /api/v1/models/{id}/predict: the shared decode path, the active version, unknowns."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import (
    BAD_INPUTS,
    TREES,
    bearer,
    create_model,
    files_of,
    tree_photos,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow


def test_each_file_gets_its_label_or_its_rejection(client: TestClient, trained_trees: str) -> None:
    test_photo = TREES / "test" / "hemlock" / "test_image.jpg"
    response = client.post(f"/api/v1/models/{trained_trees}/predict",
                           files=files_of(test_photo, BAD_INPUTS / "truncated.jpg"),
                           headers=bearer())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 1
    good, bad = body["results"]
    assert good["label"] == "hemlock"
    assert good["predictions"][0]["label"] == "hemlock"
    assert sum(p["probability"] for p in good["predictions"]) == pytest.approx(1, abs=1e-4)
    assert good["probability"] == good["predictions"][0]["probability"]
    assert bad["status"] == "rejected" and bad["error"]["code"] == "corrupt_image"


def test_prediction_errors(client: TestClient, trained_trees: str) -> None:
    only_bad = client.post(f"/api/v1/models/{trained_trees}/predict",
                           files=files_of(BAD_INPUTS / "not_an_image.jpg"), headers=bearer())
    assert only_bad.status_code == 415
    no_files = client.post(f"/api/v1/models/{trained_trees}/predict", headers=bearer())
    assert no_files.status_code == 400
    bomb = client.post(f"/api/v1/models/{trained_trees}/predict",
                       files=files_of(BAD_INPUTS / "bomb_30000x30000.png"), headers=bearer())
    assert bomb.status_code == 413
    # odd but valid images predict fine through the same decode path
    odd = client.post(f"/api/v1/models/{trained_trees}/predict", headers=bearer(), files=files_of(
        *(BAD_INPUTS / n for n in ("gray16.png", "cmyk.jpg", "wide_4000x10.jpg", "tiny_1x1.jpg",
                                   "animated.gif", "rgba_alpha.png"))))
    assert odd.status_code == 200
    assert all(r["status"] == "ok" for r in odd.json()["results"])


def test_reject_unknown_labels_other_things_unknown(client: TestClient, trained_trees: str) -> None:
    odd = [BAD_INPUTS / name for name in ("rgba_alpha.png", "gray16.png", "wide_4000x10.jpg")]
    response = client.post(f"/api/v1/models/{trained_trees}/predict?reject_unknown=true",
                           files=files_of(TREES / "test" / "hemlock" / "test_image.jpg", *odd),
                           headers=bearer())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    # synthetic drawings are nothing like tree photos
    assert all(r["label"] == "unknown" for r in results[1:]), results
    assert all(len(r["predictions"]) == 2 for r in results)
    plain = client.post(f"/api/v1/models/{trained_trees}/predict", files=files_of(*odd),
                        headers=bearer()).json()["results"]
    assert all(r["label"] in ("hemlock", "japanese_cherry") for r in plain)


def test_reject_unknown_needs_a_calibrated_version(client: TestClient) -> None:
    model_id = create_model(client)
    upload(client, model_id, "hemlock", tree_photos("hemlock")[:1])
    upload(client, model_id, "japanese_cherry", tree_photos("japanese_cherry")[:1])
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    response = client.post(f"/api/v1/models/{model_id}/predict?reject_unknown=true",
                           files=files_of(tree_photos("hemlock")[1]), headers=bearer())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "unknown_not_calibrated"


def test_a_version_whose_head_cannot_load_is_409_with_what_to_do(
        client: TestClient, trained_trees: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    [artifact] = (runtime.settings.models_dir / trained_trees).glob("*.pt")
    # What an older release wrote for its MLP head, a kind this one no longer has.
    torch.save({"format": 2, "kind": "mlp", "head": {}, "meta": {}}, artifact)
    response = client.post(f"/api/v1/models/{trained_trees}/predict", headers=bearer(),
                           files=files_of(TREES / "test" / "hemlock" / "test_image.jpg"))
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "version_unusable" and "Train the model again" in error["message"]
