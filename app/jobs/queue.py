"""The job queue interface: the API submits job ids after commit; a backend runs them."""

from __future__ import annotations

from typing import Protocol


class JobQueue(Protocol):
    def submit(self, job_id: str) -> None:
        """Hand a committed job row to the backend; must not block on the job itself."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_queue(runtime) -> JobQueue:  # type: ignore[no-untyped-def]
    """Return the queue backend named by settings.job_backend."""
    if runtime.settings.job_backend == "celery":
        from app.jobs.celery_queue import CeleryQueue

        return CeleryQueue(runtime.settings)
    from app.jobs.inprocess import InProcessQueue

    return InProcessQueue(runtime)
