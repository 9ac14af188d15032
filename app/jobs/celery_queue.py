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


def routable_kinds() -> list[str]:
    """The job kinds NANONET_JOB_ROUTES may name: every handler's but the deliveries', which
    always go to settings.webhook_queue."""
    from app.jobs.handlers import HANDLERS  # the handlers import the services: not at import
    from app.services.jobs import WEBHOOK_JOB

    return [kind for kind in HANDLERS if kind != WEBHOOK_JOB]


def check_routes(settings: Settings) -> None:
    """Raise ValueError, saying what to change, if settings.job_routes names a kind no
    handler runs or a queue that is not a plain name; run at startup by the API's queue and
    by every worker, so a typo stops the deployment instead of leaving jobs on a queue no
    worker takes."""
    from app.services.jobs import WEBHOOK_JOB

    kinds = routable_kinds()
    for kind, queue in settings.job_routes.items():
        if kind == WEBHOOK_JOB:
            raise ValueError(
                f"NANONET_JOB_ROUTES names {kind!r}: webhook deliveries always go to "
                f"NANONET_WEBHOOK_QUEUE ({settings.webhook_queue!r}); remove it from the "
                f"routes (the kinds it may name: {', '.join(kinds)})")
        if kind not in kinds:
            raise ValueError(
                f"NANONET_JOB_ROUTES names an unknown job kind {kind!r}; the kinds are "
                f"{', '.join(kinds)} (a kind not named goes to NANONET_JOB_QUEUE, "
                f"{settings.job_queue!r})")
        if not isinstance(queue, str) or not queue.strip() or "," in queue:
            raise ValueError(
                f"NANONET_JOB_ROUTES sends {kind!r} to {queue!r}: a queue is one non-empty "
                f"name, such as \"gpu\" (start a worker on it with `nanonet worker --queues "
                f"gpu`)")


def make_celery(settings: Settings) -> Celery:
    """Return a Celery app for settings.redis_url with the job semantics NanoNet relies on;
    raises ValueError if settings.job_routes is wrong (check_routes)."""
    from celery import Celery

    check_routes(settings)

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
    """Sends committed job ids to the queue settings.job_routes names for their kind (else
    settings.job_queue), deliveries to settings.webhook_queue; GPU workers consume `gpu` and
    `cpu`, a small worker consumes `webhooks`.

    A delayed send (a delivery's retry, a job held back by its account's cap) is a Celery
    countdown, held by a worker until due; one lost with its worker is sent again by the
    reconciler once overdue."""

    def __init__(self, settings: Settings) -> None:
        check_routes(settings)  # at startup, not at the first job
        self.settings = settings
        self._app: Celery | None = None

    def start(self) -> None:
        self._app = make_celery(self.settings)

    def stop(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def queue_for(self, *, lane: str = "jobs", kind: str | None = None) -> str:
        """The Celery queue a job of `kind` on `lane` goes to."""
        if lane == "webhooks":
            return self.settings.webhook_queue
        if kind is None:
            return self.settings.job_queue
        return self.settings.job_routes.get(kind, self.settings.job_queue)

    def submit(self, job_id: str, *, lane: str = "jobs", kind: str | None = None,
               delay: float = 0.0) -> None:
        if self._app is None:
            self.start()
        assert self._app is not None
        self._app.send_task(TASK_NAME, args=[job_id], queue=self.queue_for(lane=lane, kind=kind),
                            countdown=delay if delay > 0 else None)
