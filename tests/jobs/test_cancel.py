"""POST /api/v1/jobs/{id}/cancel and the training timeout, through the API and the embedded
runner, with real trainings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.handlers import run_job
from app.main import create_app
from app.runtime import Runtime
from app.services.accounts import create_account
from tests.conftest import (
    API_KEY,
    DATASETS,
    bearer,
    create_model,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)
from tests.jobs.conftest import FAST_JOBS, RecordingQueue

pytestmark = pytest.mark.slow
OTHER = "nn_test_key_jobs_other"


def _app(data_dir: Path, **overrides: object) -> TestClient:
    # One image per extraction batch: a training reports progress after every image.
    return TestClient(create_app(make_settings(data_dir, extract_on_upload=False,
                                               feature_batch_size=1,
                                               **{**FAST_JOBS, **overrides})))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with _app(tmp_path / "data") as client:
        yield client


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


def hold_jobs(client: TestClient) -> RecordingQueue:
    """From now on jobs are queued and recorded, and run only when a test runs them."""
    runtime = runtime_of(client)
    assert runtime.queue is not None
    runtime.queue.stop()
    runtime.queue = RecordingQueue()
    return runtime.queue


def _model(client: TestClient, per_class: int, key: str = API_KEY) -> str:
    model_id = create_model(client, key=key)
    for label in ("hemlock", "japanese_cherry"):
        assert upload(client, model_id, label, tree_photos(label)[:per_class],
                      key=key).status_code == 200
    return model_id


def _train(client: TestClient, model_id: str, key: str = API_KEY) -> str:
    response = client.post(f"/api/v1/models/{model_id}/train", headers=bearer(key))
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _cancel(client: TestClient, job_id: str, key: str = API_KEY) -> Any:
    return client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(key))


def _versions(client: TestClient, model_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/models/{model_id}/versions", headers=bearer()).json()["items"]


def test_a_queued_training_is_cancelled_at_once(api: TestClient) -> None:
    model_id = _model(api, 2)
    hold_jobs(api)
    job_id = _train(api, model_id)
    response = _cancel(api, job_id)
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["stage"], job["error"]) == (
        "failed", "cancelled", "Cancelled on request.")
    assert api.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["state"] == "created"

    run_job(runtime_of(api), job_id)  # its message arrives after all: nothing runs
    assert api.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()["stage"] == "cancelled"
    assert _train(api, model_id) != job_id  # the next request is a new job
    assert _cancel(api, job_id).json()["error"]["code"] == "job_finished"


def test_a_running_training_stops_at_its_next_report_and_the_active_version_stays(
        api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services import training

    model_id = _model(api, 3)
    first = wait_for_job(api, _train(api, model_id), timeout=300)
    assert first["status"] == "succeeded", first
    for label in ("hemlock", "japanese_cherry"):  # new images: this training extracts them
        assert upload(api, model_id, label, tree_photos(label)[3:10]).status_code == 200

    # The training reports that it is extracting, then waits for the cancel request before it
    # extracts (and reports again): fourteen images are extracted faster than a poll loop
    # reliably sees the stage, and a training that finished first has nothing to cancel.
    extract = training.extract
    requested = threading.Event()

    def extract_once_cancel_is_requested(*args: Any, progress: Any, **kwargs: Any) -> Any:
        progress(0.0)
        assert requested.wait(60), "the test never asked to cancel"
        return extract(*args, progress=progress, **kwargs)

    monkeypatch.setattr(training, "extract", extract_once_cancel_is_requested)
    job_id = _train(api, model_id)
    deadline = time.monotonic() + 120
    while api.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()["stage"] != (
            "extracting_features"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = _cancel(api, job_id)
    requested.set()
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested_at"] is not None

    job = wait_for_job(api, job_id, timeout=120)
    assert (job["status"], job["stage"], job["error"]) == (
        "failed", "cancelled", "Cancelled on request.")
    newest, active = _versions(api, model_id)
    assert (newest["number"], newest["status"], newest["error"]) == (
        2, "failed", "Cancelled on request.")
    assert (active["number"], active["status"], active["active"]) == (1, "ready", True)
    model = api.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["state"] == "ready" and model["version"]["number"] == 1

    finished = _cancel(api, first["id"])
    assert finished.status_code == 409
    assert finished.json()["error"] == {
        "code": "job_finished", "message": "This job already succeeded: there is nothing "
                                           "left to cancel.", "details": {"status": "succeeded"}}


def test_another_accounts_job_cannot_be_seen_or_cancelled(api: TestClient) -> None:
    with runtime_of(api).session_factory() as session:
        create_account(session, name="other", key=OTHER)
    theirs = _model(api, 2, key=OTHER)
    hold_jobs(api)
    job_id = _train(api, theirs, key=OTHER)
    response = _cancel(api, job_id)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.get(f"/api/v1/jobs/{job_id}", headers=bearer(OTHER)).json()["status"] == "queued"
    assert _cancel(api, "no-such-job").status_code == 404


def test_a_webhook_delivery_is_not_cancelled_on_its_own(tmp_path: Path,
                                                        receiver: Any) -> None:
    with _app(tmp_path / "data", url_allow_private=True) as client:
        hold_jobs(client)
        webhook = client.post("/api/v1/webhooks", headers=bearer(), json={
            "url": receiver.url(), "events": ["training.succeeded"]}).json()
        job_id = client.post(f"/api/v1/webhooks/{webhook['id']}/test",
                             headers=bearer()).json()["job_id"]
        response = _cancel(client, job_id)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "job_not_cancellable"


def test_a_training_past_its_time_limit_fails_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ml import select

    fit_model = select.fit_model

    def slow_fit_model(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # a training of 4 images per class is done well inside 0.5 s
        return fit_model(*args, **kwargs)

    monkeypatch.setattr(select, "fit_model", slow_fit_model)
    with _app(tmp_path / "data", training_timeout=0.5) as client:
        model_id = _model(client, 4)
        job = wait_for_job(client, _train(client, model_id), timeout=300)
        assert (job["status"], job["stage"]) == ("failed", "timed_out"), job
        assert job["error"] == ("Stopped after running longer than its time limit of 0.5 s "
                                "(NANONET_TRAINING_TIMEOUT).")
        [version] = _versions(client, model_id)
        assert (version["status"], version["error"]) == ("failed", job["error"])
        assert client.get(f"/api/v1/models/{model_id}",
                          headers=bearer()).json()["state"] == "failed"


def test_a_cancelled_batch_drops_its_files(api: TestClient) -> None:
    model_id = _model(api, 2)
    assert wait_for_job(api, _train(api, model_id), timeout=300)["status"] == "succeeded"
    queue = hold_jobs(api)
    photos = tree_photos("hemlock")[2:8]
    batch = api.post(f"/api/v1/models/{model_id}/batch-predictions", headers=bearer(),
                     files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                            for p in photos]).json()
    folder = runtime_of(api).settings.data_dir / "batches" / batch["batch_id"]
    assert folder.exists() and queue.ids() == [batch["batch_id"]]

    assert _cancel(api, batch["job_id"]).status_code == 200
    assert not folder.exists()
    shown = api.get(f"/api/v1/models/{model_id}/batch-predictions/{batch['batch_id']}",
                    headers=bearer()).json()
    assert (shown["status"], shown["stage"]) == ("failed", "cancelled")


def test_a_running_batch_stops_at_its_next_report(api: TestClient) -> None:
    model_id = _model(api, 2)
    assert wait_for_job(api, _train(api, model_id), timeout=300)["status"] == "succeeded"
    hold_jobs(api)
    photos = sorted((DATASETS / "hymenoptera" / "val").glob("*/*.jpg"))[:40]
    batch = api.post(f"/api/v1/models/{model_id}/batch-predictions", headers=bearer(),
                     files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                            for p in photos]).json()
    runner = threading.Thread(target=run_job, args=(runtime_of(api), batch["job_id"]))
    runner.start()
    deadline = time.monotonic() + 60
    while api.get(f"/api/v1/jobs/{batch['job_id']}", headers=bearer()).json()["stage"] != (
            "predicting"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _cancel(api, batch["job_id"]).status_code == 202
    runner.join(60)
    job = api.get(f"/api/v1/jobs/{batch['job_id']}", headers=bearer()).json()
    assert (job["status"], job["stage"]) == ("failed", "cancelled")
    assert not (runtime_of(api).settings.data_dir / "batches" / batch["batch_id"]).exists()
