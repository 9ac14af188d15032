"""Job rows: claiming under a lease, progress (where a run learns it must stop), failure,
cancellation, lookup, and what the reconciler needs to find jobs nobody is running."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from app.db.base import utcnow
from app.db.tables import (
    ACTIVE_JOB_STATUSES,
    Account,
    Job,
    JobStatus,
    Model,
    ModelState,
    ModelVersion,
    VersionStatus,
)
from app.errors import NanoNetError, NotFound, Unavailable

if TYPE_CHECKING:
    from app.runtime import JobQueue

log = logging.getLogger("nanonet.jobs")

WEBHOOK_JOB = "webhook"
TIMED_KINDS = ("train",)  # kinds with a time limit (settings.training_timeout)
CANCELLED = "Cancelled on request."


class JobStopped(NanoNetError):
    """Raised at a progress report when the run must stop; `stage` is the one it ends in."""

    status = 409
    code = "job_stopped"
    stage = "failed"


class JobCancelled(JobStopped):
    code = "job_cancelled"
    stage = "cancelled"


class JobTimedOut(JobStopped):
    code = "job_timed_out"
    stage = "timed_out"


class JobLost(JobStopped):
    """The job is not running under this worker any more: requeued by the reconciler after
    the lease ran out, ended by someone else, or deleted with its model."""

    code = "job_lost"


@dataclass(frozen=True)
class Claim:
    """A job this worker now runs; `attempt` fences its lease renewals and its failure."""

    kind: str
    attempt: int


@dataclass(frozen=True)
class Deferred:
    """A job left queued because its account is at its cap while another account waits."""

    kind: str


def get_job(session: Session, *, account: Account, job_id: str) -> Job:
    """Return the account's job; raises NotFound for a missing or foreign job."""
    job = session.get(Job, job_id)
    if job is None or job.account_id != account.id:
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def lane_of(kind: str) -> str:
    """The queue lane of a job kind: deliveries run apart from the jobs (app.runtime.JobQueue)."""
    return "webhooks" if kind == WEBHOOK_JOB else "jobs"


def account_of(session: Session, *, job_id: str) -> str | None:
    """The account a job belongs to (None once it is deleted): what fair scheduling rotates on."""
    return session.scalar(select(Job.account_id).where(Job.id == job_id))


def claim_job(session: Session, *, job_id: str, lease_seconds: float, account_cap: int,
              training_timeout: float) -> Claim | Deferred | None:
    """Atomically move a queued job to running under a fresh lease. Return its Claim;
    Deferred when its account already runs `account_cap` jobs while another account under
    its cap has one waiting; None when it is not queued (claimed already, ended, deleted)."""
    found = session.execute(select(Job.account_id, Job.kind)
                            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)).first()
    if found is None:
        session.rollback()
        return None
    account_id, kind = found
    now = utcnow()
    conditions: list[ColumnElement[bool]] = [Job.id == job_id, Job.status == JobStatus.QUEUED]
    if lane_of(kind) == "jobs":
        # Serialises claims per account on PostgreSQL, so two workers cannot both take the
        # last place under the cap; SQLite serialises every write, and the UPDATE below
        # counts in the same statement.
        session.execute(select(Account.id).where(Account.id == account_id)
                        .with_for_update(key_share=True))
        conditions.append(~_held_back(account_id, account_cap))
    deadline = now + timedelta(seconds=training_timeout) if kind in TIMED_KINDS else None
    claimed = session.execute(
        update(Job).where(*conditions)
        .values(status=JobStatus.RUNNING, stage="starting", attempts=Job.attempts + 1,
                started_at=now, updated_at=now, error=None, cancel_requested_at=None,
                lease_until=now + timedelta(seconds=lease_seconds), deadline_at=deadline)
        .returning(Job.attempts)
    ).first()
    session.commit()
    if claimed is not None:
        return Claim(kind=kind, attempt=claimed.attempts)
    still_queued = session.scalar(select(Job.id).where(Job.id == job_id,
                                                       Job.status == JobStatus.QUEUED))
    session.rollback()
    return Deferred(kind=kind) if still_queued else None


def _held_back(account_id: str, cap: int) -> ColumnElement[bool]:
    """True while the account runs `cap` jobs or more and another account, under its own
    cap, has a job waiting: alone, an account may use every worker."""

    def running_of(account: Any) -> Any:
        mine = aliased(Job)
        return (select(func.count()).select_from(mine)
                .where(mine.account_id == account, mine.status == JobStatus.RUNNING,
                       mine.kind != WEBHOOK_JOB)
                .correlate_except(mine).scalar_subquery())

    waiting = aliased(Job)
    other_waits = exists().where(waiting.status == JobStatus.QUEUED,
                                 waiting.account_id != account_id,
                                 waiting.kind != WEBHOOK_JOB,
                                 running_of(waiting.account_id) < cap)
    return and_(running_of(account_id) >= cap, other_waits)


def renew_lease(session: Session, *, job_id: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease of this attempt of a running job; False once it does not hold it."""
    now = utcnow()
    renewed = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                          Job.attempts == attempt)
        .values(lease_until=now + timedelta(seconds=lease_seconds))
        .returning(Job.id)
    ).first()
    session.commit()
    return renewed is not None


def set_progress(session: Session, *, job_id: str, stage: str, progress: float) -> None:
    """Record a running job's stage and progress: the check every handler passes often.

    Raises JobCancelled (cancel requested), JobTimedOut (past its deadline) or JobLost (not
    running any more), which the runner turns into the job's end.
    """
    row = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(stage=stage, progress=max(0.0, min(1.0, progress)), updated_at=utcnow())
        .returning(Job.cancel_requested_at, Job.deadline_at, Job.started_at)
    ).first()
    session.commit()
    if row is None:
        raise JobLost("This job is no longer running here: it was requeued, ended or deleted.")
    if row.cancel_requested_at is not None:
        raise JobCancelled(CANCELLED)
    if row.deadline_at is not None and utcnow() >= row.deadline_at:
        raise JobTimedOut(_timed_out(row.started_at, row.deadline_at))


def _timed_out(started_at: datetime | None, deadline_at: datetime) -> str:
    limit = (deadline_at - started_at).total_seconds() if started_at else 0.0
    shown = f"{limit / 3600:g} h" if limit >= 3600 else f"{limit:g} s"
    return (f"Stopped after running longer than its time limit of {shown} "
            "(NANONET_TRAINING_TIMEOUT).")


def dispatch(session: Session, queue: JobQueue | None, job: Job, *, delay: float = 0.0) -> None:
    """Hand a committed job to the queue; if the queue refuses it, fail the job and raise.

    Without this a job whose message never reached the broker would stay `queued` forever and
    block every later request for the same model. Raises Unavailable (503).
    """
    assert queue is not None, "the runtime has no job queue"
    if delay > 0:  # not overdue before it may run: the reconciler must not send it again
        job.due_at = utcnow() + timedelta(seconds=delay)
        session.commit()
    try:
        queue.submit(job.id, lane=lane_of(job.kind), kind=job.kind, delay=delay)
    except Exception as exc:
        log.exception("jobs.dispatch.failed job_id=%s kind=%s", job.id, job.kind)
        # The type only: the message can carry the broker URL, credentials included.
        fail_job(session, job_id=job.id,
                 error=f"The job queue could not be reached ({type(exc).__name__}).")
        raise Unavailable(
            "The job queue is not reachable, so nothing was queued. Check that the broker "
            "(Redis) and the workers are running, then try again.",
            code="queue_unavailable",
        ) from exc


def defer_job(session: Session, queue: JobQueue, *, job_id: str, kind: str,
              delay: float) -> None:
    """Send a queued job again in `delay` s. If the queue refuses, the job stays queued and
    the reconciler sends it once it is overdue."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                    .values(due_at=utcnow() + timedelta(seconds=delay)))
    session.commit()
    try:
        queue.submit(job_id, lane=lane_of(kind), kind=kind, delay=delay)
    except Exception:
        log.exception("jobs.defer.not_sent job_id=%s", job_id)


def fail_job(session: Session, *, job_id: str, error: str, stage: str = "failed") -> bool:
    """Mark a queued or running job failed (its training version with it) and put its model
    back in a state that says what it can do; return whether this call ended it."""
    ended = _end_failed(session, job_id, error, stage, Job.status.in_(ACTIVE_JOB_STATUSES))
    session.commit()
    return ended


def fail_run(session: Session, *, job_id: str, attempt: int, error: str, stage: str) -> bool:
    """fail_job for one attempt: a no-op once the reconciler requeued the job or another
    worker runs it; return whether this call ended it."""
    ended = _end_failed(session, job_id, error, stage, Job.status == JobStatus.RUNNING,
                        Job.attempts == attempt)
    session.commit()
    return ended


def _end_failed(session: Session, job_id: str, error: str, stage: str,
                *conditions: ColumnElement[bool]) -> bool:
    now = utcnow()
    ended = session.execute(
        update(Job).where(Job.id == job_id, *conditions)
        .values(status=JobStatus.FAILED, stage=stage, error=error, finished_at=now,
                updated_at=now)
        .returning(Job.model_id)
    ).first()
    if ended is None:
        return False
    # A training's version fails with it; the active version, whatever it is, stays.
    session.execute(update(ModelVersion)
                    .where(ModelVersion.job_id == job_id,
                           ModelVersion.status == VersionStatus.TRAINING)
                    .values(status=VersionStatus.FAILED, error=error, finished_at=now))
    model = session.get(Model, ended.model_id) if ended.model_id is not None else None
    if model is not None and model.state == ModelState.TRAINING and not _other_active_job(
        session, model.id, job_id
    ):
        untrained = ModelState.CREATED if stage == "cancelled" else ModelState.FAILED
        model.state = ModelState.READY if model.active_version_id else untrained
    return True


def _other_active_job(session: Session, model_id: str, job_id: str) -> bool:
    return session.scalar(
        select(Job.id).where(Job.model_id == model_id, Job.id != job_id,
                             Job.status.in_(ACTIVE_JOB_STATUSES)).limit(1)
    ) is not None


def cancel_queued(session: Session, *, job_id: str) -> bool:
    """End a job that no worker has claimed yet as cancelled; return whether it was queued."""
    ended = _end_failed(session, job_id, CANCELLED, "cancelled",
                        Job.status == JobStatus.QUEUED)
    session.commit()
    return ended


def request_cancel(session: Session, *, job_id: str) -> bool:
    """Ask a running job to stop at its next progress report; return whether it is running."""
    asked = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, utcnow()))
        .returning(Job.id)
    ).first()
    session.commit()
    return asked is not None


def jobs_to_resume(session_factory: sessionmaker[Session], *,
                   max_attempts: int) -> list[tuple[str, str]]:
    """At start: recover what a dead process left `running`, then return (id, lane) of every
    queued job."""
    with session_factory() as session:
        recover_interrupted_jobs(session, max_attempts=max_attempts)
        return queued_job_ids(session)


def recover_interrupted_jobs(session: Session, *, max_attempts: int) -> list[str]:
    """Requeue every job left `running` (the embedded runner at start: no other process runs
    jobs), or fail it once out of attempts."""
    recovered = []
    for job_id, attempt in session.execute(select(Job.id, Job.attempts)
                                           .where(Job.status == JobStatus.RUNNING)).all():
        fence = (Job.status == JobStatus.RUNNING,)
        if attempt < max_attempts:
            _requeue(session, job_id, f"retrying: the worker stopped during attempt {attempt}",
                     *fence)
        else:
            _end_failed(session, job_id, f"The worker stopped while this job was running "
                                         f"(attempt {attempt} of {max_attempts}); start it "
                                         "again.", "failed", *fence)
        recovered.append(job_id)
    session.commit()
    return recovered


def _requeue(session: Session, job_id: str, reason: str,
             *conditions: ColumnElement[bool]) -> bool:
    now = utcnow()
    return session.execute(
        update(Job).where(Job.id == job_id, *conditions)
        .values(status=JobStatus.QUEUED, stage="queued", progress=0.0, error=reason,
                due_at=now, updated_at=now, lease_until=None)
        .returning(Job.id)
    ).first() is not None


@dataclass(frozen=True)
class Abandoned:
    """A running job whose lease ran out: its worker stopped renewing it."""

    job_id: str
    kind: str
    attempt: int


def abandoned_runs(session: Session, *, now: datetime) -> list[Abandoned]:
    """Running jobs whose lease has run out (or that never had one)."""
    rows = session.execute(select(Job.id, Job.kind, Job.attempts).where(
        Job.status == JobStatus.RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now)))
    return [Abandoned(job_id, kind, attempt) for job_id, kind, attempt in rows]


def recover_run(session: Session, *, run: Abandoned, max_attempts: int,
                now: datetime) -> Literal["requeued", "failed"] | None:
    """Requeue an abandoned run (attempts left) or fail it with a reason: cancelled if that
    was asked, timed out past its deadline, else its worker stopped answering. None when it
    moved meanwhile (renewed, ended, or handled by another reconciler)."""
    fence = (Job.status == JobStatus.RUNNING, Job.attempts == run.attempt,
             or_(Job.lease_until.is_(None), Job.lease_until < now))
    row = session.execute(select(Job.cancel_requested_at, Job.deadline_at, Job.started_at)
                          .where(Job.id == run.job_id, *fence)).first()
    if row is None:
        session.rollback()
        return None
    if row.cancel_requested_at is not None:
        ended = _end_failed(session, run.job_id, CANCELLED, "cancelled", *fence)
    elif row.deadline_at is not None and row.deadline_at <= now:
        ended = _end_failed(session, run.job_id, _timed_out(row.started_at, row.deadline_at),
                            "timed_out", *fence)
    elif run.attempt < max_attempts:
        requeued = _requeue(session, run.job_id, f"retrying: the worker running attempt "
                                                 f"{run.attempt} stopped answering", *fence)
        session.commit()
        return "requeued" if requeued else None
    else:
        ended = _end_failed(session, run.job_id, f"The worker running this job stopped "
                                                 f"answering (attempt {run.attempt} of "
                                                 f"{max_attempts}); start it again.",
                            "failed", *fence)
    session.commit()
    return "failed" if ended else None


def overdue_runs(session: Session, *, cutoff: datetime) -> list[Abandoned]:
    """Running jobs whose deadline passed before `cutoff` though their worker still renews
    the lease: a handler stuck between two progress reports."""
    rows = session.execute(select(Job.id, Job.kind, Job.attempts).where(
        Job.status == JobStatus.RUNNING, Job.deadline_at < cutoff))
    return [Abandoned(job_id, kind, attempt) for job_id, kind, attempt in rows]


def time_out_run(session: Session, *, run: Abandoned) -> bool:
    """Fail an overdue run with the timeout's reason; return whether this call ended it."""
    row = session.execute(select(Job.started_at, Job.deadline_at).where(
        Job.id == run.job_id, Job.status == JobStatus.RUNNING,
        Job.attempts == run.attempt)).first()
    if row is None or row.deadline_at is None:
        session.rollback()
        return False
    return fail_run(session, job_id=run.job_id, attempt=run.attempt,
                    error=_timed_out(row.started_at, row.deadline_at), stage="timed_out")


def overdue_queued(session: Session, *, cutoff: datetime) -> list[tuple[str, str]]:
    """(id, kind) of queued jobs due before `cutoff` and still unclaimed."""
    rows = session.execute(select(Job.id, Job.kind).where(
        Job.status == JobStatus.QUEUED, func.coalesce(Job.due_at, Job.created_at) < cutoff)
        .order_by(Job.created_at))
    return [(job_id, kind) for job_id, kind in rows]


def mark_resent(session: Session, *, job_id: str, cutoff: datetime) -> bool:
    """Make an overdue queued job due now; True for the one reconciler that should send it."""
    now = utcnow()
    marked = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED,
                          func.coalesce(Job.due_at, Job.created_at) < cutoff)
        .values(due_at=now)
        .returning(Job.id)
    ).first()
    session.commit()
    return marked is not None


def queued_job_ids(session: Session) -> list[tuple[str, str]]:
    """(id, lane) of every queued job, oldest first."""
    rows = session.execute(select(Job.id, Job.kind).where(Job.status == JobStatus.QUEUED)
                           .order_by(Job.created_at))
    return [(job_id, lane_of(kind)) for job_id, kind in rows]


def queued_job(session: Session, *, model_id: str, kind: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.model_id == model_id, Job.kind == kind,
                           Job.status == JobStatus.QUEUED)
        .limit(1)
    ).first()


def succeed_job(session: Session, *, job_id: str, result: dict | None = None) -> bool:  # type: ignore[type-arg]
    """Mark a running job succeeded with its result and commit; False (and nothing written)
    when it was not running: ended by someone else, requeued, deleted."""
    done = mark_succeeded(session, job_id=job_id, result=result)
    session.commit()
    return done


def mark_succeeded(session: Session, *, job_id: str, result: dict | None) -> bool:  # type: ignore[type-arg]
    """succeed_job inside the caller's transaction, which commits it with its own writes
    (or rolls back on False)."""
    return session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.SUCCEEDED, stage="done", progress=1.0, finished_at=utcnow(),
                result=result)
        .returning(Job.id)
    ).first() is not None


def active_job(session: Session, *, model_id: str, kind: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.model_id == model_id, Job.kind == kind,
                           Job.status.in_(ACTIVE_JOB_STATUSES))
        .order_by(Job.created_at.desc()).limit(1)
    ).first()
