"""The Celery application of the workers: broker and settings come from app.config.Settings."""

from __future__ import annotations

import threading

from celery.signals import worker_process_init, worker_process_shutdown

from app.config import Settings
from app.jobs.celery_queue import make_celery

celery_app = make_celery(Settings())
_runtime = None
_runtime_lock = threading.Lock()  # the webhooks worker runs tasks on threads


def runtime():  # type: ignore[no-untyped-def]
    """The worker process's Runtime, built after fork (one DB engine per process). Its queue
    sends to Celery, so a job can queue others (webhook deliveries, their retries)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from app.jobs.celery_queue import CeleryQueue
            from app.runtime import build_runtime

            settings = Settings()
            built = build_runtime(settings)
            built.queue = CeleryQueue(settings)
            _runtime = built
        return _runtime


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    global _runtime
    _runtime = None


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _runtime is not None:
        if _runtime.queue is not None:
            _runtime.queue.stop()
        _runtime.engine.dispose()
