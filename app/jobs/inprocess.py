"""The embedded default's job backend: worker threads inside the API process."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("nanonet.jobs")
_STOP = object()


class InProcessQueue:
    """Runs each submitted job id with `run`, on `workers` daemon threads.

    `pending` is called once at start and returns the ids of jobs left waiting (by a previous
    process, say): they are queued before anything submitted later.
    """

    def __init__(self, run: Callable[[str], None], *, workers: int = 1,
                 pending: Callable[[], Iterable[str]] = tuple) -> None:
        self._run = run
        self._pending_at_start = pending
        self._workers = workers
        self._pending: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for job_id in self._pending_at_start():
            self._pending.put(job_id)
        for index in range(self._workers):
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
                self._run(str(item))
            except Exception:  # a job must never kill its worker thread
                log.exception("jobs.worker.crashed job_id=%s", item)
            finally:
                self._pending.task_done()
