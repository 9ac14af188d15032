from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.db.tables import Job


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    id: str
    kind: str
    model_id: str | None
    status: str
    stage: str
    progress: float
    error: str | None
    attempts: int
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def build(cls, job: Job) -> JobOut:
        return cls(id=job.id, kind=job.kind, model_id=job.model_id, status=job.status,
                   stage=job.stage, progress=round(job.progress, 4), error=job.error,
                   attempts=job.attempts, result=job.result, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at)
