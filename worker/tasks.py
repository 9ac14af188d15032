"""Celery tasks: thin wrappers over the job handlers the embedded runner uses too."""

from __future__ import annotations

from typing import Any

from app.jobs.celery_queue import TASK_NAME
from app.jobs.handlers import run_job
from worker.celery_app import celery_app, runtime


@celery_app.task(name=TASK_NAME, bind=True)
def run_job_task(self: Any, job_id: str) -> None:
    # acks_late + reject_on_worker_lost: a job whose worker died comes back flagged redelivered
    delivery = self.request.delivery_info or {}
    run_job(runtime(), job_id, redelivered=bool(delivery.get("redelivered")))
