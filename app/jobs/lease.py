"""The heartbeat of a running job: a thread that renews its lease in the job row."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as job_service

log = logging.getLogger("nanonet.jobs")


class Heartbeat:
    """Renews the lease of one claimed attempt every `interval` s while the handler runs.

    A worker killed outright stops renewing, and the reconciler sees the lease run out: that,
    not the broker, is how a job learns its worker is gone. A renewal that fails (the database
    busy or away) is logged and tried again at the next beat; the lease is long enough to
    miss one.
    """

    def __init__(self, session_factory: sessionmaker[Session], *, job_id: str, attempt: int,
                 interval: float, lease_seconds: float) -> None:
        self._session_factory = session_factory
        self._job_id, self._attempt = job_id, attempt
        self._interval, self._lease_seconds = interval, lease_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"nanonet-lease-{job_id}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stopped.set()
        # A renewal still waiting on the database is harmless once the run has ended: it only
        # extends a lease of this attempt while the job is running.
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                with self._session_factory() as session:
                    held = job_service.renew_lease(session, job_id=self._job_id,
                                                   attempt=self._attempt,
                                                   lease_seconds=self._lease_seconds)
            except Exception:
                log.exception("jobs.lease.renewal_failed job_id=%s", self._job_id)
                continue
            if not held:  # ended, requeued or deleted: the handler learns it at its next report
                log.info("jobs.lease.lost job_id=%s attempt=%d", self._job_id, self._attempt)
                return
