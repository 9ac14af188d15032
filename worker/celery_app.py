"""The Celery application of the workers: broker and settings come from app.config.Settings.

Every worker process also runs the reconciler on a thread of its own (app.jobs.reconciler):
a worker killed outright, main process and pool alike, leaves its job `running` under a
lease nobody renews, and whichever worker runs next requeues it once the lease runs out.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from app.config import Settings
from app.jobs.celery_queue import make_celery
from app.jobs.reconciler import Periodic, reconcile

celery_app = make_celery(Settings())
_runtime = None
_runtime_lock = threading.Lock()  # the webhooks worker runs tasks on threads
_reconciler: Periodic | None = None


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


def _start_reconciler() -> None:
    global _reconciler
    _reconciler = Periodic(lambda: reconcile(runtime()),
                           interval=Settings().job_reconcile_interval, name="nanonet-reconciler")
    _reconciler.start()


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """In each pool process (prefork, solo), after fork: a runtime of its own, a reconciler."""
    global _runtime
    _runtime = None
    _start_reconciler()


@worker_ready.connect
def _reconcile_in_thread_pools(sender: Any, **_: object) -> None:
    """A threads pool has no pool processes to start one: the worker's own process does."""
    from celery.concurrency.thread import TaskPool as ThreadPool

    if isinstance(getattr(sender, "pool", None), ThreadPool):
        _start_reconciler()


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if _reconciler is not None:
        _reconciler.stop()
    if _runtime is not None:
        if _runtime.queue is not None:
            _runtime.queue.stop()
        _runtime.engine.dispose()
