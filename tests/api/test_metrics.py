from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import Job
from tests.conftest import (
    bearer,
    create_model,
    tree_photos,
    upload,
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


def test_upload_starts_background_feature_extraction(client: TestClient) -> None:
    model_id = create_model(client)
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:3]).status_code == 200
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.queue.join(timeout=120)
    with runtime.session_factory() as session:
        jobs = session.scalars(select(Job).where(Job.model_id == model_id)).all()
    assert [(j.kind, j.status) for j in jobs] == [("extract", "succeeded")]
    digests = [r["sha256"] for r in upload(client, model_id, "hemlock",
                                           tree_photos("hemlock")[:3]).json()["results"]]
    assert all(runtime.features.get(d, "mobilenet_v2") is not None for d in digests)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "metrics"), ("GET", "review"), ("GET", "export"), ("POST", "predict"),
    ("POST", "predict/urls"), ("POST", "batch-predictions")])
def test_a_version_past_64_bits_is_422_not_500(client: TestClient, method: str,
                                               path: str) -> None:
    # schemathesis found GET .../metrics?version=5944897633209971552959856640 overflowing the
    # driver (a 500)
    model_id = create_model(client)
    response = client.request(method, f"/api/v1/models/{model_id}/{path}",
                              params={"version": str(2**63)}, headers=bearer())
    assert response.status_code == 422, response.text
    assert client.request(method, f"/api/v1/models/{model_id}/{path}",
                          params={"version": str(2**63 - 1)},
                          headers=bearer()).status_code != 500
