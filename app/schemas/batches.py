from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.db.tables import Job
from app.schemas.bounds import Int64
from app.schemas.images import FileError
from app.schemas.predictions import PredictResult

MAX_BATCH_IMAGES = 10_000
MAX_RESULTS_PER_PAGE = 1000
MAX_BATCHES_PER_PAGE = 200


class BatchRequest(BaseModel):
    """The JSON body of a batch of the model's unlabelled pool (files come as multipart)."""

    model_config = ConfigDict(extra="forbid")

    image_ids: list[Int64] | None = Field(
        default=None, min_length=1,
        description=f"ids of images in this model's unlabelled pool, at most {MAX_BATCH_IMAGES}")
    pool: bool = Field(default=False, description="true: every image of the unlabelled pool")

    @model_validator(mode="after")
    def _one_source(self) -> BatchRequest:
        if (self.image_ids is not None) == self.pool:
            raise ValueError('send either "image_ids": [...] or "pool": true')
        return self


class BatchRejection(BaseModel):
    index: int = Field(description="the file's position among the request's files, from 0")
    file: str
    error: FileError


class BatchAccepted(BaseModel):
    batch_id: str
    job_id: str = Field(description="the same id: GET /api/v1/jobs/{job_id} follows it too")
    status: str
    version: int = Field(description="the version that labels the batch, fixed now")
    count: int = Field(description="inputs, rejected files included")
    accepted: int
    rejected: list[BatchRejection]


class BatchResult(PredictResult):
    """One input's answer, as /predict gives it, and the pool image it was."""

    image_id: int | None = Field(description="the pool image; null for an uploaded file")


class BatchOut(BaseModel):
    batch_id: str
    model_id: str
    status: str
    stage: str
    progress: float
    error: str | None
    version: int
    reject_unknown: bool
    count: int
    summary: dict[str, Any] | None = Field(
        description='once succeeded: {"count", "labelled", "rejected", "labels": {label: n}}')
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def build(cls, job: Job) -> BatchOut:
        return cls(**batch_fields(job))


class BatchDetail(BatchOut):
    results: list[BatchResult] | None = Field(
        description="once succeeded, one page of results in input order")
    page: int
    per_page: int


class BatchPage(BaseModel):
    items: list[BatchOut]
    total: int
    page: int
    per_page: int


def batch_fields(job: Job) -> dict[str, Any]:
    params = job.params or {}
    return {"batch_id": job.id, "model_id": job.model_id, "status": job.status,
            "stage": job.stage, "progress": round(job.progress, 4), "error": job.error,
            "version": params["version"], "reject_unknown": params["reject_unknown"],
            "count": params["count"], "summary": job.result, "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at}
