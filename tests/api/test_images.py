from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from app.api.routes.images import attachment
from app.db.tables import Job, JobStatus, Model, ModelVersion
from app.main import create_app
from app.ml.imaging import decode_image
from app.runtime import Runtime
from app.services.accounts import create_account
from app.services.models import training_set
from tests.conftest import (
    API_KEY,
    BAD_INPUTS,
    OTHER_KEY,
    bearer,
    create_model,
    files_of,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)

# The answers ../shared/datasets/bad_inputs/README.md asks of a robust service.
REJECTED = {
    "truncated.jpg": (422, "corrupt_image"),
    "empty.jpg": (400, "empty_file"),
    "not_an_image.jpg": (415, "not_an_image"),
    "bomb_30000x30000.png": (413, "image_too_large"),
    "bomb_12000x12000.png": (413, "image_too_large"),
}
ACCEPTED = {
    "rgba_alpha.png": (256, 256),
    "grayscale.jpg": (320, 240),
    "cmyk.jpg": (320, 240),
    "tiny_1x1.jpg": (1, 1),
    "wide_4000x10.jpg": (4000, 10),
    "animated.gif": (64, 64),
    "image.webp": (320, 240),
    "exif_rotated.jpg": (300, 400),
    "jpeg_named.png": (320, 240),
    "gray16.png": (256, 64),
}


def stored_blobs(client: TestClient) -> list[str]:
    root = client.app.state.runtime.settings.images_dir  # type: ignore[attr-defined]
    return [name for _, _, names in os.walk(root) for name in names]


def test_bad_inputs_cover_every_file() -> None:
    files = {p.name for p in BAD_INPUTS.iterdir() if p.suffix != ".md" and p.suffix != ".py"}
    assert files == set(REJECTED) | set(ACCEPTED)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_file_gets_its_answer_and_is_not_stored(client: TestClient, name: str) -> None:
    model_id = create_model(client)
    response = upload(client, model_id, "hemlock", [BAD_INPUTS / name])
    status, code = REJECTED[name]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["details"]["results"][0]["status"] == "rejected"
    assert stored_blobs(client) == []
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert all(category["count"] == 0 for category in model["categories"])
    # the service keeps serving
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:1]).status_code == 200


def test_odd_but_valid_files_are_accepted_with_displayed_size(client: TestClient) -> None:
    model_id = create_model(client)
    response = upload(client, model_id, "hemlock", [BAD_INPUTS / name for name in ACCEPTED])
    assert response.status_code == 200, response.text
    results = {r["file"]: r for r in response.json()["results"]}
    for name, (width, height) in ACCEPTED.items():
        assert results[name]["status"] == "accepted", results[name]
        assert (results[name]["width"], results[name]["height"]) == (width, height), name
    assert response.json()["accepted"] == len(ACCEPTED)


def test_batch_reports_each_file_and_keeps_only_good_ones(client: TestClient) -> None:
    model_id = create_model(client)
    good = tree_photos("hemlock")[:2]
    response = upload(client, model_id, "hemlock",
                      [good[0], BAD_INPUTS / "truncated.jpg", good[1], BAD_INPUTS / "empty.jpg"])
    assert response.status_code == 200
    statuses = [r["status"] for r in response.json()["results"]]
    assert statuses == ["accepted", "rejected", "accepted", "rejected"]
    assert len(stored_blobs(client)) == 2
    again = upload(client, model_id, "hemlock", good[:1]).json()["results"][0]
    assert again["status"] == "duplicate"
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["categories"] == [{"name": "hemlock", "count": 2},
                                   {"name": "japanese_cherry", "count": 0}]


def test_same_bytes_in_a_second_category_are_kept_as_a_copy(client: TestClient) -> None:
    model_id = create_model(client)
    photo = tree_photos("hemlock")[0]
    first = upload(client, model_id, "hemlock", [photo]).json()["results"][0]
    copy = upload(client, model_id, "japanese_cherry", [photo]).json()["results"][0]
    assert copy["status"] == "accepted" and copy["also_in"] == ["hemlock"], copy
    assert copy["image_id"] != first["image_id"] and copy["sha256"] == first["sha256"]
    assert first.get("also_in") is None
    assert len(stored_blobs(client)) == 1  # one blob behind both rows
    again = upload(client, model_id, "japanese_cherry", [photo]).json()["results"][0]
    assert again == {**again, "status": "duplicate", "image_id": copy["image_id"]}
    pooled = upload(client, model_id, None, [photo]).json()["results"][0]
    assert pooled["status"] == "duplicate"
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["categories"] == [{"name": "hemlock", "count": 1},
                                   {"name": "japanese_cherry", "count": 1}]

    # Moving the copy next to its twin would make them a repeat: refused, nothing changed.
    moved = client.patch(f"/api/v1/models/{model_id}/images/{copy['image_id']}",
                         json={"category": "hemlock"}, headers=bearer())
    assert moved.status_code == 409, moved.text
    error = moved.json()["error"]
    assert error["code"] == "already_in_category" and str(first["image_id"]) in error["message"]
    both = client.post(f"/api/v1/models/{model_id}/images/bulk", headers=bearer(), json={
        "action": "move", "image_ids": [first["image_id"], copy["image_id"]], "category": None})
    assert both.status_code == 409, both.text
    items = client.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()["items"]
    assert [(i["id"], i["category"]) for i in items] == [(first["image_id"], "hemlock"),
                                                         (copy["image_id"], "japanese_cherry")]
    # Deleting one copy keeps the blob for the other.
    gone = client.delete(f"/api/v1/models/{model_id}/images/{first['image_id']}",
                         headers=bearer())
    assert gone.status_code in (200, 204), gone.text
    assert len(stored_blobs(client)) == 1
    assert client.patch(f"/api/v1/models/{model_id}/images/{copy['image_id']}",
                        json={"category": "hemlock"}, headers=bearer()).status_code == 200


def test_content_decides_not_name_or_content_type(client: TestClient) -> None:
    model_id = create_model(client)
    photo = tree_photos("hemlock")[0]
    response = client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                           files=[("files", ("notes.txt", photo.read_bytes(), "text/plain"))],
                           headers=bearer())
    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == "accepted"


def test_30_mb_upload_is_413(client: TestClient) -> None:
    model_id = create_model(client)
    blob = os.urandom(30 * 1024 * 1024)
    response = client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                           files=[("files", ("big.jpg", blob, "image/jpeg"))], headers=bearer())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert stored_blobs(client) == []


def test_missing_files_unknown_category_and_blank_category(client: TestClient) -> None:
    model_id = create_model(client)
    no_files = client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                           headers=bearer())
    assert no_files.status_code == 400 and no_files.json()["error"]["code"] == "no_files"
    unknown = upload(client, model_id, "oak", tree_photos("hemlock")[:1])
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_category"
    blank = client.post(f"/api/v1/models/{model_id}/images", data={"category": "  "},
                        files=files_of(*tree_photos("hemlock")[:1]), headers=bearer())
    assert blank.status_code == 200 and blank.json()["category"] is None  # the pool


@pytest.mark.parametrize(("limit", "code"), [({"max_request_bytes": 100_000}, "request_too_large"),
                                           ({"max_files_per_request": 2}, "too_many_files")])
def test_a_request_over_a_limit_is_413_before_anything_is_stored(
        tmp_path, limit: dict[str, int], code: str) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(tmp_path, **limit))) as small:
        model_id = create_model(small)
        response = upload(small, model_id, "hemlock", tree_photos("hemlock")[:3])  # ~130 kB
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == code and str(next(iter(limit.values()))) in error["message"]
        assert stored_blobs(small) == []
        assert upload(small, model_id, "hemlock", tree_photos("hemlock")[:1]).status_code == 200


def test_the_same_image_uploaded_twice_at_once_is_stored_once(client: TestClient) -> None:
    model_id = create_model(client)
    photos = tree_photos("hemlock")[:6]
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda _: upload(client, model_id, "hemlock", photos), range(2)))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    results = [r.json()["results"] for r in responses]
    for first, second in zip(*results, strict=True):
        assert {first["status"], second["status"]} <= {"accepted", "duplicate"}
        assert first["image_id"] == second["image_id"]  # one row, whoever wrote it
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["categories"][0]["count"] == len(photos)


# --- Browsing and fixing images: list, read, thumbnail, original, move, delete, the pool ---

HEMLOCK, CHERRY = tree_photos("hemlock"), tree_photos("japanese_cherry")


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[TestClient]:
    """A client without background extraction: these tests need no backbone."""
    with TestClient(create_app(make_settings(tmp_path / "data", extract_on_upload=False))) as c:
        yield c


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


def pool_upload(client: TestClient, model_id: str, paths: list[Path], key: str = API_KEY):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/images", files=files_of(*paths),
                       headers=bearer(key))


def image_ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [result["image_id"] for result in response.json()["results"]]


def images_of(client: TestClient, model_id: str, **query: object) -> dict:  # type: ignore[type-arg]
    response = client.get(f"/api/v1/models/{model_id}/images", params=query, headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()


def counts(client: TestClient, model_id: str) -> dict[str, int]:
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    return {category["name"]: category["count"] for category in model["categories"]}


def test_images_are_listed_by_category_and_pool_a_page_at_a_time(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    hemlock = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:3]))
    cherry = image_ids(upload(quiet, model_id, "japanese_cherry", CHERRY[:2]))
    pool = image_ids(pool_upload(quiet, model_id, HEMLOCK[3:5]))

    everything = images_of(quiet, model_id)
    assert (everything["total"], everything["page"], everything["per_page"]) == (7, 1, 50)
    assert [item["id"] for item in everything["items"]] == hemlock + cherry + pool
    first = everything["items"][0]
    assert first["category"] == "hemlock" and first["file_name"] == HEMLOCK[0].name
    assert first["bytes"] == HEMLOCK[0].stat().st_size
    assert first["sha256"] == hashlib.sha256(HEMLOCK[0].read_bytes()).hexdigest()
    assert first["width"] > 0 and first["height"] > 0 and first["created_at"]
    assert quiet.get(first["thumbnail_url"], headers=bearer()).status_code == 200

    assert [i["id"] for i in images_of(quiet, model_id, category="hemlock")["items"]] == hemlock
    unlabelled = images_of(quiet, model_id, labelled="false")
    assert [i["id"] for i in unlabelled["items"]] == pool and unlabelled["total"] == 2
    assert all(item["category"] is None for item in unlabelled["items"])
    assert images_of(quiet, model_id, labelled="true")["total"] == 5
    assert images_of(quiet, model_id, category="hemlock", labelled="false")["total"] == 0

    second = images_of(quiet, model_id, page=2, per_page=3)
    assert [i["id"] for i in second["items"]] == (hemlock + cherry + pool)[3:6]
    assert second["total"] == 7 and second["per_page"] == 3
    assert images_of(quiet, model_id, page=9)["items"] == []
    assert images_of(quiet, model_id, per_page=200)["total"] == 7

    for bad in ({"per_page": 201}, {"per_page": 0}, {"page": 0}, {"labelled": "maybe"}):
        response = quiet.get(f"/api/v1/models/{model_id}/images", params=bad, headers=bearer())
        assert response.status_code == 422, bad
    unknown = quiet.get(f"/api/v1/models/{model_id}/images", params={"category": "oak"},
                        headers=bearer())
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_category"
    assert "'hemlock'" in unknown.json()["error"]["message"]
    assert "'japanese_cherry'" in unknown.json()["error"]["message"]

    one = quiet.get(f"/api/v1/models/{model_id}/images/{pool[0]}", headers=bearer())
    assert one.status_code == 200 and one.json() == unlabelled["items"][0]
    missing = quiet.get(f"/api/v1/models/{model_id}/images/{pool[-1] + 1}", headers=bearer())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_found"


def test_an_upload_without_category_goes_to_the_pool_which_training_ignores(
        quiet: TestClient) -> None:
    model_id = create_model(quiet)
    response = pool_upload(quiet, model_id, HEMLOCK[:2])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["category"] is None and body["accepted"] == 2
    assert counts(quiet, model_id) == {"hemlock": 0, "japanese_cherry": 0}
    model = quiet.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["unlabelled"] == 2
    listed = quiet.get("/api/v1/models", headers=bearer()).json()["models"]
    assert {m["id"]: m["unlabelled"] for m in listed}[model_id] == 2
    # Only pool images: nothing to train on, and the refusal names both categories.
    refused = quiet.post(f"/api/v1/models/{model_id}/train", headers=bearer())
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "not_enough_images"

    again = pool_upload(quiet, model_id, HEMLOCK[:1]).json()["results"][0]
    assert again["status"] == "duplicate" and again["image_id"] == body["results"][0]["image_id"]
    labelled = image_ids(upload(quiet, model_id, "japanese_cherry", CHERRY[:1]))
    as_pool = pool_upload(quiet, model_id, CHERRY[:1]).json()["results"][0]
    assert as_pool["status"] == "duplicate" and as_pool["image_id"] == labelled[0]
    assert images_of(quiet, model_id, category="japanese_cherry")["total"] == 1

    # Uploading a pool image into a category labels that same row.
    into = upload(quiet, model_id, "hemlock", HEMLOCK[:1]).json()
    assert into["results"][0]["status"] == "accepted" and into["accepted"] == 1
    assert into["results"][0]["image_id"] == body["results"][0]["image_id"]
    assert counts(quiet, model_id) == {"hemlock": 1, "japanese_cherry": 1}
    assert images_of(quiet, model_id, labelled="false")["total"] == 1
    assert images_of(quiet, model_id)["total"] == 3
    assert quiet.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["unlabelled"] == 1


def test_training_set_leaves_out_the_pool(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    labelled = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:2]))
    labelled += image_ids(upload(quiet, model_id, "japanese_cherry", CHERRY[:1]))
    pool_upload(quiet, model_id, HEMLOCK[2:5])
    with runtime_of(quiet).session_factory() as session:
        rows = training_set(session, model_id=model_id)
    assert [image_id for image_id, _, _ in rows] == labelled
    assert [position for _, _, position in rows] == [0, 0, 1]


def test_patch_moves_an_image_or_returns_it_to_the_pool(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    [image_id] = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:1]))
    url = f"/api/v1/models/{model_id}/images/{image_id}"

    moved = quiet.patch(url, json={"category": "japanese_cherry"}, headers=bearer())
    assert moved.status_code == 200 and moved.json()["category"] == "japanese_cherry"
    assert counts(quiet, model_id) == {"hemlock": 0, "japanese_cherry": 1}
    pooled = quiet.patch(url, json={"category": None}, headers=bearer())
    assert pooled.status_code == 200 and pooled.json()["category"] is None
    assert counts(quiet, model_id) == {"hemlock": 0, "japanese_cherry": 0}
    assert images_of(quiet, model_id, labelled="false")["items"][0]["id"] == image_id
    back = quiet.patch(url, json={"category": "hemlock"}, headers=bearer())
    assert back.json()["category"] == "hemlock"
    assert quiet.get(url, headers=bearer()).json()["category"] == "hemlock"

    unknown = quiet.patch(url, json={"category": "oak"}, headers=bearer())
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_category"
    assert quiet.patch(url, json={}, headers=bearer()).status_code == 422
    gone = quiet.patch(f"{url}0", json={"category": None}, headers=bearer())
    assert gone.status_code == 404
    assert counts(quiet, model_id) == {"hemlock": 1, "japanese_cherry": 0}


def test_bulk_changes_all_images_or_none(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    ids = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:4]))
    other_model = create_model(quiet, name="other")
    [foreign] = image_ids(upload(quiet, other_model, "hemlock", HEMLOCK[5:6]))
    bulk = f"/api/v1/models/{model_id}/images/bulk"
    before = images_of(quiet, model_id)
    blobs = sorted(stored_blobs(quiet))

    for action in ({"action": "move", "category": "japanese_cherry"}, {"action": "delete"}):
        response = quiet.post(bulk, json={**action, "image_ids": [ids[0], foreign, 99999]},
                              headers=bearer())
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "image_not_found"
        assert error["details"]["missing"] == sorted([foreign, 99999])
        assert str(foreign) in error["message"] and "99999" in error["message"]
        assert images_of(quiet, model_id) == before
        assert sorted(stored_blobs(quiet)) == blobs
    unknown = quiet.post(bulk, json={"action": "move", "image_ids": ids, "category": "oak"},
                         headers=bearer())
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_category"
    for bad in ({"action": "move", "image_ids": ids}, {"action": "rename", "image_ids": ids},
                {"action": "delete", "image_ids": ids, "category": None},
                {"action": "delete", "image_ids": []}):
        assert quiet.post(bulk, json=bad, headers=bearer()).status_code == 422, bad
    assert images_of(quiet, model_id) == before

    moved = quiet.post(bulk, json={"action": "move", "image_ids": ids[:3] + ids[:1],
                                   "category": "japanese_cherry"}, headers=bearer())
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"action": "move", "image_ids": ids[:3], "category": "japanese_cherry"}
    assert counts(quiet, model_id) == {"hemlock": 1, "japanese_cherry": 3}
    pooled = quiet.post(bulk, json={"action": "move", "image_ids": ids[1:3], "category": None},
                        headers=bearer())
    assert pooled.json()["category"] is None
    assert images_of(quiet, model_id, labelled="false")["total"] == 2

    deleted = quiet.post(bulk, json={"action": "delete", "image_ids": ids[:3]}, headers=bearer())
    assert deleted.status_code == 200 and deleted.json()["image_ids"] == ids[:3]
    assert [item["id"] for item in images_of(quiet, model_id)["items"]] == [ids[3]]
    assert counts(quiet, model_id) == {"hemlock": 1, "japanese_cherry": 0}
    assert len(stored_blobs(quiet)) == len(blobs) - 3


def test_a_shared_blob_leaves_the_disk_with_its_last_image(quiet: TestClient) -> None:
    runtime = runtime_of(quiet)
    photo = HEMLOCK[0]
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    first, second = create_model(quiet, name="first"), create_model(quiet, name="second")
    [in_first] = image_ids(upload(quiet, first, "hemlock", [photo]))
    [in_second] = image_ids(pool_upload(quiet, second, [photo]))
    assert quiet.get(f"/api/v1/models/{first}/images/{in_first}/thumbnail",
                     headers=bearer()).status_code == 200
    runtime.features.put(digest, "mobilenet_v2", np.ones(8, dtype=np.float32))
    blob = runtime.blobs.path(digest)
    thumbnail = runtime.settings.thumbnails_dir / digest[:2] / f"{digest}.jpg"
    feature = runtime.features.path(digest, "mobilenet_v2")
    assert blob.exists() and thumbnail.exists() and feature.exists()

    assert quiet.delete(f"/api/v1/models/{first}/images/{in_first}",
                        headers=bearer()).status_code == 204
    assert quiet.get(f"/api/v1/models/{first}/images/{in_first}",
                     headers=bearer()).status_code == 404
    assert blob.exists() and thumbnail.exists() and feature.exists()
    original = quiet.get(f"/api/v1/models/{second}/images/{in_second}/original",
                         headers=bearer())
    assert original.content == photo.read_bytes()

    assert quiet.delete(f"/api/v1/models/{second}/images/{in_second}",
                        headers=bearer()).status_code == 204
    assert not blob.exists() and not thumbnail.exists() and not feature.exists()
    assert quiet.delete(f"/api/v1/models/{second}/images/{in_second}",
                        headers=bearer()).status_code == 404


def test_deleting_waits_for_training_but_moving_does_not(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    [image_id] = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:1]))
    with runtime_of(quiet).session_factory() as session:
        account_id = session.get(Model, model_id).account_id  # type: ignore[union-attr]
        session.add(Job(account_id=account_id, model_id=model_id, kind="train",
                        status=JobStatus.RUNNING))
        session.commit()
    url = f"/api/v1/models/{model_id}/images/{image_id}"
    refused = quiet.delete(url, headers=bearer())
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_training"
    bulk = quiet.post(f"/api/v1/models/{model_id}/images/bulk",
                      json={"action": "delete", "image_ids": [image_id]}, headers=bearer())
    assert bulk.status_code == 409
    assert quiet.get(url, headers=bearer()).status_code == 200
    moved = quiet.patch(url, json={"category": "japanese_cherry"}, headers=bearer())
    assert moved.status_code == 200 and moved.json()["category"] == "japanese_cherry"


def test_thumbnails_show_each_accepted_file_as_decoded_for_training(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    names = sorted(ACCEPTED)
    ids = image_ids(upload(quiet, model_id, "hemlock", [BAD_INPUTS / name for name in names]))
    for name, image_id in zip(names, ids, strict=True):
        response = quiet.get(f"/api/v1/models/{model_id}/images/{image_id}/thumbnail",
                             headers=bearer())
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"].startswith("private")
        thumbnail = PILImage.open(io.BytesIO(response.content))
        assert thumbnail.format == "JPEG" and thumbnail.mode == "RGB", name
        width, height = ACCEPTED[name]
        assert max(thumbnail.size) == min(256, max(width, height)), (name, thumbnail.size)
        assert (thumbnail.width >= thumbnail.height) == (width >= height), (name, thumbnail.size)
        decoded = decode_image((BAD_INPUTS / name).read_bytes(), max_side=256).image
        assert thumbnail.size == decoded.size, name
        difference = np.abs(np.asarray(thumbnail, dtype=np.int16)
                            - np.asarray(decoded, dtype=np.int16))
        assert difference.mean() < 6, (name, difference.mean())  # JPEG loss only

    def pixels(name: str) -> np.ndarray:
        image_id = ids[names.index(name)]
        data = quiet.get(f"/api/v1/models/{model_id}/images/{image_id}/thumbnail",
                         headers=bearer()).content
        return np.asarray(PILImage.open(io.BytesIO(data)), dtype=np.int16)

    rotated = pixels("exif_rotated.jpg")  # portrait, red band on top once rotated
    assert rotated.shape[:2] == (256, 192)
    top = rotated[:10].reshape(-1, 3).mean(axis=0)
    assert top[0] > 180 and top[1] < 80 and top[2] < 80, top
    transparent = pixels("rgba_alpha.png")
    assert (transparent[:8, :8] > 245).all()  # a transparent corner is white, not black
    gradient = pixels("gray16.png").mean(axis=(0, 2))
    assert gradient[:10].mean() < 40 and gradient[-10:].mean() > 215  # not clipped to white
    cmyk = pixels("cmyk.jpg")
    assert cmyk.shape[2] == 3


def test_a_thumbnail_is_made_once_and_kept(quiet: TestClient) -> None:
    runtime = runtime_of(quiet)
    model_id = create_model(quiet)
    [image_id] = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:1]))
    item = images_of(quiet, model_id)["items"][0]
    digest = item["sha256"]
    url = f"/api/v1/models/{model_id}/images/{image_id}/thumbnail"
    cached = runtime.settings.thumbnails_dir / digest[:2] / f"{digest}.jpg"
    assert not cached.exists()
    first = quiet.get(item["thumbnail_url"], headers=bearer())
    assert cached.read_bytes() == first.content
    assert first.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert quiet.get(url, headers=bearer()).headers["cache-control"] == "private, no-cache"
    cached.write_bytes(b"kept")  # served from disk from now on, never made again
    assert quiet.get(url, headers=bearer()).content == b"kept"
    etag = first.headers["etag"]
    again = quiet.get(url, headers={**bearer(), "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_the_original_downloads_as_uploaded_under_a_safe_name(quiet: TestClient) -> None:
    model_id = create_model(quiet)
    photo = HEMLOCK[0]
    name = "résumé; 100%.jpg"
    response = quiet.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                          files=[("files", (name, photo.read_bytes(), "text/plain")),
                                 ("files", ("a.webp", (BAD_INPUTS / "image.webp").read_bytes(),
                                            "image/jpeg"))],
                          headers=bearer())
    jpeg_id, webp_id = image_ids(response)
    original = quiet.get(f"/api/v1/models/{model_id}/images/{jpeg_id}/original",
                         headers=bearer())
    assert original.status_code == 200 and original.content == photo.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    assert original.headers["x-content-type-options"] == "nosniff"
    disposition = original.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="r_sum__ 100_.jpg"; ')
    assert disposition.endswith("filename*=UTF-8''" + quote(name, safe=""))
    webp = quiet.get(f"/api/v1/models/{model_id}/images/{webp_id}/original", headers=bearer())
    assert webp.headers["content-type"] == "image/webp"
    assert webp.content == (BAD_INPUTS / "image.webp").read_bytes()


@pytest.mark.parametrize(("stored", "fallback", "encoded"), [
    ('a"b.jpg', "a_b.jpg", "a%22b.jpg"),
    ("../../etc/passwd", "passwd", "passwd"),
    ("C:\\photos\\bee.png", "bee.png", "bee.png"),
    ("line\r\nSet-Cookie: x.jpg", "line__Set-Cookie: x.jpg", "line%0D%0ASet-Cookie%3A%20x.jpg"),
    ("", "image", "image"),
])
def test_a_download_name_cannot_break_out_of_its_header(stored: str, fallback: str,
                                                        encoded: str) -> None:
    assert attachment(stored) == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def test_no_cookie_opens_thumbnails_or_originals(quiet: TestClient) -> None:
    """The web pages have their own thumbnail route (tests/web/test_security.py)."""
    model_id = create_model(quiet)
    [image_id] = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:1]))
    url = f"/api/v1/models/{model_id}/images/{image_id}/thumbnail"
    assert quiet.get(url).status_code == 401
    assert quiet.get(f"/api/v1/models/{model_id}/images/{image_id}/original").status_code == 401
    quiet.cookies.set("nanonet_key", API_KEY)  # what the web cookie held before sessions
    try:
        assert quiet.get(url).status_code == 401
    finally:
        quiet.cookies.clear()


def test_another_account_gets_404_from_every_image_route(quiet: TestClient) -> None:
    with runtime_of(quiet).session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    model_id = create_model(quiet)
    [image_id] = image_ids(upload(quiet, model_id, "hemlock", HEMLOCK[:1]))
    theirs = create_model(quiet, name="theirs", key=OTHER_KEY)
    other = bearer(OTHER_KEY)
    base = f"/api/v1/models/{model_id}/images"
    before = images_of(quiet, model_id)
    assert quiet.get(base, headers=other).status_code == 404
    assert quiet.get(f"/api/v1/models/{theirs}/images", headers=other).json()["total"] == 0
    for prefix in (base, f"/api/v1/models/{theirs}/images"):  # their model, my image id
        requests = [
            quiet.get(f"{prefix}/{image_id}", headers=other),
            quiet.get(f"{prefix}/{image_id}/thumbnail", headers=other),
            quiet.get(f"{prefix}/{image_id}/original", headers=other),
            quiet.patch(f"{prefix}/{image_id}", json={"category": None}, headers=other),
            quiet.delete(f"{prefix}/{image_id}", headers=other),
            quiet.post(f"{prefix}/bulk", json={"action": "delete", "image_ids": [image_id]},
                       headers=other),
            quiet.post(f"{prefix}/bulk", json={"action": "move", "image_ids": [image_id],
                                               "category": None}, headers=other),
        ]
        for response in requests:
            assert response.status_code == 404, (response.request.url, response.text)
            assert "hemlock" not in response.text and HEMLOCK[0].name not in response.text
    assert images_of(quiet, model_id) == before
    assert quiet.get(f"{base}/{image_id}/original", headers=bearer()).status_code == 200


@pytest.mark.slow
def test_delete_then_retrain_drops_counts_and_the_old_version_still_predicts(
        client: TestClient, trained_trees: str) -> None:
    model_id = trained_trees
    runtime = runtime_of(client)
    before = counts(client, model_id)
    listed = images_of(client, model_id, category="hemlock")["items"][:2]
    digests = [item["sha256"] for item in listed]
    pool = image_ids(pool_upload(client, model_id, [BAD_INPUTS / "grayscale.jpg"]))
    deleted = client.post(f"/api/v1/models/{model_id}/images/bulk",
                          json={"action": "delete", "image_ids": [i["id"] for i in listed]},
                          headers=bearer())
    assert deleted.status_code == 200, deleted.text
    assert counts(client, model_id) == {**before, "hemlock": before["hemlock"] - 2}
    assert not any(runtime.blobs.path(digest).exists() for digest in digests)

    probe = files_of(HEMLOCK[0], CHERRY[0])  # version 1 trained on the deleted photo
    old = client.post(f"/api/v1/models/{model_id}/predict", files=probe, headers=bearer())
    assert old.status_code == 200, old.text
    assert [r["label"] for r in old.json()["results"]] == ["hemlock", "japanese_cherry"]

    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["version"]["number"] == 2
    assert model["version"]["image_count"] == sum(before.values()) - 2  # the pool image is out
    assert pool[0] not in json_ids(runtime, model["version"]["id"])
    new = client.post(f"/api/v1/models/{model_id}/predict", files=probe, headers=bearer())
    assert [r["label"] for r in new.json()["results"]] == ["hemlock", "japanese_cherry"]


def json_ids(runtime: Runtime, version_id: str) -> list[int]:
    with runtime.session_factory() as session:
        return list(session.get(ModelVersion, version_id).image_ids)  # type: ignore[union-attr]
