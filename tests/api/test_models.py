from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from app.services.thumbnails import thumbnail_path
from tests.conftest import API_KEY, bearer, create_model, tree_photos, upload


def test_create_get_list_delete(client: TestClient) -> None:
    created = client.post("/api/v1/models", json={"name": "ants vs bees",
                                                  "categories": ["ants", "bees"]},
                          headers=bearer())
    assert created.status_code == 201
    model = created.json()
    assert model["state"] == "created"
    assert model["categories"] == [{"name": "ants", "count": 0}, {"name": "bees", "count": 0}]
    assert model["backbone"] is None and model["metrics"] is None

    fetched = client.get(f"/api/v1/models/{model['id']}", headers=bearer()).json()
    assert fetched["id"] == model["id"] and fetched["name"] == "ants vs bees"
    listed = client.get("/api/v1/models", headers=bearer()).json()["models"]
    assert [m["id"] for m in listed] == [model["id"]]

    assert client.delete(f"/api/v1/models/{model['id']}", headers=bearer()).status_code == 204
    gone = client.get(f"/api/v1/models/{model['id']}", headers=bearer())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_invalid_definitions_are_422_with_a_code(client: TestClient) -> None:
    cases = {
        "too_few_categories": {"name": "x", "categories": ["only"]},
        "duplicate_category": {"name": "x", "categories": ["cat", "Cat "]},
        "reserved_category": {"name": "x", "categories": ["cat", "unknown"]},
        "invalid_category": {"name": "x", "categories": ["cat", "  "]},
        "invalid_request": {"name": "", "categories": ["a", "b"]},
    }
    for code, body in cases.items():
        response = client.post("/api/v1/models", json=body, headers=bearer())
        assert response.status_code == 422, (code, response.text)
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]


def test_api_key_required_and_checked(client: TestClient) -> None:
    missing = client.get("/api/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    wrong = client.get("/api/v1/models", headers=bearer("nn_not_a_key"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"


def test_basic_auth_username_is_the_key(client: TestClient) -> None:
    token = base64.b64encode(f"{API_KEY}:".encode()).decode()
    response = client.get("/api/v1/models", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 200
    garbage = client.get("/api/v1/models", headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here", headers=bearer())
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    model_id = create_model(client)
    response = client.put(f"/api/v1/models/{model_id}", headers=bearer())
    assert response.status_code == 405


def test_health_and_openapi(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["checks"] == {"database": "ok", "storage": "ok"}
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/models", "/api/v1/models/{model_id}/images",
                 "/api/v1/models/{model_id}/train", "/api/v1/models/{model_id}/predict",
                 "/api/v1/jobs/{job_id}"):
        assert path in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_deleting_a_model_keeps_what_another_model_shares(client: TestClient) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    shared, own = tree_photos("hemlock")[:1], tree_photos("hemlock")[1:3]
    doomed, kept = create_model(client, name="doomed"), create_model(client, name="kept")
    doomed_results = upload(client, doomed, "hemlock", shared + own).json()["results"]
    assert upload(client, kept, "hemlock", shared).status_code == 200
    runtime.queue.join(timeout=120)  # the uploads' background extraction cached features
    digests = [r["sha256"] for r in doomed_results]
    assert all(runtime.features.get(d, "mobilenet_v2") is not None for d in digests)
    model_dir = runtime.settings.models_dir / doomed
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "v.pt").write_bytes(b"a trained head")
    for result in doomed_results:
        thumbnail = client.get(f"/api/v1/models/{doomed}/images/{result['image_id']}/thumbnail",
                               headers=bearer())
        assert thumbnail.status_code == 200
    thumbnails = {d: thumbnail_path(runtime, d) for d in digests}
    assert all(path.is_file() for path in thumbnails.values())

    assert client.delete(f"/api/v1/models/{doomed}", headers=bearer()).status_code == 204
    shared_digest, own_digests = digests[0], digests[1:]
    assert runtime.blobs.path(shared_digest).exists()
    assert runtime.features.get(shared_digest, "mobilenet_v2") is not None
    assert thumbnails[shared_digest].is_file()
    for digest in own_digests:
        assert not runtime.blobs.path(digest).exists()
        assert runtime.features.get(digest, "mobilenet_v2") is None
        assert not thumbnails[digest].exists()
    assert not model_dir.exists()
    kept_model = client.get(f"/api/v1/models/{kept}", headers=bearer()).json()
    assert kept_model["categories"][0]["count"] == 1
