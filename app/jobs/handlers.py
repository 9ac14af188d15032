"""Job handlers: plain functions shared by the in-process runner and the Celery tasks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.services import jobs as job_service
from app.services.batches import run_batch_job
from app.services.features import run_extraction_job
from app.services.training import on_training_failed, run_training_job
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
# Called after a job of the kind was marked failed (webhooks hear of failed trainings).
ON_FAILURE: dict[str, Callable[[Runtime, str], None]] = {"train": on_training_failed}


def run_job(runtime: Runtime, job_id: str, *, redelivered: bool = False) -> None:
    """Run one job by id. Idempotent: a job that is not `queued` any more is left alone.

    `redelivered`: the queue says the worker that last held this job died before finishing
    it, so a `running` row is a leftover: retry it (or fail it once out of attempts).
    """
    with runtime.session_factory() as session:
        if redelivered:
            job_service.recover_job(session, job_id=job_id,
                                    max_attempts=runtime.settings.job_max_attempts)
        kind = job_service.claim_job(session, job_id=job_id)
    if kind is None:
        log.info("jobs.run.skipped job_id=%s", job_id)
        return
    handler = HANDLERS.get(kind)
    try:
        if handler is None:
            raise RuntimeError(f"no handler for job kind {kind!r}")
        handler(runtime, job_id)
    except Exception as exc:
        log.exception("jobs.run.failed job_id=%s", job_id)
        with runtime.session_factory() as session:
            job_service.fail_job(session, job_id=job_id, error=_describe(exc))
        if kind in ON_FAILURE:
            try:
                ON_FAILURE[kind](runtime, job_id)
            except Exception:
                log.exception("jobs.on_failure.failed job_id=%s", job_id)


def _describe(exc: Exception) -> str:
    from app.errors import NanoNetError

    if isinstance(exc, NanoNetError):
        return exc.message
    return f"internal error: {type(exc).__name__}: {exc}"
