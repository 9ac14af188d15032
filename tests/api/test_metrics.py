from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import Job
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


def test_metrics_of_a_trained_model(client: TestClient, trained_trees: str) -> None:
    response = client.get(f"/api/v1/models/{trained_trees}/metrics", headers=bearer())
    assert response.status_code == 200, response.text
    metrics = response.json()
    assert metrics["version"] == 1 and metrics["n_images"] == 20
    assert metrics["backbone"] == "mobilenet_v2"
    assert metrics["head"] in ("logistic", "prototype", "mlp")
    for key in ("accuracy", "balanced_accuracy", "log_loss", "calibration_error"):
        assert 0 <= metrics[key] <= (1 if key != "log_loss" else 50), key
    assert metrics["confusion_matrix"]["labels"] == ["hemlock", "japanese_cherry"]
    assert {c["label"] for c in metrics["per_class"]} == {"hemlock", "japanese_cherry"}
    assert all({"precision", "recall", "f1"} <= set(c) for c in metrics["per_class"])
    assert metrics["candidates"], "the selection table is reported"
    curve = metrics["learning_curve"]
    sizes = [p["images_per_class"] for p in curve["points"]]
    assert sizes == sorted(sizes) and sizes[0] == 1
    assert [p["images_per_class"] for p in curve["projection"]] == [20, 40, 100]
    assert curve["advice"].endswith(".")
    assert metrics["unknown_threshold"] is not None


def test_metrics_before_training_is_409(client: TestClient) -> None:
    model_id = create_model(client)
    response = client.get(f"/api/v1/models/{model_id}/metrics", headers=bearer())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_not_trained"


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


def test_upload_starts_background_feature_extraction(client: TestClient) -> None:
    model_id = create_model(client)
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:3]).status_code == 200
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.queue.join(timeout=120)
    with runtime.session_factory() as session:
        jobs = session.scalars(select(Job).where(Job.nanonet_id == model_id)).all()
    assert [(j.kind, j.status) for j in jobs] == [("extract", "succeeded")]
    digests = [r["sha256"] for r in upload(client, model_id, "hemlock",
                                           tree_photos("hemlock")[:3]).json()["results"]]
    assert all(runtime.features.get(d, "mobilenet_v2") is not None for d in digests)


def test_reject_unknown_when_the_detector_uses_another_backbone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app
    from tests.conftest import make_settings, wait_for_job

    settings = make_settings(tmp_path, backbones="mobilenet_v2,efficientnet_lite2")
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client)
        for label in ("hemlock", "japanese_cherry"):
            upload(client, model_id, label, tree_photos(label))
        job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
        assert wait_for_job(client, job_id)["status"] == "succeeded"
        for reject in ("true", "false"):
            response = client.post(f"/api/v1/models/{model_id}/predict?reject_unknown={reject}",
                                   files=files_of(TREES / "test" / "hemlock" / "test_image.jpg",
                                                  BAD_INPUTS / "rgba_alpha.png"),
                                   headers=bearer())
            assert response.status_code == 200, response.text
        assert response.json()["results"][0]["label"] == "hemlock"
