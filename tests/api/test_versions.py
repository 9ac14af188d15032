"""Versions: one per training, immutable; rollback, activation policies, failures, retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.accounts import create_account
from tests.conftest import (
    OTHER_KEY,
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

PROBE = [TREES / "test" / "hemlock" / "test_image.jpg", *tree_photos("japanese_cherry")[:2]]


def train(client: TestClient, model_id: str, activate: str | None = None,
          expect: str = "succeeded") -> dict[str, Any]:
    body = {"activate": activate} if activate else None
    response = client.post(f"/api/v1/models/{model_id}/train", json=body, headers=bearer())
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == expect, job
    return job


def predict(client: TestClient, model_id: str, query: str = "") -> dict[str, Any]:
    response = client.post(f"/api/v1/models/{model_id}/predict{query}", files=files_of(*PROBE),
                           headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()


def versions(client: TestClient, model_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/models/{model_id}/versions", headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()


def image_ids(client: TestClient, model_id: str, category: str) -> list[int]:
    items = client.get(f"/api/v1/models/{model_id}/images?category={category}&per_page=200",
                       headers=bearer()).json()["items"]
    return [item["id"] for item in items]


def test_rollback_answers_with_the_earlier_version_exactly(client: TestClient,
                                                           tmp_path: Path) -> None:
    model_id = create_model(client)
    hemlock, cherry = tree_photos("hemlock"), tree_photos("japanese_cherry")
    upload(client, model_id, "hemlock", hemlock[:-3])
    upload(client, model_id, "japanese_cherry", cherry[:-3])
    train(client, model_id)
    first = predict(client, model_id)
    assert first["version"] == 1

    upload(client, model_id, "hemlock", hemlock[-3:])
    upload(client, model_id, "japanese_cherry", cherry[-3:])
    train(client, model_id)
    assert predict(client, model_id)["version"] == 2

    listed = versions(client, model_id)
    assert listed["active_version"] == 2 and listed["total"] == 2
    assert [(v["number"], v["status"], v["active"]) for v in listed["items"]] == [
        (2, "ready", True), (1, "ready", False)]
    second = client.get(f"/api/v1/models/{model_id}/versions/2", headers=bearer()).json()
    assert second["activation"] == {"policy": "always", "activated": True,
                                    "reason": "activate=always"}
    assert second["changes"]["since_version"] == 1
    assert second["changes"]["images_added"] == 6 and second["changes"]["images_removed"] == 0
    assert {c["category"]: c["added"] for c in second["changes"]["per_category"]} == {
        "hemlock": 3, "japanese_cherry": 3}
    assert len(second["images"]) == second["image_count"] == len(hemlock) + len(cherry)
    assert all(len(i["sha256"]) == 64 and i["category"] in ("hemlock", "japanese_cherry")
               for i in second["images"])
    assert second["settings"]["activate"] == "always" and second["settings"]["backbones"]
    assert second["metrics"]["accuracy"] == second["accuracy"]

    # Rollback: immediate, no training, and the very same answers as before.
    activated = client.post(f"/api/v1/models/{model_id}/versions/1/activate", headers=bearer())
    assert activated.status_code == 200, activated.text
    assert activated.json()["changed"] and activated.json()["active_version"]["number"] == 1
    assert predict(client, model_id) == first
    assert predict(client, model_id, "?version=2")["version"] == 2
    again = client.post(f"/api/v1/models/{model_id}/versions/1/activate", headers=bearer())
    assert again.status_code == 200 and not again.json()["changed"]
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["version"]["number"] == 1 and model["state"] == "ready"
    metrics = client.get(f"/api/v1/models/{model_id}/metrics?version=2", headers=bearer())
    assert metrics.status_code == 200 and metrics.json()["version"] == 2

    # The active version cannot be deleted; another can, with its files.
    refused = client.delete(f"/api/v1/models/{model_id}/versions/1", headers=bearer())
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_active"
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    model_files = runtime.settings.models_dir / model_id
    assert len(list(model_files.glob("*.pt"))) == 2
    assert client.delete(f"/api/v1/models/{model_id}/versions/2",
                         headers=bearer()).status_code == 204
    assert len(list(model_files.glob("*.pt"))) == 1
    assert not list(model_files.glob(f"{second['id']}*"))
    gone = client.post(f"/api/v1/models/{model_id}/predict?version=2", files=files_of(PROBE[0]),
                       headers=bearer())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "version_not_found"
    assert predict(client, model_id) == first


def test_if_better_keeps_a_worse_version_inactive(client: TestClient) -> None:
    model_id = create_model(client)
    upload(client, model_id, "hemlock", tree_photos("hemlock"))
    upload(client, model_id, "japanese_cherry", tree_photos("japanese_cherry"))
    train(client, model_id)
    first = predict(client, model_id)
    # Labels swapped on purpose for about half of each category: a worse training set.
    hemlock, cherry = image_ids(client, model_id, "hemlock"), image_ids(client, model_id,
                                                                         "japanese_cherry")
    for ids, target in ((hemlock[::2], "japanese_cherry"), (cherry[::2], "hemlock")):
        moved = client.post(f"/api/v1/models/{model_id}/images/bulk", headers=bearer(),
                            json={"action": "move", "image_ids": ids, "category": target})
        assert moved.status_code == 200, moved.text
    job = train(client, model_id, activate="if_better")
    assert job["result"]["activated"] is False

    listed = versions(client, model_id)
    assert listed["active_version"] == 1
    worse = client.get(f"/api/v1/models/{model_id}/versions/2", headers=bearer()).json()
    assert worse["status"] == "ready" and not worse["active"]
    assert worse["activation"]["policy"] == "if_better"
    assert worse["activation"]["activated"] is False
    assert "which stays active" in worse["activation"]["reason"]
    assert worse["accuracy"] < listed["items"][1]["accuracy"]
    assert worse["changes"]["images_added"] == worse["changes"]["images_removed"] > 0
    assert predict(client, model_id) == first

    # `never` keeps even a better one aside until someone activates it.
    for ids, target in ((hemlock[::2], "hemlock"), (cherry[::2], "japanese_cherry")):
        client.post(f"/api/v1/models/{model_id}/images/bulk", headers=bearer(),
                    json={"action": "move", "image_ids": ids, "category": target})
    assert train(client, model_id, activate="never")["result"]["activated"] is False
    assert versions(client, model_id)["active_version"] == 1
    bad = client.post(f"/api/v1/models/{model_id}/train", json={"activate": "sometimes"},
                      headers=bearer())
    assert bad.status_code == 422


def test_a_failed_training_leaves_the_active_version_serving(
        client: TestClient, trained_trees: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = predict(client, trained_trees)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the fit blew up")

    monkeypatch.setattr("app.ml.select.fit_model", broken)
    job = train(client, trained_trees, expect="failed")
    # An unexpected exception is not a message for users: they get the reason, the log the text.
    assert job["error"] == ("Training failed: an unexpected error; the server log has the "
                            f"details (job {job['id']}).")
    failed = client.get(f"/api/v1/models/{trained_trees}/versions/2", headers=bearer()).json()
    assert failed["status"] == "failed" and failed["error"] == job["error"]
    assert failed["backbone"] is None and failed["metrics"] is None and not failed["active"]
    model = client.get(f"/api/v1/models/{trained_trees}", headers=bearer()).json()
    assert model["state"] == "ready" and model["version"]["number"] == 1
    assert predict(client, trained_trees) == before
    not_ready = client.post(f"/api/v1/models/{trained_trees}/versions/2/activate",
                            headers=bearer())
    assert not_ready.status_code == 409
    assert not_ready.json()["error"]["code"] == "version_not_ready"


def test_a_version_whose_backbone_is_gone_is_a_409_not_a_500(
        client: TestClient, trained_trees: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.ml.backbones.available_backbones", lambda: [])
    response = client.post(f"/api/v1/models/{trained_trees}/predict", files=files_of(PROBE[0]),
                           headers=bearer())
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "backbone_unavailable" and "Train the model again" in error["message"]


def test_old_versions_are_pruned_with_their_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", keep_versions=2)
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client)
        upload(client, model_id, "hemlock", tree_photos("hemlock")[:4])
        upload(client, model_id, "japanese_cherry", tree_photos("japanese_cherry")[:4])
        for _ in range(3):
            train(client, model_id)
        listed = versions(client, model_id)
        assert [v["number"] for v in listed["items"]] == [3, 2]
        assert len(list((settings.models_dir / model_id).glob("*.pt"))) == 2
        # The active version is never pruned, however old.
        client.post(f"/api/v1/models/{model_id}/versions/2/activate", headers=bearer())
        train(client, model_id, activate="never")
        assert [v["number"] for v in versions(client, model_id)["items"]] == [4, 2]


def test_versions_of_another_account_are_404(client: TestClient, trained_trees: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    other = bearer(OTHER_KEY)
    base = f"/api/v1/models/{trained_trees}/versions"
    for method, path in (("GET", base), ("GET", f"{base}/1"), ("POST", f"{base}/1/activate"),
                         ("DELETE", f"{base}/1")):
        response = client.request(method, path, headers=other)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get(f"{base}/9", headers=bearer()).status_code == 404
    assert versions(client, trained_trees)["active_version"] == 1
