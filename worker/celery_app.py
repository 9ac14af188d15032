"""The Celery application of the full stack: broker and settings come from app.config.Settings."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from app.config import Settings


def queue_for(settings: Settings) -> str:
    """The queue jobs are sent to; GPU workers consume `gpu` and `cpu`, CPU workers `cpu`."""
    return settings.job_queue


def make_celery(settings: Settings) -> Celery:
    app = Celery("nanonet", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,  # a job whose worker dies is redelivered, and handlers are idempotent
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long jobs: never hoard work another worker could take
        task_default_queue="cpu",
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        broker_connection_retry_on_startup=True,
    )
    return app


celery_app = make_celery(Settings())
_runtime = None


def runtime():  # type: ignore[no-untyped-def]
    """The worker process's Runtime, built after fork (one DB engine per process)."""
    global _runtime
    if _runtime is None:
        from app.runtime import build_runtime

        _runtime = build_runtime(Settings())
    return _runtime


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    global _runtime
    _runtime = None


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _runtime is not None:
        _runtime.engine.dispose()
