"""The embedded default's job backend: worker threads inside the API process."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from app.jobs.handlers import run_job
from app.services.jobs import queued_job_ids, recover_interrupted_jobs

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.jobs")
_STOP = object()


class InProcessQueue:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._pending: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Recover jobs a previous process left behind, queue them, and start the workers."""
        with self.runtime.session_factory() as session:
            recover_interrupted_jobs(session, max_attempts=self.runtime.settings.job_max_attempts)
            for job_id in queued_job_ids(session):
                self._pending.put(job_id)
        for index in range(self.runtime.settings.job_workers):
            thread = threading.Thread(target=self._work, name=f"nanonet-job-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job_id: str) -> None:
        self._pending.put(job_id)

    def stop(self) -> None:
        for _ in self._threads:
            self._pending.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def join(self, timeout: float | None = None) -> None:
        """Wait until every submitted job has run (tests and CLI tools)."""
        done = threading.Event()

        def _wait() -> None:
            self._pending.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        done.wait(timeout)

    def _work(self) -> None:
        while True:
            item = self._pending.get()
            try:
                if item is _STOP:
                    return
                run_job(self.runtime, str(item))
            except Exception:  # a job must never kill its worker thread
                log.exception("jobs.worker.crashed job_id=%s", item)
            finally:
                self._pending.task_done()
