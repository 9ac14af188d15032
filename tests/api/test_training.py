from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import (
    TREES,
    bearer,
    create_model,
    files_of,
    make_settings,
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


def test_train_while_a_training_is_waiting_returns_that_job(
        client: TestClient, trained_trees: str) -> None:
    queue = client.app.state.runtime.queue  # type: ignore[attr-defined]
    queue.stop()  # no worker: the job stays queued as long as we look at it
    first = client.post(f"/api/v1/models/{trained_trees}/train", headers=bearer()).json()
    second = client.post(f"/api/v1/models/{trained_trees}/train", headers=bearer()).json()
    assert second["job_id"] == first["job_id"]
    assert client.get(f"/api/v1/models/{trained_trees}", headers=bearer()).json()["state"] == (
        "training")
    queue.start()  # resumes the queued job, which was also submitted: it must run once
    job = wait_for_job(client, first["job_id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["progress"] == 1.0 and job["stage"] == "done"
    model = client.get(f"/api/v1/models/{trained_trees}", headers=bearer()).json()
    assert model["version"]["number"] == 2 and model["state"] == "ready"


def test_a_failed_retraining_keeps_the_previous_version_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, extract_on_upload=False)
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client)
        for label in ("hemlock", "japanese_cherry"):
            upload(client, model_id, label, tree_photos(label)[:4])
        job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
        assert wait_for_job(client, job_id)["status"] == "succeeded"
        # The store loses a new image's bytes before its features were ever extracted.
        added = upload(client, model_id, "hemlock", tree_photos("hemlock")[4:5]).json()
        client.app.state.runtime.blobs.delete(  # type: ignore[attr-defined]
            added["results"][0]["sha256"], in_use=lambda: False)

        job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
        failed = wait_for_job(client, job_id)
        assert failed["status"] == "failed" and failed["error"]
        model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
        assert model["state"] == "ready"
        assert model["version"]["number"] == 1
        predicted = client.post(f"/api/v1/models/{model_id}/predict", headers=bearer(),
                                files=files_of(TREES / "test" / "hemlock" / "test_image.jpg"))
        assert predicted.status_code == 200 and predicted.json()["version"] == 1


def test_the_version_serves_before_its_learning_curve_and_a_failed_curve_fails_nothing(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import app.ml.curve as curve_module
    from app.db.tables import Model

    seen: list[tuple[object, object, object]] = []

    def failing_summarize(*args, **kwargs):  # type: ignore[no-untyped-def]
        with runtime.session_factory() as session:
            model = session.get(Model, model_id)
            seen.append((model.active_version.number, str(model.active_version.status),
                         str(model.state)))
        raise ValueError("no curve for this one")

    monkeypatch.setattr(curve_module, "summarize", failing_summarize)
    settings = make_settings(tmp_path, extract_on_upload=False)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        model_id = create_model(client)
        for label in ("hemlock", "japanese_cherry"):
            upload(client, model_id, label, tree_photos(label)[:4])
        job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
        assert wait_for_job(client, job_id)["status"] == "succeeded"
        # While the curve was being measured the new version was already the active, ready one.
        assert seen == [(1, "ready", "training")]
        model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
        assert model["state"] == "ready" and model["metrics"]["accuracy"] > 0
        assert model["metrics"]["learning_curve"] is None
        metrics = client.get(f"/api/v1/models/{model_id}/metrics", headers=bearer())
        assert metrics.status_code == 200 and metrics.json()["learning_curve"] is None
