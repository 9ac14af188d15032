"""Models per account, images per model, free disk: refused with a clear error, nothing stored."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.tables import Model
from app.errors import InsufficientStorage, QuotaExceeded
from app.main import create_app
from app.services import quotas
from app.services.accounts import create_account
from tests.conftest import OTHER_KEY, bearer, create_model, make_settings, tree_photos, upload

GiB = 1024 ** 3


@pytest.fixture
def small(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", max_models_per_account=2, max_images_per_model=3,
                             extract_on_upload=False)
    with TestClient(create_app(settings)) as test_client:
        with test_client.app.state.runtime.session_factory() as session:  # type: ignore[attr-defined]
            create_account(session, name="other", key=OTHER_KEY)
        yield test_client


def test_model_quota(small: TestClient) -> None:
    first = create_model(small, name="one")
    create_model(small, name="two")
    refused = small.post("/api/v1/models", json={"name": "three", "categories": ["a", "b"]},
                         headers=bearer())
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "model_quota_exceeded"
    assert "2" in error["message"] and "NANONET_MAX_MODELS_PER_ACCOUNT" in error["message"]
    assert len(small.get("/api/v1/models", headers=bearer()).json()["models"]) == 2
    create_model(small, name="theirs", key=OTHER_KEY)  # a quota per account
    assert small.delete(f"/api/v1/models/{first}", headers=bearer()).status_code == 204
    create_model(small, name="three")


def test_image_quota_counts_what_the_model_holds(small: TestClient) -> None:
    model_id = create_model(small)
    assert upload(small, model_id, "hemlock", tree_photos("hemlock")[:2]).status_code == 200
    runtime = small.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        model = session.get(Model, model_id)
        assert model is not None
        quotas.check_new_images(session, runtime.settings, model, 1)
        with pytest.raises(QuotaExceeded) as refused:
            quotas.check_new_images(session, runtime.settings, model, 2)
    assert refused.value.code == "image_quota_exceeded" and refused.value.status == 409
    assert "NANONET_MAX_IMAGES_PER_MODEL" in refused.value.message
    assert "3" in refused.value.message


def nearly_full(free: int) -> Any:
    real = shutil.disk_usage

    def usage(path: Any) -> Any:
        total, used, _ = real(path)
        return shutil._ntuple_diskusage(total, used, free)  # type: ignore[attr-defined]
    return usage


def test_check_disk_keeps_the_minimum_free(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path / "data", min_free_disk_bytes=GiB)
    settings.data_dir.mkdir(parents=True)
    monkeypatch.setattr(shutil, "disk_usage", nearly_full(GiB + 100))
    quotas.check_disk(settings, 100)
    with pytest.raises(InsufficientStorage) as refused:
        quotas.check_disk(settings, 101)
    assert refused.value.status == 507 and refused.value.code == "insufficient_storage"
    assert "NANONET_MIN_FREE_DISK_BYTES" in refused.value.message


def test_uploads_to_a_full_disk_or_past_the_quota_store_nothing(
        small: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = create_model(small)
    runtime = small.app.state.runtime  # type: ignore[attr-defined]
    images_dir = runtime.settings.images_dir
    before = sorted(images_dir.rglob("*"))
    past_quota = upload(small, model_id, "hemlock", tree_photos("hemlock")[:4])
    assert past_quota.status_code == 409
    assert past_quota.json()["error"]["code"] == "image_quota_exceeded"
    monkeypatch.setattr(shutil, "disk_usage", nearly_full(GiB // 2))
    full = upload(small, model_id, "hemlock", tree_photos("hemlock")[:1])
    assert full.status_code == 507
    assert full.json()["error"]["code"] == "insufficient_storage"
    assert sorted(images_dir.rglob("*")) == before
    listed = small.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()
    assert listed["total"] == 0
