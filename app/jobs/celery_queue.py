"""Full-stack job backend: jobs go to Celery workers over Redis."""

from __future__ import annotations

from app.config import Settings


class CeleryQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, job_id: str) -> None:
        from worker.celery_app import celery_app, queue_for

        celery_app.send_task("nanonet.run_job", args=[job_id], queue=queue_for(self.settings))
