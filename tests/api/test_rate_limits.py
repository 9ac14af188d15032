"""Requests per minute per account: 429 with Retry-After, one account's burst not another's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from limits.storage import MemoryStorage, RedisStorage

from app.api.rate_limits import PREDICTIONS, build_rate_limiter
from app.errors import RateLimited
from app.main import create_app
from app.services.accounts import create_account
from tests.conftest import (
    API_KEY,
    OTHER_KEY,
    bearer,
    create_model,
    files_of,
    make_settings,
    tree_photos,
)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", predictions_per_minute=2, uploads_per_minute=3)
    with TestClient(create_app(settings)) as test_client:
        with test_client.app.state.runtime.session_factory() as session:  # type: ignore[attr-defined]
            create_account(session, name="other", key=OTHER_KEY)
        yield test_client


def predict(client: TestClient, key: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/models/nosuchmodel/predict", headers=bearer(key),
                       files=files_of(*tree_photos("hemlock")[:1]))


def test_predictions_past_the_rate_get_429_with_retry_after(limited: TestClient) -> None:
    assert [predict(limited, API_KEY).status_code
            for _ in range(2)] == [404, 404]
    refused = predict(limited, API_KEY)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "2 per minute" in error["message"]
    assert "NANONET_PREDICTIONS_PER_MINUTE" in error["message"]
    # batch predictions draw on the same rate
    batch = limited.post("/api/v1/models/nosuchmodel/batch-predictions",
                         json={"pool": True}, headers=bearer())
    assert batch.status_code == 429


def test_another_account_is_not_affected(limited: TestClient) -> None:
    for _ in range(3):
        predict(limited, API_KEY)
    assert predict(limited, API_KEY).status_code == 429
    assert predict(limited, OTHER_KEY).status_code == 404


def test_uploads_have_their_own_rate(limited: TestClient) -> None:
    for _ in range(3):
        predict(limited, OTHER_KEY)
    photo = tree_photos("hemlock")[:1]
    answers = [limited.post("/api/v1/models/nosuchmodel/images", data={"category": "hemlock"},
                            files=files_of(*photo), headers=bearer(OTHER_KEY)).status_code
               for _ in range(4)]
    assert answers == [404, 404, 404, 429]


def test_storage_is_memory_embedded_and_redis_for_celery(tmp_path: Path) -> None:
    embedded = build_rate_limiter(make_settings(tmp_path / "a"))
    assert isinstance(embedded.storage, MemoryStorage)
    full = build_rate_limiter(make_settings(tmp_path / "b", job_backend="celery",
                                            redis_url="redis://redis.invalid:6379/3"))
    assert isinstance(full.storage, RedisStorage)


def test_the_web_form_draws_on_the_same_rates(limited: TestClient) -> None:
    from tests.web.forms import sign_in  # noqa: PLC0415  (web helpers, for this test only)

    model_id = create_model(limited, categories=("a", "b"))
    photo = files_of(*tree_photos("hemlock")[:1])
    assert predict(limited, API_KEY).status_code == 404  # one of two predictions, by the API
    sign_in(limited, API_KEY)
    page = limited.post(f"/web/models/{model_id}/predict", files=photo)
    assert "429" not in str(page.status_code) and "Too many" not in page.text
    refused = limited.post(f"/web/models/{model_id}/predict", files=photo)
    assert refused.status_code == 429 and "Too many predictions requests" in refused.text
    assert limited.post(f"/web/models/{model_id}/batches", files=photo).status_code == 429
    for _ in range(3):
        limited.post(f"/web/models/{model_id}/images", data={"category": "a"}, files=photo)
    scripts = limited.post(f"/web/json/models/{model_id}/images", data={"category": "a"},
                           files=photo)
    assert scripts.status_code == 429 and scripts.json()["error"]["code"] == "rate_limited"


@pytest.mark.slow
def test_api_processes_sharing_redis_share_the_counters(tmp_path: Path, redis_url: str) -> None:
    # Two limiters on one Redis stand for two API processes of the full stack.
    settings = make_settings(tmp_path, job_backend="celery", redis_url=redis_url,
                             predictions_per_minute=3)
    first, second = build_rate_limiter(settings), build_rate_limiter(settings)
    account = f"acct-{tmp_path.name}"
    try:
        first.hit(PREDICTIONS, account)
        second.hit(PREDICTIONS, account)
        first.hit(PREDICTIONS, account)
        with pytest.raises(RateLimited) as refused:
            second.hit(PREDICTIONS, account)
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        second.hit(PREDICTIONS, account + "-other")  # another account has its own window
    finally:
        first.close()
        second.close()
