from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select

from app.db.tables import Image, ModelVersion
from app.services.accounts import create_account
from tests.conftest import (
    OTHER_KEY,
    bearer,
    create_model,
    tree_photos,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow


def _reencoded(path: Path) -> bytes:
    """The same photo as other bytes: JPEG quality 50, as a second upload from a phone might be."""
    with PILImage.open(path) as opened:
        buffer = io.BytesIO()
        opened.convert("RGB").save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def _train(client: TestClient, model_id: str) -> None:
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job


def _review(client: TestClient, model_id: str, query: str = "", key: str | None = None):  # type: ignore[no-untyped-def]
    headers = bearer(key) if key else bearer()
    return client.get(f"/api/v1/models/{model_id}/review{query}", headers=headers)


def test_review_lists_one_photo_in_two_categories(client: TestClient, tmp_path: Path) -> None:
    model_id = create_model(client)
    hemlock, cherry = tree_photos("hemlock"), tree_photos("japanese_cherry")
    assert upload(client, model_id, "hemlock", hemlock).status_code == 200
    assert upload(client, model_id, "japanese_cherry", cherry).status_code == 200
    copy = tmp_path / "cherry_or_hemlock.jpg"
    copy.write_bytes(_reencoded(hemlock[0]))
    copied = upload(client, model_id, "japanese_cherry", [copy]).json()["results"][0]
    assert copied["status"] == "accepted", copied  # other bytes: not refused as the same image
    same = upload(client, model_id, "hemlock", cherry[:1]).json()["results"][0]
    assert same["status"] == "accepted" and same["also_in"] == ["japanese_cherry"], same
    _train(client, model_id)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        ids = {image.filename: image.id for image in session.scalars(
            select(Image).where(Image.model_id == model_id, Image.copy == 0))}

    response = _review(client, model_id)
    assert response.status_code == 200, response.text
    review = response.json()
    assert review["version"] == 1 and review["n_images"] == 22 and review["n_deleted"] == 0
    across = {frozenset((m["image_id"], m["category"]) for m in g["images"]): g
              for g in review["duplicates"] if g["kind"] == "across_categories"}
    reencoded = frozenset({(ids[hemlock[0].name], "hemlock"),
                           (ids["cherry_or_hemlock.jpg"], "japanese_cherry")})
    identical = frozenset({(ids[cherry[0].name], "japanese_cherry"),
                           (same["image_id"], "hemlock")})
    assert set(across) == {reencoded, identical}, review["duplicates"]
    assert across[reencoded]["similarity"] >= review["duplicate_threshold"]
    assert across[identical]["similarity"] > 0.999
    assert across[identical]["identical"] and not across[reencoded]["identical"]
    # The copy's own label disagrees with its twin's: the out-of-fold model says hemlock.
    flagged = {m["image_id"]: m for m in review["suspected_mislabels"]}
    suspect = flagged[ids["cherry_or_hemlock.jpg"]]
    assert suspect == {"image_id": ids["cherry_or_hemlock.jpg"],
                       "file_name": "cherry_or_hemlock.jpg", "category": "japanese_cherry",
                       "suggested_category": "hemlock", "confidence": suspect["confidence"]}
    assert suspect["confidence"] > 0.5
    assert [h["category"] for h in review["hardest"]] == ["hemlock", "japanese_cherry"]
    for group in review["hardest"]:
        assert 1 <= len(group["images"]) <= 3
        assert all(h["image_id"] not in flagged for h in group["images"])
    for cell in review["confusions"]:
        assert cell["category"] != cell["predicted"] and cell["count"] >= len(cell["image_ids"])
    assert _review(client, model_id, "?version=1").json() == review

    # "Keep": the suspect is not flagged again until its label changes.
    copy_id = ids["cherry_or_hemlock.jpg"]
    kept = client.post(f"/api/v1/models/{model_id}/review/keep", json={"image_ids": [copy_id]},
                       headers=bearer())
    assert kept.status_code == 200 and kept.json()["image_ids"] == [copy_id]
    assert copy_id not in {m["image_id"] for m in _review(client, model_id).json()[
        "suspected_mislabels"]}
    other = client.post(f"/api/v1/models/{model_id}/review/keep", json={"image_ids": [10**6]},
                        headers=bearer())
    assert other.status_code == 404
    # Moved to the suggested category: fixed, counted, not listed until the next training.
    assert review["n_fixed"] == 0
    moved = client.patch(f"/api/v1/models/{model_id}/images/{copy_id}",
                         json={"category": "hemlock"}, headers=bearer())
    assert moved.status_code == 200
    after_move = _review(client, model_id).json()
    assert copy_id not in {m["image_id"] for m in after_move["suspected_mislabels"]}
    assert after_move["n_fixed"] == 1

    # An image deleted since training is left out of the review, not an error.
    with runtime.session_factory() as session:
        session.delete(session.get(Image, ids["cherry_or_hemlock.jpg"]))
        session.commit()
    after = _review(client, model_id).json()
    assert after["n_images"] == 21 and after["n_deleted"] == 1
    assert ids["cherry_or_hemlock.jpg"] not in {m["image_id"] for m in after["suspected_mislabels"]}
    assert [frozenset((m["image_id"], m["category"]) for m in g["images"])
            for g in after["duplicates"] if g["kind"] == "across_categories"] == [identical]
    # Keeping every member of a group takes the group off the list.
    both = [image_id for image_id, _ in identical]
    assert client.post(f"/api/v1/models/{model_id}/review/keep", json={"image_ids": both},
                       headers=bearer()).status_code == 200
    assert not [g for g in _review(client, model_id).json()["duplicates"]
                if g["kind"] == "across_categories"]


def test_review_of_a_version_without_review_data_is_409(client: TestClient,
                                                        trained_trees: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        artifact = session.scalars(select(ModelVersion.artifact_path)
                                   .where(ModelVersion.model_id == trained_trees)).one()
    oof = runtime.settings.models_dir / Path(artifact).with_suffix(".oof.json")
    assert oof.is_file()
    oof.unlink()  # as a version trained before reviews existed has none
    response = _review(client, trained_trees)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "review_unavailable"
    assert "trained before reviews existed. Retrain" in error["message"]


def test_unknown_version_is_404_and_untrained_model_409(client: TestClient,
                                                        trained_trees: str) -> None:
    assert _review(client, trained_trees, "?version=1").status_code == 200
    response = _review(client, trained_trees, "?version=2")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "version_not_found"
    assert _review(client, trained_trees, "?version=0").status_code == 422
    untrained = create_model(client, name="empty")
    response = _review(client, untrained)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_not_trained"


def test_another_account_gets_404(client: TestClient, trained_trees: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    assert _review(client, trained_trees).status_code == 200
    for query in ("", "?version=1", "?version=2"):
        response = _review(client, trained_trees, query, key=OTHER_KEY)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"
        assert "hemlock" not in response.text


def test_a_version_without_cross_validation_has_no_review(client: TestClient) -> None:
    model_id = create_model(client)
    for label in ("hemlock", "japanese_cherry"):
        assert upload(client, model_id, label, tree_photos(label)[:1]).status_code == 200
    _train(client, model_id)
    response = _review(client, model_id)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "review_unavailable"
    assert "at least 2 images" in response.json()["error"]["message"]
