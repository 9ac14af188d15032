from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.db.tables import Job, JobStatus


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    """`status` is queued, running, succeeded or failed; a failed job's `stage` says how it
    ended (`cancelled`, `timed_out`, `failed`) and `error` why. `cancel_requested_at`: a
    running job asked to stop, which it does at its next progress report."""

    id: str
    kind: str
    model_id: str | None
    status: JobStatus
    stage: str
    progress: float
    error: str | None
    attempts: int
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    deadline_at: datetime | None

    @classmethod
    def build(cls, job: Job) -> JobOut:
        return cls(id=job.id, kind=job.kind, model_id=job.model_id, status=JobStatus(job.status),
                   stage=job.stage, progress=round(job.progress, 4), error=job.error,
                   attempts=job.attempts, result=job.result, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at,
                   cancel_requested_at=job.cancel_requested_at, deadline_at=job.deadline_at)
