"""Job handlers: plain functions shared by the in-process runner and the Celery tasks, and
`run_job`, which claims a job, holds its lease while the handler runs, and records how it
ended."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.errors import NanoNetError
from app.jobs.lease import Heartbeat
from app.services import jobs as job_service
from app.services.batches import run_batch_job
from app.services.features import run_extraction_job
from app.services.job_control import after_failure
from app.services.training import run_training_job
from app.services.webhooks import run_delivery_job

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.jobs")

HANDLERS: dict[str, Callable[[Runtime, str], None]] = {
    "train": run_training_job,
    "extract": run_extraction_job,
    "batch_predict": run_batch_job,
    job_service.WEBHOOK_JOB: run_delivery_job,
}
# Seconds between tries to write a job's failure: a busy database must not leave it running.
FAILURE_WRITE_RETRIES = (0.5, 2.0, 5.0)


def run_job(runtime: Runtime, job_id: str) -> None:
    """Run one job by id. Idempotent: a job that is not `queued` any more is left alone, so a
    duplicate delivery is harmless.

    Every path ends the job or leaves it to the reconciler: a claim that fails leaves it
    queued (sent again once overdue), a failure that cannot be written leaves it running
    under a lease nobody renews (requeued or failed once that runs out).
    """
    settings = runtime.settings
    try:
        with runtime.session_factory() as session:
            claim = job_service.claim_job(
                session, job_id=job_id, lease_seconds=settings.job_lease_seconds,
                account_cap=settings.job_account_max_running,
                training_timeout=settings.training_timeout)
    except Exception:
        log.exception("jobs.claim.failed job_id=%s (left queued for the reconciler)", job_id)
        return
    if claim is None:
        log.info("jobs.run.skipped job_id=%s", job_id)
        return
    if isinstance(claim, job_service.Deferred):
        log.info("jobs.run.deferred job_id=%s (its account is at its cap)", job_id)
        assert runtime.queue is not None, "the runtime has no job queue"
        with runtime.session_factory() as session:
            job_service.defer_job(session, runtime.queue, job_id=job_id, kind=claim.kind,
                                  delay=settings.job_account_retry_delay)
        return
    with Heartbeat(runtime.session_factory, job_id=job_id, attempt=claim.attempt,
                   interval=settings.job_heartbeat_interval,
                   lease_seconds=settings.job_lease_seconds):
        try:
            handler = HANDLERS.get(claim.kind)
            if handler is None:
                raise RuntimeError(f"no handler for job kind {claim.kind!r}")
            handler(runtime, job_id)
            return
        except job_service.JobLost:
            log.info("jobs.run.lost job_id=%s attempt=%d", job_id, claim.attempt)
            return
        except job_service.JobStopped as exc:
            log.info("jobs.run.stopped job_id=%s stage=%s", job_id, exc.stage)
            error, stage = exc.message, exc.stage
        except Exception as exc:
            log.exception("jobs.run.failed job_id=%s kind=%s", job_id, claim.kind)
            error, stage = _describe(exc, job_id=job_id, kind=claim.kind), "failed"
        if _write_failure(runtime, job_id, claim.attempt, error, stage):
            after_failure(runtime, job_id=job_id, kind=claim.kind)


def _write_failure(runtime: Runtime, job_id: str, attempt: int, error: str, stage: str) -> bool:
    """Record the run's failure, trying again while the database refuses; return whether
    this run ended the job (False: someone else had, or it could not be written)."""
    for pause in (*FAILURE_WRITE_RETRIES, None):
        try:
            with runtime.session_factory() as session:
                return job_service.fail_run(session, job_id=job_id, attempt=attempt,
                                            error=error, stage=stage)
        except Exception:
            log.exception("jobs.fail.unwritten job_id=%s", job_id)
            if pause is None:
                break
            time.sleep(pause)
    return False  # the lease runs out unrenewed, and the reconciler ends the job


_WHAT_FAILED = {"train": "Training", "extract": "Feature extraction",
                "batch_predict": "The batch prediction", job_service.WEBHOOK_JOB: "The delivery"}


def _describe(exc: Exception, *, job_id: str, kind: str) -> str:
    """The reason users see: a NanoNetError's own message; for anything else a plain sentence
    that points to the log (which has the exception), never the exception's text, which may
    hold SQL, file paths or other internals."""
    if isinstance(exc, NanoNetError):
        return exc.message
    what = _WHAT_FAILED.get(kind, "The job")
    return (f"{what} failed: an unexpected error; the server log has the details "
            f"(job {job_id}).")
