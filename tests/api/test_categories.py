"""/api/v1/models/{id}/categories: add, rename, delete after creation, on real photos."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import Category, Job
from app.services.accounts import create_account
from tests.conftest import (
    DATASETS,
    OTHER_KEY,
    TREES,
    bearer,
    create_model,
    files_of,
    tree_photos,
    upload,
    wait_for_job,
)

ANTS = sorted((DATASETS / "hymenoptera" / "train" / "ants").glob("*.jpg"))


def categories_of(client: TestClient, model_id: str) -> list[tuple[str, int]]:
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    return [(c["name"], c["count"]) for c in model["categories"]]


def url(model_id: str, name: str = "") -> str:
    return f"/api/v1/models/{model_id}/categories" + (f"/{name}" if name else "")


def error_code(response) -> str:  # type: ignore[no-untyped-def]
    return response.json()["error"]["code"]


def test_add_rename_delete(client: TestClient) -> None:
    model_id = create_model(client)
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:2]).status_code == 200

    added = client.post(url(model_id), json={"name": "  small ants "}, headers=bearer())
    assert added.status_code == 201, added.text
    assert added.json() == {"name": "small ants", "count": 0}
    assert upload(client, model_id, "small ants", ANTS[:3]).json()["accepted"] == 3
    assert categories_of(client, model_id) == [("hemlock", 2), ("japanese_cherry", 0),
                                               ("small ants", 3)]

    renamed = client.patch(url(model_id, "small%20ants"), json={"name": "Ants"},
                           headers=bearer())
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {"name": "Ants", "count": 3}  # it keeps its images
    assert upload(client, model_id, "Ants", ANTS[3:4]).json()["accepted"] == 1
    assert upload(client, model_id, "small ants", ANTS[4:5]).status_code == 422
    listed = client.get(url(model_id), headers=bearer()).json()["categories"]
    assert listed == [{"name": "hemlock", "count": 2}, {"name": "japanese_cherry", "count": 0},
                      {"name": "Ants", "count": 4}]

    deleted = client.delete(url(model_id, "hemlock"), headers=bearer())
    assert deleted.status_code == 204, deleted.text
    assert categories_of(client, model_id) == [("japanese_cherry", 0), ("Ants", 4)]
    # Its images went with it, rather than into the unlabelled pool.
    images = client.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()
    assert (images["total"], {image["category"] for image in images["items"]}) == (4, {"Ants"})


def test_refusals(client: TestClient) -> None:
    model_id = create_model(client)
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:2]).status_code == 200
    cases = [
        (client.post(url(model_id), json={"name": "HEMLOCK"}, headers=bearer()),
         409, "duplicate_category"),
        (client.post(url(model_id), json={"name": "Unknown"}, headers=bearer()),
         422, "reserved_category"),
        (client.post(url(model_id), json={"name": "oak/young"}, headers=bearer()),
         422, "invalid_category"),
        (client.post(url(model_id), json={"name": "   "}, headers=bearer()),
         422, "invalid_category"),
        (client.post(url(model_id), json={"name": ""}, headers=bearer()),
         422, "invalid_request"),
        (client.post(url(model_id), json={}, headers=bearer()), 422, "invalid_request"),
        (client.patch(url(model_id, "hemlock"), json={"name": " Japanese_Cherry"},
                      headers=bearer()), 409, "duplicate_category"),
        (client.patch(url(model_id, "hemlock"), json={"name": "unknown"}, headers=bearer()),
         422, "reserved_category"),
        (client.patch(url(model_id, "oak"), json={"name": "elm"}, headers=bearer()),
         404, "category_not_found"),
        (client.delete(url(model_id, "oak"), headers=bearer()), 404, "category_not_found"),
        (client.delete(url(model_id, "hemlock"), headers=bearer()), 409, "too_few_categories"),
    ]
    for response, status, code in cases:
        assert (response.status_code, error_code(response)) == (status, code), response.text
    assert "at least 2 categories" in cases[-1][0].json()["error"]["message"]
    assert categories_of(client, model_id) == [("hemlock", 2), ("japanese_cherry", 0)]

    # A change of case is not a collision with itself.
    recased = client.patch(url(model_id, "hemlock"), json={"name": "Hemlock"}, headers=bearer())
    assert recased.status_code == 200, recased.text
    assert categories_of(client, model_id) == [("Hemlock", 2), ("japanese_cherry", 0)]
    # Creation shares the validator: no '/' there either.
    refused = client.post("/api/v1/models", json={"name": "x", "categories": ["a/b", "c"]},
                          headers=bearer())
    assert (refused.status_code, error_code(refused)) == (422, "invalid_category")


def wait_for_extraction(client: TestClient, model_id: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        job_ids = list(session.scalars(select(Job.id).where(Job.model_id == model_id,
                                                            Job.kind == "extract")))
    assert job_ids
    for job_id in job_ids:
        assert wait_for_job(client, job_id)["status"] == "succeeded"


@pytest.mark.slow
def test_delete_removes_unshared_blobs_and_keeps_shared_ones(client: TestClient) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    shared, own = tree_photos("japanese_cherry")[:2]
    model_id = create_model(client, categories=("hemlock", "japanese_cherry", "cherry"))
    other_id = create_model(client, name="other")
    digests = [r["sha256"] for r in upload(client, model_id, "cherry", [shared, own]).json()[
        "results"]]
    assert upload(client, other_id, "japanese_cherry", [shared]).status_code == 200
    assert upload(client, model_id, "hemlock", tree_photos("hemlock")[:1]).status_code == 200
    blob = {path: runtime.blobs.path(digest) for path, digest in zip([shared, own], digests,
                                                                     strict=True)}
    assert all(path.exists() for path in blob.values())
    wait_for_extraction(client, model_id)
    assert list(runtime.features.root.rglob(f"{digests[1]}.npy"))

    assert client.delete(url(model_id, "cherry"), headers=bearer()).status_code == 204
    assert blob[shared].exists()  # the other model still has it
    assert not blob[own].exists()
    assert not list(runtime.features.root.rglob(f"{digests[1]}.npy"))
    assert categories_of(client, model_id) == [("hemlock", 1), ("japanese_cherry", 0)]
    assert categories_of(client, other_id) == [("hemlock", 0), ("japanese_cherry", 1)]


def predict_labels(client: TestClient, model_id: str, photo: Path) -> tuple[int, list[str]]:
    response = client.post(f"/api/v1/models/{model_id}/predict", files=files_of(photo),
                           headers=bearer())
    assert response.status_code == 200, response.text
    body = response.json()
    result = body["results"][0]
    return body["version"], [result["label"]] + sorted(p["label"] for p in result["predictions"])


@pytest.mark.slow
def test_trained_version_answers_with_its_own_labels_and_the_next_uses_the_new_ones(
        client: TestClient, trained_trees: str) -> None:
    model_id = trained_trees
    hemlock = TREES / "test" / "hemlock" / "test_image.jpg"
    assert predict_labels(client, model_id, hemlock) == (1, ["hemlock", "hemlock",
                                                             "japanese_cherry"])
    assert client.post(url(model_id), json={"name": "ants"}, headers=bearer()).status_code == 201
    assert client.patch(url(model_id, "hemlock"), json={"name": "western hemlock"},
                        headers=bearer()).status_code == 200
    assert client.delete(url(model_id, "japanese_cherry"), headers=bearer()).status_code == 204
    assert predict_labels(client, model_id, hemlock) == (1, ["hemlock", "hemlock",
                                                             "japanese_cherry"])

    # The next training uses the categories as they are now, in their new positions.
    assert upload(client, model_id, "ants", ANTS[:10]).json()["accepted"] == 10
    assert client.post(url(model_id), json={"name": "cherry"}, headers=bearer()).status_code \
        == 201
    assert upload(client, model_id, "cherry", tree_photos("japanese_cherry")).status_code == 200
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    # The job reads these images' files: no delete while it runs.
    busy = client.delete(url(model_id, "cherry"), headers=bearer())
    assert (busy.status_code, error_code(busy)) == (409, "model_training")
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    assert predict_labels(client, model_id, hemlock) == (2, ["western hemlock", "ants", "cherry",
                                                             "western hemlock"])
    assert predict_labels(client, model_id, ANTS[10])[1][0] == "ants"
    assert predict_labels(client, model_id, tree_photos("japanese_cherry")[0])[1][0] == "cherry"
    assert client.delete(url(model_id, "cherry"), headers=bearer()).status_code == 204
    assert predict_labels(client, model_id, hemlock)[0] == 2


def test_another_account_gets_404(client: TestClient) -> None:
    model_id = create_model(client)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    other = bearer(OTHER_KEY)
    requests = [
        client.get(url(model_id), headers=other),
        client.post(url(model_id), json={"name": "oak"}, headers=other),
        client.patch(url(model_id, "hemlock"), json={"name": "oak"}, headers=other),
        client.delete(url(model_id, "hemlock"), headers=other),
    ]
    for response in requests:
        assert (response.status_code, error_code(response)) == (404, "model_not_found")
        assert "hemlock" not in response.text and "trees" not in response.text
    assert categories_of(client, model_id) == [("hemlock", 0), ("japanese_cherry", 0)]


def test_names_are_url_encoded_in_the_path_and_old_names_with_a_slash_still_work(
        client: TestClient) -> None:
    model_id = create_model(client)
    odd = "50% off? #1 & more"
    assert client.post(url(model_id), json={"name": odd}, headers=bearer()).status_code == 201
    renamed = client.patch(url(model_id, quote(odd, safe="")), json={"name": "odd"},
                           headers=bearer())
    assert renamed.status_code == 200, renamed.text
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:  # made before '/' was refused
        session.add_all([Category(model_id=model_id, name="oak/young", position=3),
                         Category(model_id=model_id, name="elm/old", position=4)])
        session.commit()
    response = client.patch(url(model_id, "oak/young"), json={"name": "oak"}, headers=bearer())
    assert response.status_code == 200, response.text
    assert client.delete(url(model_id, quote("elm/old", safe="")),
                         headers=bearer()).status_code == 204
    assert categories_of(client, model_id) == [("hemlock", 0), ("japanese_cherry", 0),
                                               ("odd", 0), ("oak", 0)]
