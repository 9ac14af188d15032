"""Job rows: claiming, progress, failure, lookup and recovery after a restart."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

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
from app.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

    from app.runtime import JobQueue

log = logging.getLogger("nanonet.jobs")

def get_job(session: Session, *, account: Account, job_id: str) -> Job:
    """Return the account's job; raises NotFound for a missing or foreign job."""
    job = session.get(Job, job_id)
    if job is None or job.account_id != account.id:
        raise NotFound(f"No job with id {job_id!r}.")
    return job


def claim_job(session: Session, *, job_id: str) -> str | None:
    """Atomically move a queued job to running; return its kind, or None if not claimable."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, stage="starting", attempts=Job.attempts + 1,
                started_at=now, updated_at=now, error=None)
    )
    claimed = cast("CursorResult[Any]", result).rowcount
    session.commit()
    if not claimed:
        return None
    return session.scalar(select(Job.kind).where(Job.id == job_id))


def set_progress(session: Session, *, job_id: str, stage: str, progress: float) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(stage=stage, progress=max(0.0, min(1.0, progress)), updated_at=utcnow())
    )
    session.commit()


WEBHOOK_JOB = "webhook"


def lane_of(kind: str) -> str:
    """The queue lane of a job kind: deliveries run apart from the jobs (app.runtime.JobQueue)."""
    return "webhooks" if kind == WEBHOOK_JOB else "jobs"


def dispatch(session: Session, queue: JobQueue | None, job: Job, *, delay: float = 0.0) -> None:
    """Hand a committed job to the queue; if the queue refuses it, fail the job and raise.

    Without this a job whose message never reached the broker would stay `queued` forever and
    block every later request for the same model. Raises Unavailable (503).
    """
    assert queue is not None, "the runtime has no job queue"
    try:
        queue.submit(job.id, lane=lane_of(job.kind), delay=delay)
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


def fail_job(session: Session, *, job_id: str, error: str) -> None:
    """Mark a job failed and put its model back in a state that says what it can do."""
    job = session.get(Job, job_id)
    if job is None or job.status not in ACTIVE_JOB_STATUSES:
        return
    _fail(session, job, error)
    session.commit()


def _fail(session: Session, job: Job, error: str) -> None:
    now = utcnow()
    job.status, job.stage, job.error, job.finished_at = JobStatus.FAILED, "failed", error, now
    # A training's version fails with it; the active version, whatever it is, stays.
    session.execute(update(ModelVersion)
                    .where(ModelVersion.job_id == job.id,
                           ModelVersion.status == VersionStatus.TRAINING)
                    .values(status=VersionStatus.FAILED, error=error, finished_at=now))
    if job.model_id is not None:
        model = session.get(Model, job.model_id)
        if model is not None and model.state == ModelState.TRAINING and not _other_active_job(
            session, model.id, job.id
        ):
            model.state = ModelState.READY if model.active_version_id else ModelState.FAILED


def _other_active_job(session: Session, model_id: str, job_id: str) -> bool:
    return session.scalar(
        select(Job.id).where(Job.model_id == model_id, Job.id != job_id,
                             Job.status.in_(ACTIVE_JOB_STATUSES)).limit(1)
    ) is not None


def jobs_to_resume(session_factory: sessionmaker[Session], *,
                   max_attempts: int) -> list[tuple[str, str]]:
    """At start: recover what a dead process left `running`, then return (id, lane) of every
    queued job."""
    with session_factory() as session:
        recover_interrupted_jobs(session, max_attempts=max_attempts)
        return queued_job_ids(session)


def recover_interrupted_jobs(session: Session, *, max_attempts: int) -> list[str]:
    """Requeue jobs left `running` by a dead process, or fail them once out of attempts."""
    recovered = []
    for job in session.scalars(select(Job).where(Job.status == JobStatus.RUNNING)):
        _recover(session, job, max_attempts)
        recovered.append(job.id)
    session.commit()
    return recovered


def recover_job(session: Session, *, job_id: str, max_attempts: int) -> None:
    """Requeue (or fail, once out of attempts) one job whose worker is known to have died.

    Celery calls this for a redelivered message: the worker that had it stopped before
    acknowledging, so a `running` row is left over from that worker, not a live one.
    """
    job = session.get(Job, job_id)
    if job is not None and job.status == JobStatus.RUNNING:
        _recover(session, job, max_attempts)
        session.commit()


def _recover(session: Session, job: Job, max_attempts: int) -> None:
    if job.attempts < max_attempts:
        job.status, job.stage, job.progress = JobStatus.QUEUED, "queued", 0.0
        job.error = f"retrying: the worker stopped during attempt {job.attempts}"
    else:
        _fail(session, job, f"The worker stopped while this job was running (attempt "
                            f"{job.attempts} of {max_attempts}); start it again.")


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


def succeed_job(session: Session, *, job_id: str, result: dict | None = None) -> None:  # type: ignore[type-arg]
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return
    job.status, job.stage, job.progress = JobStatus.SUCCEEDED, "done", 1.0
    job.finished_at = utcnow()
    job.result = result
    session.commit()


def active_job(session: Session, *, model_id: str, kind: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.model_id == model_id, Job.kind == kind,
                           Job.status.in_(ACTIVE_JOB_STATUSES))
        .order_by(Job.created_at.desc()).limit(1)
    ).first()
