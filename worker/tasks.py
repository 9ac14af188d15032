"""Celery tasks: thin wrappers over the job handlers the embedded runner uses too."""

from __future__ import annotations

from app.jobs.celery_queue import TASK_NAME
from app.jobs.handlers import run_job
from worker.celery_app import celery_app, runtime


@celery_app.task(name=TASK_NAME)
def run_job_task(job_id: str) -> None:
    # A redelivered message needs nothing special: its job is either still leased by a live
    # worker (the claim skips it) or requeued by the reconciler once the lease ran out.
    run_job(runtime(), job_id)
