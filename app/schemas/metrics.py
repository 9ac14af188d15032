from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.db.tables import ModelVersion, NanoNet


class ConfusionMatrix(BaseModel):
    labels: list[str]
    matrix: list[list[int]]


class ClassMetrics(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class CurvePoint(BaseModel):
    images_per_class: int
    accuracy: float
    std: float | None = None


class LearningCurve(BaseModel):
    points: list[CurvePoint]
    projection: list[CurvePoint]
    advice: str


class MetricsOut(BaseModel):
    model_id: str
    version: int
    backbone: str
    head: str
    views: int | None
    method: str | None
    n_images: int
    accuracy: float | None
    balanced_accuracy: float | None
    log_loss: float | None
    calibration_error: float | None
    per_class: list[ClassMetrics]
    confusion_matrix: ConfusionMatrix | None
    learning_curve: LearningCurve | None
    unknown_threshold: float | None
    candidates: list[dict[str, Any]]
    note: str | None

    @classmethod
    def build(cls, nanonet: NanoNet, version: ModelVersion) -> MetricsOut:
        metrics = version.metrics or {}
        params = version.params or {}
        return cls(
            model_id=nanonet.id, version=version.number, backbone=version.backbone,
            head=version.head, views=params.get("views"), method=metrics.get("method"),
            n_images=len(version.image_ids), accuracy=metrics.get("accuracy"),
            balanced_accuracy=metrics.get("balanced_accuracy"), log_loss=metrics.get("log_loss"),
            calibration_error=metrics.get("calibration_error"),
            per_class=metrics.get("per_class", []),
            confusion_matrix=metrics.get("confusion_matrix"),
            learning_curve=metrics.get("learning_curve"),
            unknown_threshold=params.get("unknown_threshold"),
            candidates=params.get("candidates") or [],
            note=params.get("metrics_note"),
        )
