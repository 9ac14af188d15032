"""Restart recovery: no job stays `running` forever after the process that ran it died."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db.tables import Job, Model
from app.main import create_app
from tests.conftest import bearer, create_model, make_settings, tree_photos, upload, wait_for_job

pytestmark = pytest.mark.slow


def _prepare(data_dir: Path) -> str:
    """Start, make a trainable model, and leave the process without running any job."""
    with TestClient(create_app(make_settings(data_dir))) as client:
        model_id = create_model(client)
        for label in ("hemlock", "japanese_cherry"):
            upload(client, model_id, label, tree_photos(label)[:3])
    return model_id


def _insert_job(data_dir: Path, model_id: str, *, status: str, attempts: int) -> str:
    app = create_app(make_settings(data_dir))
    with TestClient(app) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        runtime.queue.stop()  # nothing runs in this process: it plays the one that died
        with runtime.session_factory() as session:
            model = session.get(Model, model_id)
            job = Job(account_id=model.account_id, model_id=model_id, kind="train")
            session.add(job)
            session.commit()
            session.execute(update(Job).where(Job.id == job.id)
                            .values(status=status, attempts=attempts))
            session.execute(update(Model).where(Model.id == model_id)
                            .values(state="training"))
            session.commit()
            return job.id


def test_queued_job_runs_after_restart(tmp_path: Path) -> None:
    model_id = _prepare(tmp_path)
    job_id = _insert_job(tmp_path, model_id, status="queued", attempts=0)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert wait_for_job(client, job_id)["status"] == "succeeded"
        assert client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["state"] == "ready"


def test_interrupted_job_is_retried(tmp_path: Path) -> None:
    model_id = _prepare(tmp_path)
    job_id = _insert_job(tmp_path, model_id, status="running", attempts=1)
    with TestClient(create_app(make_settings(tmp_path, job_max_attempts=2))) as client:
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2


def test_interrupted_job_out_of_attempts_fails_with_a_reason(tmp_path: Path) -> None:
    model_id = _prepare(tmp_path)
    job_id = _insert_job(tmp_path, model_id, status="running", attempts=2)
    with TestClient(create_app(make_settings(tmp_path, job_max_attempts=2))) as client:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()
        assert job["status"] == "failed"
        assert "stopped while this job was running" in job["error"]
        model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
        assert model["state"] == "failed"  # never trained, so it cannot serve
