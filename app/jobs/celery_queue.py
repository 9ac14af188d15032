"""Full-stack job backend: jobs go to Celery workers over Redis.

The API process and the workers build their Celery app with the same `make_celery`, each from
its own Settings, so a sender always talks to the broker its settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "nanonet.run_job"


def make_celery(settings: Settings) -> Celery:
    """Return a Celery app for settings.redis_url with the job semantics NanoNet relies on."""
    from celery import Celery

    app = Celery("nanonet", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        # A message stays unacknowledged until its task returns, so a pool process that dies
        # hands it back; the copy is harmless (claims are atomic) and the job's recovery is
        # the reconciler's, from the lease in its row.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long jobs: never hoard work another worker could take
        task_default_queue="cpu",
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.job_visibility_timeout},
    )
    return app


class CeleryQueue:
    """Sends committed job ids to settings.job_queue, deliveries to settings.webhook_queue;
    GPU workers consume `gpu` and `cpu`, a small worker consumes `webhooks`.

    A delayed send (a delivery's retry, a job held back by its account's cap) is a Celery
    countdown, held by a worker until due; one lost with its worker is sent again by the
    reconciler once overdue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None

    def start(self) -> None:
        self._app = make_celery(self.settings)

    def stop(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def submit(self, job_id: str, *, lane: str = "jobs", delay: float = 0.0) -> None:
        if self._app is None:
            self.start()
        assert self._app is not None
        target = self.settings.webhook_queue if lane == "webhooks" else self.settings.job_queue
        self._app.send_task(TASK_NAME, args=[job_id], queue=target,
                            countdown=delay if delay > 0 else None)
