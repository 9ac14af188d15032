"""run_job: every path ends the job or leaves it to the reconciler, on SQLite and PostgreSQL.

Handlers here are small probes registered for a kind of their own: what is under test is the
runner around them (claim, lease, failure), not what a training does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from app.db.base import utcnow
from app.db.tables import Job
from app.errors import NotFound
from app.jobs import handlers
from app.jobs.handlers import run_job
from app.jobs.reconciler import reconcile
from app.runtime import Runtime
from app.services import jobs as job_service
from tests.jobs.conftest import add_account, add_job, ago, job_row, queue_of


def _busy(*args: object, **kwargs: object) -> None:
    raise OperationalError("UPDATE job ...", {}, Exception("database is locked"))


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Runtime, str], None]], None]:
    """Register a handler for kind "probe"."""

    def register(handler: Callable[[Runtime, str], None]) -> None:
        monkeypatch.setitem(handlers.HANDLERS, "probe", handler)

    return register


def _succeed(runtime: Runtime, job_id: str) -> None:
    with runtime.session_factory() as session:
        job_service.succeed_job(session, job_id=job_id, result={"ok": True})


def test_a_claim_that_fails_leaves_the_job_queued_for_the_reconciler(
        runtime: Runtime, probe: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    probe(_succeed)
    job_id = add_job(runtime, add_account(runtime))
    with monkeypatch.context() as patch:
        patch.setattr(job_service, "claim_job", _busy)
        run_job(runtime, job_id)  # logged, never raised into the worker
    assert job_row(runtime, job_id).status == "queued"

    with runtime.session_factory() as session:  # overdue: its message is gone
        session.execute(update(Job).where(Job.id == job_id).values(due_at=ago(3600)))
        session.commit()
    assert reconcile(runtime).resent == [job_id]
    assert queue_of(runtime).ids() == [job_id]
    run_job(runtime, job_id)
    assert job_row(runtime, job_id).status == "succeeded"


def test_a_failure_that_cannot_be_written_is_ended_by_the_reconciler(
        runtime: Runtime, probe: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(runtime: Runtime, job_id: str) -> None:
        raise ValueError("the handler broke")

    probe(crash)
    runtime.settings.job_max_attempts = 1
    job_id = add_job(runtime, add_account(runtime))
    monkeypatch.setattr(handlers, "FAILURE_WRITE_RETRIES", (0.0,))
    with monkeypatch.context() as patch:
        patch.setattr(job_service, "fail_run", _busy)
        run_job(runtime, job_id)
    assert job_row(runtime, job_id).status == "running"  # nobody renews its lease now

    time.sleep(runtime.settings.job_lease_seconds + 0.2)
    assert reconcile(runtime).failed == [job_id]
    job = job_row(runtime, job_id)
    assert job.status == "failed"
    assert job.error is not None and "stopped answering" in job.error


def test_a_failed_handler_ends_its_job_with_the_reason(
        runtime: Runtime, probe: Callable[..., None]) -> None:
    def refuse(runtime: Runtime, job_id: str) -> None:
        raise NotFound("The model of this job was deleted.")

    probe(refuse)
    job_id = add_job(runtime, add_account(runtime))
    run_job(runtime, job_id)
    job = job_row(runtime, job_id)
    assert (job.status, job.stage, job.error) == (
        "failed", "failed", "The model of this job was deleted.")


def test_the_heartbeat_keeps_a_long_job_leased(
        runtime: Runtime, probe: Callable[..., None]) -> None:
    leases = []

    def slow(runtime: Runtime, job_id: str) -> None:
        for _ in range(8):  # four lease lengths, reconciling all along
            time.sleep(runtime.settings.job_lease_seconds / 2)
            assert reconcile(runtime).requeued == []
            leases.append(job_row(runtime, job_id).lease_until)
        _succeed(runtime, job_id)

    probe(slow)
    job_id = add_job(runtime, add_account(runtime))
    run_job(runtime, job_id)
    job = job_row(runtime, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert leases == sorted(leases) and leases[-1] > leases[0]


def test_a_duplicate_send_runs_the_job_once(runtime: Runtime,
                                            probe: Callable[..., None]) -> None:
    runs = []
    both_sent = threading.Barrier(2)

    def count(runtime: Runtime, job_id: str) -> None:
        runs.append(job_id)
        time.sleep(0.3)
        _succeed(runtime, job_id)

    probe(count)
    job_id = add_job(runtime, add_account(runtime))

    def deliver() -> None:
        both_sent.wait()
        run_job(runtime, job_id)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    run_job(runtime, job_id)  # and a third, late copy
    assert runs == [job_id]
    job = job_row(runtime, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_a_run_requeued_under_it_writes_no_failure(
        runtime: Runtime, probe: Callable[..., None]) -> None:
    """A worker that froze past its lease, whose job was requeued and taken by another."""
    job_id = add_job(runtime, add_account(runtime))

    def frozen(runtime: Runtime, job_id: str) -> None:
        time.sleep(runtime.settings.job_lease_seconds * 1.5)  # no renewal gets through
        with runtime.session_factory() as session:  # meanwhile: requeued and claimed again
            run = job_service.Abandoned(job_id, "probe", 1)
            assert job_service.recover_run(session, run=run, max_attempts=3,
                                           now=utcnow()) == "requeued"
            assert isinstance(job_service.claim_job(
                session, job_id=job_id, lease_seconds=60, account_cap=1,
                training_timeout=60), job_service.Claim)
        raise ValueError("the frozen worker finally fails")

    probe(frozen)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job_service, "renew_lease", lambda *a, **k: True)
        run_job(runtime, job_id)
    job = job_row(runtime, job_id)
    assert (job.status, job.attempts) == ("running", 2)  # the second run's, untouched
