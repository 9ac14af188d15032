from __future__ import annotations

import pytest
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


def test_train_reports_honest_metrics_and_predicts(client: TestClient, trained_trees: str) -> None:
    model = client.get(f"/api/v1/models/{trained_trees}", headers=bearer()).json()
    assert model["state"] == "ready"
    assert model["backbone"] == "mobilenet_v2"
    metrics = model["metrics"]
    assert metrics["n_images"] == 20
    assert metrics["method"].startswith("nested stratified")
    assert metrics["accuracy"] >= 0.8
    assert metrics["confusion_matrix"]["labels"] == ["hemlock", "japanese_cherry"]
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 20
    assert {c["label"] for c in metrics["per_class"]} == {"hemlock", "japanese_cherry"}
    assert model["version"]["number"] == 1 and model["version"]["image_count"] == 20

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


def test_untrained_and_incomplete_models(client: TestClient) -> None:
    model_id = create_model(client)
    untrained = client.post(f"/api/v1/models/{model_id}/predict",
                            files=files_of(tree_photos("hemlock")[0]), headers=bearer())
    assert untrained.status_code == 409
    assert untrained.json()["error"]["code"] == "model_not_trained"
    upload(client, model_id, "hemlock", tree_photos("hemlock")[:3])
    empty = client.post(f"/api/v1/models/{model_id}/train", headers=bearer())
    assert empty.status_code == 422
    assert "japanese_cherry" in empty.json()["error"]["message"]


def test_one_image_per_class_trains_without_fake_metrics(client: TestClient) -> None:
    model_id = create_model(client)
    upload(client, model_id, "hemlock", tree_photos("hemlock")[:1])
    upload(client, model_id, "japanese_cherry", tree_photos("japanese_cherry")[:1])
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["state"] == "ready"
    assert model["metrics"] is None
    assert "2 images" in model["metrics_note"]


def test_retraining_makes_a_new_version_and_train_is_idempotent_while_queued(
        client: TestClient, trained_trees: str) -> None:
    first = client.post(f"/api/v1/models/{trained_trees}/train", headers=bearer()).json()
    second = client.post(f"/api/v1/models/{trained_trees}/train", headers=bearer()).json()
    job = wait_for_job(client, first["job_id"])
    assert job["status"] == "succeeded"
    if second["job_id"] != first["job_id"]:  # the first had already finished
        assert wait_for_job(client, second["job_id"])["status"] == "succeeded"
    model = client.get(f"/api/v1/models/{trained_trees}", headers=bearer()).json()
    assert model["version"]["number"] >= 2
    assert job["progress"] == 1.0 and job["stage"] == "done"
