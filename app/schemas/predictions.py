from __future__ import annotations

from pydantic import BaseModel

from app.schemas.images import FileError


class LabelProbability(BaseModel):
    label: str
    probability: float


class PredictResult(BaseModel):
    file: str
    status: str  # ok | rejected
    label: str | None = None
    probability: float | None = None
    predictions: list[LabelProbability] | None = None
    error: FileError | None = None


class PredictResponse(BaseModel):
    model_id: str
    version: int
    results: list[PredictResult]
