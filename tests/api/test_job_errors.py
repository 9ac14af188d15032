"""Job errors users see: a NanoNetError's message as it is; for an unexpected exception a
plain reason that points to the log, never the exception's text (SQL, file paths)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.errors import Conflict
from app.jobs import handlers
from app.main import create_app
from app.runtime import Runtime
from tests.conftest import bearer, create_model, make_settings, tree_photos, upload, wait_for_job

SQL = "UPDATE image SET sha256=? WHERE image.id = ?"
PATH = "/srv/nanonet/data/models/3f1c/v2/head.onnx"


def _trainable(client: TestClient) -> str:
    model_id = create_model(client)
    for label in ("hemlock", "japanese_cherry"):
        assert upload(client, model_id, label, tree_photos(label)[:3]).status_code == 200
    return model_id


def _train(client: TestClient, model_id: str) -> dict:  # type: ignore[type-arg]
    response = client.post(f"/api/v1/models/{model_id}/train", headers=bearer())
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["job_id"], timeout=60)


def test_an_unexpected_error_is_logged_not_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(runtime: Runtime, job_id: str) -> None:
        raise RuntimeError(f"(sqlite3.OperationalError) no such column [SQL: {SQL}] at {PATH}")

    monkeypatch.setitem(handlers.HANDLERS, "train", broken)
    caplog.set_level(logging.ERROR, logger="nanonet.jobs")
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        model_id = _trainable(client)
        job = _train(client, model_id)
        shown = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer()).text
    assert job["status"] == "failed"
    assert job["error"] == ("Training failed: an unexpected error; the server log has the "
                            f"details (job {job['id']}).")
    for secret in ("UPDATE image", "sqlite3", "/srv/nanonet", "head.onnx", "RuntimeError"):
        assert secret not in shown
    logged = [r for r in caplog.records if job["id"] in r.getMessage() and r.exc_info]
    assert logged, "the failure was not logged with its exception"
    assert SQL in caplog.text and PATH in caplog.text


def test_a_known_error_message_is_shown_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(runtime: Runtime, job_id: str) -> None:
        raise Conflict("Every category needs at least 2 labelled images.")

    monkeypatch.setitem(handlers.HANDLERS, "train", refuse)
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        job = _train(client, _trainable(client))
    assert (job["status"], job["error"]) == (
        "failed", "Every category needs at least 2 labelled images.")
