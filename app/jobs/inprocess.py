"""The embedded default's job backend: worker threads inside the API process."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("nanonet.jobs")
_STOP = object()
LANES = ("jobs", "webhooks")


class InProcessQueue:
    """Runs each submitted job id with `run`, on daemon threads: `workers` of them for the
    "jobs" lane, `webhook_workers` for "webhooks", so a slow webhook receiver never holds up
    a training.

    `pending` is called once at start and returns (job id, lane) of jobs left waiting (by a
    previous process, say): they are queued before anything submitted later. A delayed submit
    waits on a timer thread; if the process stops first, `pending` finds the job at the next
    start and its handler waits out what is left of the delay.
    """

    def __init__(self, run: Callable[[str], None], *, workers: int = 1,
                 webhook_workers: int = 2,
                 pending: Callable[[], Iterable[tuple[str, str]]] = tuple) -> None:
        self._run = run
        self._pending_at_start = pending
        self._sizes = {"jobs": workers, "webhooks": webhook_workers}
        self._lanes: dict[str, queue.Queue[object]] = {lane: queue.Queue() for lane in LANES}
        self._threads: list[tuple[str, threading.Thread]] = []
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        for job_id, lane in self._pending_at_start():
            self._lane(lane).put(job_id)
        for lane, size in self._sizes.items():
            for index in range(size):
                thread = threading.Thread(target=self._work, args=(self._lanes[lane],),
                                          name=f"nanonet-{lane}-{index}", daemon=True)
                thread.start()
                self._threads.append((lane, thread))

    def submit(self, job_id: str, *, lane: str = "jobs", delay: float = 0.0) -> None:
        target = self._lane(lane)
        if delay <= 0:
            target.put(job_id)
            return

        def due() -> None:
            with self._lock:
                self._timers.discard(timer)
            target.put(job_id)

        timer = threading.Timer(delay, due)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def stop(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        for lane, _ in self._threads:
            self._lanes[lane].put(_STOP)
        for _, thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def join(self, timeout: float | None = None, *, lane: str = "jobs") -> None:
        """Wait until every job submitted to `lane` has run (tests and CLI tools); delayed
        submits count once they are due."""
        done = threading.Event()
        pending = self._lane(lane)

        def _wait() -> None:
            pending.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        done.wait(timeout)

    def _lane(self, lane: str) -> queue.Queue[object]:
        if lane not in self._lanes:
            raise ValueError(f"no job lane {lane!r}; lanes: {', '.join(LANES)}")
        return self._lanes[lane]

    def _work(self, pending: queue.Queue[object]) -> None:
        while True:
            item = pending.get()
            try:
                if item is _STOP:
                    return
                self._run(str(item))
            except Exception:  # a job must never kill its worker thread
                log.exception("jobs.worker.crashed job_id=%s", item)
            finally:
                pending.task_done()
