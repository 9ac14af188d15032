"""The reconciler: finds jobs that nobody is running and sets them going again, or ends them.

It runs at start and every settings.job_reconcile_interval seconds in both backends: a
thread of the embedded runner, and a thread in every Celery worker process. Every step is a
conditional UPDATE, so any number of reconcilers may run at once and each job is handled by
one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from app.db.base import utcnow
from app.services import jobs as job_service
from app.services.job_control import after_failure

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.jobs")


@dataclass
class Reconciled:
    """Ids of the jobs one pass requeued, failed and sent again."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def reconcile(runtime: Runtime) -> Reconciled:
    """One pass. A `running` job whose lease ran out is requeued while attempts are left, else
    failed with a reason (cancelled or timed out if so); one past its deadline by a lease
    length although still leased (stuck between progress reports) is failed as timed out; a
    `queued` job still unclaimed settings.job_resend_after s after it was due is sent again,
    since its message may never have reached the broker."""
    settings = runtime.settings
    done = Reconciled()
    to_send: list[tuple[str, str]] = []
    to_follow: list[tuple[str, str]] = []
    now = utcnow()
    with runtime.session_factory() as session:
        for run in job_service.abandoned_runs(session, now=now):
            outcome = job_service.recover_run(session, run=run, now=now,
                                              max_attempts=settings.job_max_attempts)
            if outcome == "requeued":
                done.requeued.append(run.job_id)
                to_send.append((run.job_id, run.kind))
            elif outcome == "failed":
                done.failed.append(run.job_id)
                to_follow.append((run.job_id, run.kind))
        stuck = now - timedelta(seconds=settings.job_lease_seconds)
        for run in job_service.overdue_runs(session, cutoff=stuck):
            if job_service.time_out_run(session, run=run):
                done.failed.append(run.job_id)
                to_follow.append((run.job_id, run.kind))
        unsent = now - timedelta(seconds=settings.job_resend_after)
        for job_id, kind in job_service.overdue_queued(session, cutoff=unsent):
            if job_service.mark_resent(session, job_id=job_id, cutoff=unsent):
                done.resent.append(job_id)
                to_send.append((job_id, kind))
    for job_id, kind in to_follow:
        after_failure(runtime, job_id=job_id, kind=kind)
    assert runtime.queue is not None, "the runtime has no job queue"
    for job_id, kind in to_send:
        try:
            runtime.queue.submit(job_id, lane=job_service.lane_of(kind), kind=kind)
        except Exception:  # still queued: overdue again later, and sent then
            log.exception("jobs.reconcile.not_sent job_id=%s", job_id)
    if done.requeued or done.failed or done.resent:
        log.info("jobs.reconciled requeued=%s failed=%s resent=%s", done.requeued, done.failed,
                 done.resent)
    return done


class Periodic:
    """Calls `work` on a daemon thread, first after `first_after` s, then every `interval`
    s until stopped; an error is logged and the next pass runs as planned."""

    def __init__(self, work: Callable[[], object], *, interval: float, name: str,
                 first_after: float = 0.0) -> None:
        self._work, self._interval, self._first_after = work, interval, first_after
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        wait = self._first_after
        while not self._stopped.wait(wait):
            try:
                self._work()
            except Exception:
                log.exception("jobs.periodic.failed thread=%s", self._thread.name)
            wait = self._interval
