"""Routing job kinds to Celery queues (NANONET_JOB_ROUTES) and `nanonet worker`.

The queue of each send is read off the Celery app's `send_task`, so no broker is needed; one
slow test runs a real worker started by `nanonet worker --queues gpu` on a training routed
there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cli import build_parser, worker_argv
from app.cli import main as cli_main
from app.db.tables import Job
from app.jobs.celery_queue import TASK_NAME, CeleryQueue, check_routes, routable_kinds
from app.jobs.reconciler import reconcile
from app.main import create_app
from app.runtime import Runtime
from app.services import jobs as job_service
from tests.conftest import (
    ROOT,
    bearer,
    create_model,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)
from tests.jobs.conftest import add_account, add_job, ago

GPU_ROUTES = {"train": "gpu", "extract": "gpu", "batch_predict": "gpu"}


class Sent:
    """Stands in for Celery's send_task: records (task, args, queue, countdown)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], str, float | None]] = []

    def __call__(self, name: str, *, args: list[str], queue: str,
                 countdown: float | None = None, **_: Any) -> None:
        self.calls.append((name, args, queue, countdown))

    def queues(self) -> dict[str, str]:
        return {args[0]: queue for _, args, queue, _ in self.calls}


def recording_celery_queue(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                           routes: dict[str, str]) -> Sent:
    settings = runtime.settings.model_copy(update={"job_routes": routes,
                                                   "job_backend": "celery"})
    queue = CeleryQueue(settings)
    queue.start()  # a real Celery app with the workers' configuration; it connects on send
    sent = Sent()
    assert queue._app is not None
    monkeypatch.setattr(queue._app, "send_task", sent)
    runtime.queue = queue
    return sent


def test_each_kind_goes_to_its_routed_queue(runtime: Runtime,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sent = recording_celery_queue(runtime, monkeypatch, {"train": "gpu", "extract": "gpu"})
    account = add_account(runtime)
    expected = {}
    for kind, queue in (("train", "gpu"), ("extract", "gpu"), ("batch_predict", "cpu"),
                        (job_service.WEBHOOK_JOB, "webhooks")):
        job_id = add_job(runtime, account, kind=kind)
        with runtime.session_factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job_service.dispatch(session, runtime.queue, job)
        expected[job_id] = queue
    assert sent.queues() == expected
    assert {name for name, *_ in sent.calls} == {TASK_NAME}


def test_deferred_and_resent_jobs_keep_their_route(runtime: Runtime,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sent = recording_celery_queue(runtime, monkeypatch, GPU_ROUTES)
    account = add_account(runtime)
    held = add_job(runtime, account, kind="train")
    with runtime.session_factory() as session:
        job_service.defer_job(session, runtime.queue, job_id=held, kind="train", delay=2.0)
    assert sent.calls[-1][2:] == ("gpu", 2.0)
    # Queued long ago and never claimed: the reconciler sends each again, by kind.
    stale = {kind: add_job(runtime, account, kind=kind, due_at=ago(3600))
             for kind in ("extract", job_service.WEBHOOK_JOB)}
    sent.calls.clear()
    done = reconcile(runtime)
    assert set(done.resent) >= set(stale.values())
    queues = sent.queues()
    assert queues[stale["extract"]] == "gpu"
    assert queues[stale[job_service.WEBHOOK_JOB]] == "webhooks"


def test_without_routes_everything_but_deliveries_goes_to_the_job_queue(tmp_path: Path) -> None:
    queue = CeleryQueue(make_settings(tmp_path))  # a CPU-only deployment: nothing to set
    for kind in routable_kinds():
        assert queue.queue_for(kind=kind) == "cpu"
    assert queue.queue_for(lane="webhooks", kind=job_service.WEBHOOK_JOB) == "webhooks"
    assert queue.queue_for() == "cpu"
    moved = CeleryQueue(make_settings(tmp_path, job_queue="small", job_routes={"train": "gpu"}))
    assert moved.queue_for(kind="train") == "gpu"
    assert moved.queue_for(kind="extract") == "small"


@pytest.mark.parametrize(("routes", "says"), [
    ({"trian": "gpu"}, "unknown job kind 'trian'; the kinds are train, extract, batch_predict"),
    ({"webhook": "gpu"}, "webhook deliveries always go to NANONET_WEBHOOK_QUEUE"),
    ({"train": ""}, "a queue is one non-empty name"),
    ({"train": "gpu,cpu"}, "a queue is one non-empty name"),
])
def test_wrong_routes_are_refused_at_startup(tmp_path: Path, routes: dict[str, str],
                                             says: str) -> None:
    settings = make_settings(tmp_path, job_backend="celery", job_routes=routes)
    with pytest.raises(ValueError, match="NANONET_JOB_ROUTES") as refused:
        CeleryQueue(settings)
    assert says in str(refused.value)


def test_the_api_does_not_start_with_wrong_routes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_backend="celery", job_routes={"trian": "gpu"})
    with pytest.raises(ValueError, match="unknown job kind 'trian'"), \
            TestClient(create_app(settings)):
        pass


def test_routes_name_every_kind_but_deliveries() -> None:
    assert routable_kinds() == ["train", "extract", "batch_predict"]
    check_routes(make_settings(Path("unused"), job_routes=GPU_ROUTES))


def test_worker_command_builds_the_celery_worker_argv() -> None:
    args = build_parser().parse_args(["worker", "--queues", "gpu"])
    assert worker_argv(args) == [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
        "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO"]
    args = build_parser().parse_args(["worker", "--queues", "webhooks", "--pool", "threads",
                                      "--concurrency", "16", "--", "--without-gossip"])
    argv = worker_argv(args)
    assert argv[argv.index("-Q") + 1] == "webhooks"
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[argv.index("--concurrency") + 1] == "16"
    assert argv[-1] == "--without-gossip"
    # No --queues: the queue the API sends unrouted jobs to.
    assert worker_argv(build_parser().parse_args(["worker"]), default_queue="small")[
        7] == "small"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--queues", "gpu,,cpu"])


def test_worker_command_checks_the_routes_then_becomes_celery(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("NANONET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NANONET_JOB_ROUTES", '{"train": "gpu"}')
    cli_main(["worker", "--queues", "gpu,cpu", "--concurrency", "2"])
    [argv] = execs
    assert argv[argv.index("-Q") + 1] == "gpu,cpu" and "2" in argv

    monkeypatch.setenv("NANONET_JOB_ROUTES", '{"predict": "gpu"}')
    assert cli_main(["worker", "--queues", "gpu"]) == 2
    assert "unknown job kind 'predict'" in capsys.readouterr().err
    assert len(execs) == 1


@pytest.mark.slow
def test_a_worker_on_gpu_runs_the_training_routed_there(tmp_path: Path,
                                                        redis_url: str) -> None:
    """`nanonet worker --queues gpu` (a CPU here, as NANONET_DEVICE stays cpu) trains a model
    whose training and extraction NANONET_JOB_ROUTES sends to `gpu`; nothing takes `cpu`."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, job_backend="celery", redis_url=redis_url,
                             job_routes=GPU_ROUTES)
    env = {**os.environ, "NANONET_DATA_DIR": str(data_dir), "NANONET_REDIS_URL": redis_url,
           "NANONET_JOB_BACKEND": "celery", "NANONET_BACKBONES": "mobilenet_v2",
           "NANONET_AUGMENT_VIEWS": "0", "NANONET_MIGRATE_ON_START": "false",
           "NANONET_JOB_ROUTES": '{"train": "gpu", "extract": "gpu", "batch_predict": "gpu"}'}
    log = tmp_path / "worker.log"
    with TestClient(create_app(settings)) as client, log.open("wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "nanonet"), "worker", "--queues", "gpu", "--",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            model_id = create_model(client)
            for label in ("hemlock", "japanese_cherry"):
                response = upload(client, model_id, label, tree_photos(label)[:3])
                assert response.status_code == 200, response.text
            job_id = client.post(f"/api/v1/models/{model_id}/train",
                                 headers=bearer()).json()["job_id"]
            job = wait_for_job(client, job_id, timeout=240)
            text = log.read_text(errors="replace")
            assert job["status"] == "succeeded", (job, text[-3000:])
            assert "nanonet.run_job[" in text and "gpu" in text
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
