"""GET /models a page at once: an account of a thousand models is not one response."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.schemas.models import MAX_MODELS_PER_PAGE
from tests.conftest import bearer, create_model


def test_models_are_listed_a_page_at_once_newest_first(client: TestClient) -> None:
    made = [create_model(client, name=f"m{index}") for index in range(5)]
    first = client.get("/api/v1/models", params={"per_page": 2}, headers=bearer()).json()
    assert (first["total"], first["page"], first["per_page"]) == (5, 1, 2)
    pages = [first] + [client.get("/api/v1/models", params={"per_page": 2, "page": page},
                                  headers=bearer()).json() for page in (2, 3, 4)]
    seen = [model["id"] for page in pages for model in page["models"]]
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))  # no repeats, no gaps
    assert [len(page["models"]) for page in pages] == [2, 2, 1, 0]
    created = [model["created_at"] for page in pages for model in page["models"]]
    assert created == sorted(created, reverse=True)
    default = client.get("/api/v1/models", headers=bearer()).json()
    assert default["per_page"] == 50 and len(default["models"]) == 5


def test_page_sizes_are_bounded(client: TestClient) -> None:
    for params in ({"per_page": MAX_MODELS_PER_PAGE + 1}, {"per_page": 0}, {"page": 0}):
        response = client.get("/api/v1/models", params=params, headers=bearer())
        assert response.status_code == 422, params
    fine = client.get("/api/v1/models", params={"per_page": MAX_MODELS_PER_PAGE},
                      headers=bearer())
    assert fine.status_code == 200
