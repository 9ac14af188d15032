"""Jobs ended from outside their handler: cancelling one, and what a job of each kind does
once it has ended failed, whoever ended it (its run, a cancel, the reconciler)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db.tables import Account, Job
from app.errors import Conflict
from app.runtime import Runtime
from app.services import jobs as job_service
from app.services.batches import BATCH_JOB, on_batch_failed
from app.services.training import on_training_failed

log = logging.getLogger("nanonet.jobs")

# Trainings tell the webhooks; a batch drops its files and tells them too.
AFTER_FAILURE: dict[str, Callable[[Runtime, str], None]] = {
    "train": on_training_failed,
    BATCH_JOB: on_batch_failed,
}


def after_failure(runtime: Runtime, *, job_id: str, kind: str) -> None:
    """Run what a job of `kind` does once it ended failed; never raises into the caller."""
    follow_up = AFTER_FAILURE.get(kind)
    if follow_up is None:
        return
    try:
        follow_up(runtime, job_id)
    except Exception:
        log.exception("jobs.after_failure.failed job_id=%s kind=%s", job_id, kind)


def cancel_job(session: Session, runtime: Runtime, *, account: Account, job_id: str) -> Job:
    """Cancel the account's job: a queued one at once, a running one at its next progress
    report (its training version fails with it; the active version stays). Return the job.

    Raises NotFound (missing or another account's), Conflict (finished already, or a webhook
    delivery, which ends with its webhook).
    """
    job = job_service.get_job(session, account=account, job_id=job_id)
    if job.kind == job_service.WEBHOOK_JOB:
        raise Conflict("A webhook delivery is not cancelled on its own: disable or delete its "
                       "webhook instead.", code="job_not_cancellable")
    if job_service.cancel_queued(session, job_id=job.id):
        log.info("jobs.cancelled job_id=%s kind=%s while=queued", job.id, job.kind)
        after_failure(runtime, job_id=job.id, kind=job.kind)
    elif job_service.request_cancel(session, job_id=job.id):
        log.info("jobs.cancel_requested job_id=%s kind=%s", job.id, job.kind)
    else:
        session.refresh(job)
        raise Conflict(f"This job already {job.status}: there is nothing left to cancel.",
                       code="job_finished", details={"status": job.status})
    session.refresh(job)
    return job
