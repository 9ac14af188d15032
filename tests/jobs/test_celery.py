"""The full stack's job path: the API sends jobs to a real Celery worker over a real Redis.

Needs `redis-server` on PATH (`.ci/run` installs it) or NANONET_TEST_REDIS_URL; the test of a
whole worker killed also needs NANONET_TEST_POSTGRES_URL, as docker-compose runs PostgreSQL.
The worker is started the way docker-compose starts it, as a separate process sharing the data
dir and DB, with short leases so that a dead worker's job is noticed within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import Job
from app.main import create_app
from tests.api.test_webhooks import verifies
from tests.conftest import (
    ROOT,
    bearer,
    create_model,
    free_port,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)
from tests.http_receiver import Receiver

pytestmark = pytest.mark.slow


# Leases the tests can watch run out; the API process and the workers share them.
LEASES = {"job_heartbeat_interval": 0.5, "job_lease_seconds": 4.0,
          "job_reconcile_interval": 1.0}


class Worker:
    """`celery -A worker.celery_app worker`, as docker-compose runs it, in its own process
    group (main process and pool, as in a container); one worker takes the `cpu` and
    `webhooks` queues that compose gives to two services."""

    def __init__(self, data_dir: Path, redis_url: str, log: Path,
                 database_url: str | None = None) -> None:
        self.log = log
        env = {
            **os.environ,
            "NANONET_DATA_DIR": str(data_dir),
            "NANONET_REDIS_URL": redis_url,
            "NANONET_JOB_BACKEND": "celery",
            "NANONET_BACKBONES": "mobilenet_v2",
            "NANONET_AUGMENT_VIEWS": "0",
            "NANONET_JOB_MAX_ATTEMPTS": "3",
            "NANONET_MIGRATE_ON_START": "false",
            "NANONET_URL_ALLOW_PRIVATE": "true",  # the tests' webhook receiver is on loopback
            **{f"NANONET_{name.upper()}": str(value) for name, value in LEASES.items()},
        }
        if database_url is not None:
            env["NANONET_DATABASE_URL"] = database_url
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
             "-Q", "cpu,webhooks", "--concurrency", "1", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait until the worker consumes; return when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            assert self.process.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.1)
        return time.monotonic()

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool at once, as `docker kill` does."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             check=False, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[tuple[TestClient, Worker]]:
    """An API in this process (job_backend=celery) and one worker process, sharing data_dir."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, job_backend="celery", redis_url=redis_url,
                             url_allow_private=True, **LEASES)
    with TestClient(create_app(settings)) as client:  # migrates the shared SQLite DB
        worker = Worker(data_dir, redis_url, tmp_path / "worker.log")
        try:
            yield client, worker
        finally:
            worker.stop()


def _trainable_model(client: TestClient, images_per_class: int) -> str:
    model_id = create_model(client)
    for label in ("hemlock", "japanese_cherry"):
        response = upload(client, model_id, label, tree_photos(label)[:images_per_class])
        assert response.status_code == 200, response.text
    return model_id


def test_worker_trains_and_the_api_serves_the_model(stack: tuple[TestClient, Worker],
                                                    receiver: Receiver) -> None:
    client, worker = stack
    webhook = client.post("/api/v1/webhooks", headers=bearer(),
                          json={"url": receiver.url(), "events": ["training.succeeded"]}).json()
    model_id = _trainable_model(client, 4)
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = wait_for_job(client, job_id, timeout=300)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert "nanonet.run_job[" in worker.output()  # it ran in the worker, not in this process

    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["state"] == "ready" and model["backbone"] == "mobilenet_v2"
    photo = tree_photos("japanese_cherry")[-1]
    response = client.post(f"/api/v1/models/{model_id}/predict", headers=bearer(),
                           files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["label"] in ("hemlock", "japanese_cherry")

    # The worker queued the delivery from its own process; a worker on `webhooks` sent it.
    [request] = receiver.wait_for(1, timeout=60)
    assert json.loads(request.body)["data"]["version"]["number"] == 1
    assert verifies(webhook["secret"], request)


def test_job_of_a_killed_pool_process_is_retried(stack: tuple[TestClient, Worker]) -> None:
    client, worker = stack
    model_id = _trainable_model(client, 12)
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()["status"] != "running":
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.05)
    children = worker.child_pids()
    assert children, worker.output()[-3000:]
    for pid in children:  # the pool process dies mid-job, as on an out-of-memory kill
        os.kill(pid, signal.SIGKILL)
    # Its message comes back to the new pool process while the lease still holds (skipped);
    # the reconciler requeues the job once the lease runs out.

    job = wait_for_job(client, job_id, timeout=300)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert job["attempts"] == 2
    assert client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["state"] == "ready"


def test_unreachable_broker_is_a_503_and_leaves_no_stuck_job(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(tmp_path / "data", job_backend="celery", redis_url=dead)
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client)
        for label in ("hemlock", "japanese_cherry"):
            # the upload stands: training extracts whatever the background job could not
            assert upload(client, model_id, label, tree_photos(label)[:2]).status_code == 200
        for _ in range(2):  # the failed job must not block the next request
            response = client.post(f"/api/v1/models/{model_id}/train", headers=bearer())
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "queue_unavailable"
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with runtime.session_factory() as session:
            jobs = list(session.scalars(select(Job).where(Job.model_id == model_id)))
            assert {job.status for job in jobs} == {"failed"}
            # users read job errors: the broker URL (it may hold a password) must not leak
            assert all(job.error and "127.0.0.1" not in job.error for job in jobs)
        assert client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["state"] != (
            "training")


@pytest.fixture
def postgres_stack(tmp_path: Path, redis_url: str, postgres_database: Callable[[], str]
                   ) -> Iterator[tuple[TestClient, Callable[[str], Worker]]]:
    """The compose stack's databases: PostgreSQL and Redis; the API in this process, and
    workers started by the test (each with its own log)."""
    data_dir = tmp_path / "data"
    database_url = postgres_database()
    settings = make_settings(data_dir, job_backend="celery", redis_url=redis_url,
                             database_url=database_url, **LEASES)
    workers: list[Worker] = []

    def start(name: str) -> Worker:
        workers.append(Worker(data_dir, redis_url, tmp_path / f"{name}.log", database_url))
        return workers[-1]

    with TestClient(create_app(settings)) as client:  # migrates the PostgreSQL database
        try:
            yield client, start
        finally:
            for worker in workers:
                worker.stop()


def test_a_whole_worker_killed_mid_training_is_rerun_by_the_next_one(
        postgres_stack: tuple[TestClient, Callable[[str], Worker]]) -> None:
    client, start = postgres_stack
    model_id = _trainable_model(client, 10)
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    first = start("first")
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()["status"] != "running":
        assert time.monotonic() < deadline, first.output()[-3000:]
        time.sleep(0.05)
    first.kill_all()  # main process and pool: nothing is left to report the job lost
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()["status"] == "running"

    second = start("second")
    ready = second.wait_ready()
    job = wait_for_job(client, job_id, timeout=120)
    took = time.monotonic() - ready
    assert job["status"] == "succeeded", (job, second.output()[-3000:])
    assert took <= 60, took
    assert job["attempts"] == 2
    assert "nanonet.run_job[" in second.output()
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["state"] == "ready" and model["version"]["number"] == 1
