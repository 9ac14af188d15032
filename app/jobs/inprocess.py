"""The embedded default's job backend: worker threads inside the API process."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

from app.jobs.handlers import run_job
from app.jobs.reconciler import Periodic, reconcile
from app.services import jobs as job_service

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.jobs")
LANES = ("jobs", "webhooks")


class FairQueue:
    """The job ids waiting on one lane, taken across accounts in turn: the next job is the
    oldest of the account whose last job started longest ago, so one account's many jobs
    never hold up another's. An id already waiting is not added twice (the reconciler sends
    jobs again that may be waiting here).

    `get` returns None once `close` was called and nothing is left waiting.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._waiting: dict[str | None, deque[tuple[int, str]]] = {}
        self._ids: set[str] = set()
        self._last_start: dict[str | None, int] = {}
        self._ticks = 0
        self._unfinished = 0
        self._closed = False

    def put(self, job_id: str, account: str | None) -> None:
        with self._ready:
            if job_id in self._ids:
                return
            self._ticks += 1
            self._waiting.setdefault(account, deque()).append((self._ticks, job_id))
            self._ids.add(job_id)
            self._unfinished += 1
            self._ready.notify()

    def get(self) -> str | None:
        with self._ready:
            while not self._waiting and not self._closed:
                self._ready.wait()
            if not self._waiting:
                return None
            account = min(self._waiting, key=lambda a: (self._last_start.get(a, 0),
                                                         self._waiting[a][0][0]))
            jobs = self._waiting[account]
            _, job_id = jobs.popleft()
            if not jobs:
                del self._waiting[account]
            self._ids.discard(job_id)
            self._ticks += 1
            self._last_start[account] = self._ticks
            return job_id

    def task_done(self) -> None:
        with self._ready:
            self._unfinished -= 1
            self._ready.notify_all()

    def join(self, timeout: float | None = None) -> None:
        with self._ready:
            self._ready.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def reopen(self) -> None:
        with self._ready:
            self._closed = False


class InProcessQueue:
    """Runs each submitted job id with `run`, on daemon threads: `workers` of them for the
    "jobs" lane, `webhook_workers` for "webhooks", so a slow webhook receiver never holds up
    a training. Each lane is a FairQueue over `account_of(job_id)`.

    `pending` is called once at start and returns (job id, lane) of jobs left waiting (by a
    previous process, say): they are queued before anything submitted later. A delayed submit
    waits on a timer thread; if the process stops first, `pending` finds the job at the next
    start and its handler waits out what is left of the delay. `reconcile`, if given, runs
    every `reconcile_interval` s on a thread of its own (`pending` is the pass at start).
    """

    def __init__(self, run: Callable[[str], None], *, workers: int = 1,
                 webhook_workers: int = 2,
                 pending: Callable[[], Iterable[tuple[str, str]]] = tuple,
                 account_of: Callable[[str], str | None] = lambda _: None,
                 reconcile: Callable[[], object] | None = None,
                 reconcile_interval: float = 10.0) -> None:
        self._run = run
        self._pending_at_start = pending
        self._account_of = account_of
        self._sizes = {"jobs": workers, "webhooks": webhook_workers}
        self._lanes = {lane: FairQueue() for lane in LANES}
        self._threads: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._reconcile, self._reconcile_interval = reconcile, reconcile_interval
        self._reconciler: Periodic | None = None

    def start(self) -> None:
        for pending in self._lanes.values():
            pending.reopen()  # after a stop: what was submitted meanwhile is still there
        for job_id, lane in self._pending_at_start():
            self._put(job_id, lane)
        for lane, size in self._sizes.items():
            for index in range(size):
                thread = threading.Thread(target=self._work, args=(self._lanes[lane],),
                                          name=f"nanonet-{lane}-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)
        if self._reconcile is not None:
            self._reconciler = Periodic(self._reconcile, interval=self._reconcile_interval,
                                        first_after=self._reconcile_interval,
                                        name="nanonet-reconciler")
            self._reconciler.start()

    def submit(self, job_id: str, *, lane: str = "jobs", kind: str | None = None,
               delay: float = 0.0) -> None:
        # `kind` routes Celery queues; here every job of a lane shares the lane's threads.
        self._lane(lane)
        if delay <= 0:
            self._put(job_id, lane)
            return

        def due() -> None:
            with self._lock:
                self._timers.discard(timer)
            self._put(job_id, lane)

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
        if self._reconciler is not None:
            self._reconciler.stop()
            self._reconciler = None
        for pending in self._lanes.values():
            pending.close()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def join(self, timeout: float | None = None, *, lane: str = "jobs") -> None:
        """Wait until every job submitted to `lane` has run (tests and CLI tools); delayed
        submits count once they are due."""
        self._lane(lane).join(timeout)

    def _put(self, job_id: str, lane: str) -> None:
        self._lane(lane).put(job_id, self._account_of(job_id))

    def _lane(self, lane: str) -> FairQueue:
        if lane not in self._lanes:
            raise ValueError(f"no job lane {lane!r}; lanes: {', '.join(LANES)}")
        return self._lanes[lane]

    def _work(self, pending: FairQueue) -> None:
        while (job_id := pending.get()) is not None:
            try:
                self._run(job_id)
            except Exception:  # a job must never kill its worker thread
                log.exception("jobs.worker.crashed job_id=%s", job_id)
            finally:
                pending.task_done()


def embedded_queue(runtime: Runtime, *, resume: bool = True) -> InProcessQueue:
    """The embedded runner for `runtime`: the shared handler, fair across accounts, with the
    reconciler. `resume`: pick up what a previous process left queued or running, and
    reconcile; a command-line tool beside a live server must do neither (the server's jobs
    are alive, and its own runner looks after them)."""
    settings = runtime.settings

    def account_of(job_id: str) -> str | None:
        with runtime.session_factory() as session:
            return job_service.account_of(session, job_id=job_id)

    pending = partial(job_service.jobs_to_resume, runtime.session_factory,
                      max_attempts=settings.job_max_attempts) if resume else tuple
    return InProcessQueue(partial(run_job, runtime), workers=settings.job_workers,
                          webhook_workers=settings.webhook_workers, pending=pending,
                          account_of=account_of,
                          reconcile=partial(reconcile, runtime) if resume else None,
                          reconcile_interval=settings.job_reconcile_interval)
