from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.images import FileError


class LabelProbability(BaseModel):
    label: str
    probability: float
    selected: bool | None = Field(default=None, description="multi-label models: at or above "
                                  "the category's threshold")
    threshold: float | None = None


class PredictResult(BaseModel):
    file: str
    status: str  # ok | rejected
    label: str | None = None
    probability: float | None = None
    labels: list[str] | None = Field(default=None, description="multi-label models: every "
                                     "category predicted, most probable first")
    predictions: list[LabelProbability] | None = None
    error: FileError | None = None


class PredictResponse(BaseModel):
    model_id: str
    version: int
    results: list[PredictResult]
