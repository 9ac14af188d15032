"""A version's metrics and parameters as training stores them, and the metrics endpoint's answer.

Training validates both before writing them to their JSON columns and every reader validates
them again, so the API and the web page read one typed shape.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from app.db.tables import Model, ModelVersion

Share = Annotated[float, Field(ge=0, le=1)]


class Stored(BaseModel):
    """Exactly the keys training writes, as finite numbers of the right type, nothing coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ClassMetrics(Stored):
    label: str
    precision: Share
    recall: Share
    f1: Share
    support: NonNegativeInt


class ConfusionMatrix(Stored):
    labels: list[str]
    matrix: list[list[NonNegativeInt]]

    @model_validator(mode="after")
    def _one_row_and_column_per_label(self) -> ConfusionMatrix:
        n = len(self.labels)
        if len(self.matrix) != n or any(len(row) != n for row in self.matrix):
            raise ValueError(f"the matrix of {n} labels must be {n} x {n}")
        return self


class MeasuredPoint(Stored):
    images_per_class: PositiveInt
    accuracy: Share
    std: NonNegativeFloat
    n_evaluations: PositiveInt
    n_images: PositiveInt


class ProjectedPoint(Stored):
    images_per_class: PositiveInt
    accuracy: Share


class CurveFit(Stored):
    a: float
    b: float
    c: float
    form: str


class LearningCurve(Stored):
    points: list[MeasuredPoint]
    projection: list[ProjectedPoint]
    curve: CurveFit | None
    advice: str


class VersionMetrics(Stored):
    """Nested cross-validation of a version; a version without it (one image in a class) has
    no metrics at all, and its params say why."""

    accuracy: Share
    balanced_accuracy: Share
    log_loss: NonNegativeFloat
    per_class: list[ClassMetrics]
    confusion_matrix: ConfusionMatrix
    n_images: PositiveInt
    n_folds: PositiveInt
    method: str
    calibration_error: Share
    backbone: str
    head: str
    selection: str
    # Measured after the version is served (it answers predictions first): None for the few
    # seconds between, and where the curve could not be measured.
    learning_curve: LearningCurve | None = None

    @classmethod
    def of(cls, version: ModelVersion) -> VersionMetrics | None:
        """The metrics of a single-label version (None for none, and for a multi-label one)."""
        if version.metrics is None or version.metrics.get("kind") == MULTI_LABEL_KIND:
            return None
        return cls.model_validate(version.metrics)


MULTI_LABEL_KIND = "multi_label"


class CategoryMetrics(Stored):
    """One category of a multi-label version, from held-out predictions."""

    label: str
    precision: Share
    recall: Share
    f1: Share
    average_precision: Share | None  # None: no image carries the category
    support: NonNegativeInt
    threshold: Share  # the serving head's: a probability at or above it says yes


class MultiLabelMetrics(Stored):
    """Nested cross-validation of a multi-label version: backbone, l2 and every category's
    threshold chosen again inside each outer fold (app.ml.multilabel)."""

    kind: str = Field(pattern=f"^{MULTI_LABEL_KIND}$")
    micro_f1: Share
    macro_f1: Share
    micro_precision: Share
    micro_recall: Share
    mean_average_precision: Share | None
    exact_match: Share
    per_category: list[CategoryMetrics]
    n_images: PositiveInt
    n_folds: PositiveInt
    method: str
    backbone: str
    head: str
    l2: float | None
    selection: str

    @classmethod
    def of(cls, version: ModelVersion) -> MultiLabelMetrics | None:
        if version.metrics is None or version.metrics.get("kind") != MULTI_LABEL_KIND:
            return None
        return cls.model_validate(version.metrics)


def metrics_of(version: ModelVersion) -> VersionMetrics | MultiLabelMetrics | None:
    """A version's stored metrics in the shape of its kind."""
    return MultiLabelMetrics.of(version) or VersionMetrics.of(version)


class CandidateScore(Stored):
    backbone: str
    head: str
    l2: float | None
    cv_accuracy: Share
    cv_log_loss: NonNegativeFloat


class TrainingSettings(Stored):
    """The settings a training ran with: what it could choose from, and its policy."""

    backbones: list[str]
    views: NonNegativeInt
    seed: int
    activate: str


class VersionParams(Stored):
    l2: float | None
    views: PositiveInt
    metrics_note: str | None
    candidates: list[CandidateScore]
    unknown_threshold: float | None
    settings: TrainingSettings | None = None  # versions trained before versions kept it: none

    @classmethod
    def of(cls, version: ModelVersion) -> VersionParams:
        return cls.model_validate(version.params)


class CurvePointOut(BaseModel):
    images_per_class: int
    accuracy: float
    std: float | None = None


class LearningCurveOut(BaseModel):
    points: list[CurvePointOut]
    projection: list[CurvePointOut]
    advice: str


# The parts of VersionMetrics the metrics endpoint answers with under the same names.
MEASURED = {"method", "accuracy", "balanced_accuracy", "log_loss", "calibration_error",
            "per_class", "confusion_matrix", "learning_curve"}


class MetricsOut(BaseModel):
    model_id: str
    version: int
    backbone: str
    head: str
    views: int
    method: str | None = None
    n_images: int
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    log_loss: float | None = None
    calibration_error: float | None = None
    per_class: list[ClassMetrics] = []
    confusion_matrix: ConfusionMatrix | None = None
    learning_curve: LearningCurveOut | None = None
    unknown_threshold: float | None
    candidates: list[CandidateScore]
    note: str | None

    @classmethod
    def build(cls, model: Model, version: ModelVersion) -> MetricsOut:
        metrics, params = VersionMetrics.of(version), VersionParams.of(version)
        measured: dict[str, Any] = metrics.model_dump(include=MEASURED) if metrics else {}
        backbone, head = version.chosen
        return cls(model_id=model.id, version=version.number, backbone=backbone,
                   head=head, views=params.views, n_images=len(version.image_ids),
                   unknown_threshold=params.unknown_threshold, candidates=params.candidates,
                   note=params.metrics_note, **measured)
