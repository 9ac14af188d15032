"""Celery tasks: thin wrappers over the job handlers the embedded runner uses too."""

from __future__ import annotations

from app.jobs.handlers import run_job
from worker.celery_app import celery_app, runtime


@celery_app.task(name="nanonet.run_job")
def run_job_task(job_id: str) -> None:
    run_job(runtime(), job_id)
