"""The Celery application of the workers: broker and settings come from app.config.Settings."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_process_shutdown

from app.config import Settings
from app.jobs.celery_queue import make_celery

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
