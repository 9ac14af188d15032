"""The reconciler: jobs nobody runs are requeued, failed with a reason, or sent again; live
ones are left alone; several reconcilers at once handle each job once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.base import utcnow
from app.db.tables import Model, ModelVersion
from app.jobs import handlers
from app.jobs.reconciler import Reconciled, reconcile
from app.main import create_app
from app.runtime import Runtime
from app.services import jobs as job_service
from tests.conftest import make_settings
from tests.jobs.conftest import FAST_JOBS, add_account, add_job, add_model, ago, job_row, queue_of


def _running(runtime: Runtime, account_id: str, *, lease_left: float, attempts: int = 1,
             **values: object) -> str:
    values.setdefault("started_at", ago(60))
    return add_job(runtime, account_id, status="running", attempts=attempts,
                   lease_until=utcnow() + timedelta(seconds=lease_left), **values)


def test_a_job_whose_lease_ran_out_is_requeued_and_sent(runtime: Runtime) -> None:
    job_id = _running(runtime, add_account(runtime), lease_left=-1)
    assert reconcile(runtime).requeued == [job_id]
    job = job_row(runtime, job_id)
    assert (job.status, job.attempts, job.lease_until) == ("queued", 1, None)
    assert job.error == "retrying: the worker running attempt 1 stopped answering"
    assert queue_of(runtime).sent == [(job_id, "jobs", 0.0)]
    assert reconcile(runtime) == Reconciled()  # freshly due: not sent twice


def test_out_of_attempts_it_fails_with_a_reason_and_its_version_with_it(
        runtime: Runtime) -> None:
    account_id = add_account(runtime)
    model_id = add_model(runtime, account_id)
    job_id = _running(runtime, account_id, lease_left=-1, attempts=2, kind="train",
                      model_id=model_id)
    with runtime.session_factory() as session:
        session.add(ModelVersion(model_id=model_id, number=1, job_id=job_id, status="training",
                                 labels=["a", "b"], params={}, image_ids=[],
                                 artifact_path="", train_seconds=0.0))
        session.commit()

    assert reconcile(runtime).failed == [job_id]
    job = job_row(runtime, job_id)
    assert (job.status, job.stage) == ("failed", "failed")
    assert job.error == ("The worker running this job stopped answering (attempt 2 of 2); "
                         "start it again.")
    with runtime.session_factory() as session:
        version = session.scalars(select(ModelVersion)).one()
        assert (version.status, version.error) == ("failed", job.error)
        assert session.get(Model, model_id).state == "failed"  # never trained: cannot serve
    assert queue_of(runtime).sent == []


def test_a_leased_job_is_left_alone(runtime: Runtime) -> None:
    job_id = _running(runtime, add_account(runtime), lease_left=30)
    assert reconcile(runtime) == Reconciled()
    assert job_row(runtime, job_id).status == "running"


def test_an_abandoned_job_asked_to_stop_ends_cancelled(runtime: Runtime) -> None:
    job_id = _running(runtime, add_account(runtime), lease_left=-1,
                      cancel_requested_at=ago(5))
    assert reconcile(runtime).failed == [job_id]
    job = job_row(runtime, job_id)
    assert (job.status, job.stage, job.error) == ("failed", "cancelled", "Cancelled on request.")


def test_an_abandoned_job_past_its_deadline_ends_timed_out(runtime: Runtime) -> None:
    now = utcnow()
    job_id = _running(runtime, add_account(runtime), lease_left=-1, kind="train",
                      started_at=now - timedelta(seconds=60),
                      deadline_at=now - timedelta(seconds=1))
    assert reconcile(runtime).failed == [job_id]
    job = job_row(runtime, job_id)
    assert (job.status, job.stage) == ("failed", "timed_out")
    assert job.error is not None and "longer than its time limit of 59 s" in job.error


def test_a_leased_job_long_past_its_deadline_ends_timed_out(runtime: Runtime) -> None:
    """Its worker lives but its handler is stuck between two progress reports."""
    within = _running(runtime, add_account(runtime), lease_left=30, deadline_at=ago(0.1),
                      kind="train")
    stuck = _running(runtime, add_account(runtime, "bob"), lease_left=30, deadline_at=ago(30),
                     kind="train")
    assert reconcile(runtime).failed == [stuck]
    assert job_row(runtime, stuck).stage == "timed_out"
    assert job_row(runtime, within).status == "running"  # its handler stops at its next report


def test_a_queued_job_unclaimed_long_after_it_was_due_is_sent_again(runtime: Runtime) -> None:
    account_id = add_account(runtime)
    lost = add_job(runtime, account_id, due_at=ago(3600))
    webhook = add_job(runtime, account_id, kind="webhook", due_at=ago(3600))
    recent = add_job(runtime, account_id)
    delayed = add_job(runtime, account_id, due_at=utcnow() + timedelta(hours=1))
    assert sorted(reconcile(runtime).resent) == sorted([lost, webhook])
    assert sorted(queue_of(runtime).sent) == sorted([(lost, "jobs", 0.0),
                                                     (webhook, "webhooks", 0.0)])
    assert reconcile(runtime) == Reconciled()  # due again from now: not sent twice
    assert {job_row(runtime, job_id).status for job_id in (lost, recent, delayed)} == {"queued"}


def test_reconcilers_at_once_handle_each_job_once(runtime: Runtime) -> None:
    """One reconciler per Celery worker process: they race on the same rows."""
    account_id = add_account(runtime)
    abandoned = [_running(runtime, account_id, lease_left=-1) for _ in range(5)]
    unsent = [add_job(runtime, account_id, due_at=ago(3600)) for _ in range(5)]
    start = threading.Barrier(4)
    passes: list[Reconciled] = []

    def run() -> None:
        start.wait()
        passes.append(reconcile(runtime))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(j for p in passes for j in p.requeued) == sorted(abandoned)
    assert sorted(j for p in passes for j in p.resent) == sorted(unsent)
    assert sorted(queue_of(runtime).ids()) == sorted(abandoned + unsent)


def test_the_embedded_runner_reconciles_on_a_thread_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def succeed(runtime: Runtime, job_id: str) -> None:
        with runtime.session_factory() as session:
            job_service.succeed_job(session, job_id=job_id)

    monkeypatch.setitem(handlers.HANDLERS, "probe", succeed)
    with TestClient(create_app(make_settings(tmp_path / "data", **FAST_JOBS))) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        # after the start: only the periodic pass can find it
        job_id = _running(runtime, add_account(runtime), lease_left=-1)
        deadline = time.monotonic() + 20
        while job_row(runtime, job_id).status != "succeeded":
            assert time.monotonic() < deadline, job_row(runtime, job_id).status
            time.sleep(0.1)
        assert job_row(runtime, job_id).attempts == 2
