from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.db.tables import Model, ModelVersion, VersionStatus
from app.schemas.metrics import (
    MultiLabelMetrics,
    TrainingSettings,
    VersionMetrics,
    VersionParams,
    metrics_of,
)


class ModelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["ants vs bees"])
    categories: list[str] = Field(examples=[["ants", "bees"]], description="2 to 100 names")
    kind: Literal["single_label", "multi_label"] = Field(
        default="single_label", description="single_label: each image is one of the categories; "
        "multi_label: an image may carry several (or none), each category has its own threshold")


class CategoryOut(BaseModel):
    name: str
    count: int


class ActivationOut(BaseModel):
    policy: str = Field(description="always | if_better | never, as the training was asked")
    activated: bool
    reason: str


class VersionOut(BaseModel):
    id: str
    number: int
    status: str = Field(description="training | ready | failed")
    error: str | None = Field(default=None, description="why it failed")
    active: bool = False
    backbone: str | None = Field(description="null until training has chosen one")
    head: str | None
    image_count: int
    accuracy: float | None = Field(default=None, description="cross-validated")
    train_seconds: float
    activation: ActivationOut | None = None
    created_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def build(cls, version: ModelVersion, *, active_id: str | None = None) -> VersionOut:
        return cls(id=version.id, number=version.number, status=version.status,
                   error=version.error, active=version.id == active_id,
                   backbone=version.backbone, head=version.head,
                   image_count=len(set(version.image_ids)),  # multi-label: a pair per label
                   accuracy=(version.metrics or {}).get("accuracy"),
                   train_seconds=version.train_seconds,
                   activation=ActivationOut.model_validate(version.activation)
                   if version.activation else None,
                   created_at=version.created_at, finished_at=version.finished_at)


class TrainedImage(BaseModel):
    id: int
    sha256: str | None = Field(description="null for versions trained before hashes were kept")
    category: str


class CategoryChange(BaseModel):
    category: str
    added: int
    removed: int
    count: int


class VersionChanges(BaseModel):
    since_version: int | None = Field(description="null for a model's first version")
    known: bool = Field(description="false when the version before did not record its images")
    images_added: int
    images_removed: int
    categories_added: list[str]
    categories_removed: list[str]
    per_category: list[CategoryChange]


class VersionDetail(VersionOut):
    labels: list[str]
    settings: TrainingSettings | None
    metrics: VersionMetrics | MultiLabelMetrics | None
    metrics_note: str | None
    changes: VersionChanges | None
    images: list[TrainedImage]

    @classmethod
    def detail(cls, version: ModelVersion, *, active_id: str | None) -> VersionDetail:
        base = VersionOut.build(version, active_id=active_id)
        ready = version.status == VersionStatus.READY
        params = VersionParams.of(version) if ready else None
        settings = (params.settings if params is not None
                    else TrainingSettings.model_validate(version.params["settings"])
                    if "settings" in (version.params or {}) else None)
        hashes: list[str | None] = [None] * len(version.image_ids)
        if version.image_hashes is not None:
            hashes = list(version.image_hashes)
        labels = version.image_labels
        if labels is None:  # older versions: the categories are in their review data only
            labels = [-1] * len(version.image_ids)
        return cls(**base.model_dump(), labels=list(version.labels), settings=settings,
                   metrics=metrics_of(version) if ready else None,
                   metrics_note=params.metrics_note if params is not None else None,
                   changes=VersionChanges.model_validate(version.changes)
                   if version.changes else None,
                   images=[TrainedImage(id=image_id, sha256=digest,
                                        category=version.labels[label] if label >= 0 else "")
                           for image_id, digest, label in zip(version.image_ids, hashes, labels,
                                                              strict=True)])


class VersionList(BaseModel):
    model_id: str
    active_version: int | None
    items: list[VersionOut]
    total: int
    page: int
    per_page: int


class ActivateOut(BaseModel):
    model_id: str
    active_version: VersionOut
    changed: bool = Field(description="false when it was already the active version")


class TrainRequest(BaseModel):
    activate: Literal["always", "if_better", "never"] = Field(
        default="always", description="if_better: only when its cross-validated accuracy is at "
        "least the active version's; never: activate it yourself later")


class ModelOut(BaseModel):
    id: str
    name: str
    kind: str
    state: str
    categories: list[CategoryOut]
    unlabelled: int = Field(description="images in the unlabelled pool, which training ignores")
    backbone: str | None
    metrics: VersionMetrics | MultiLabelMetrics | None
    metrics_note: str | None = None
    version: VersionOut | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def build(cls, model: Model, counts: dict[int, int],
              unlabelled: dict[str, int] | None = None) -> ModelOut:
        version = model.active_version
        return cls(
            id=model.id, name=model.name, kind=model.kind, state=model.state,
            categories=[CategoryOut(name=c.name, count=counts.get(c.id, 0))
                        for c in model.categories],
            unlabelled=(unlabelled or {}).get(model.id, 0),
            backbone=version.backbone if version else None,
            metrics=metrics_of(version) if version else None,
            metrics_note=VersionParams.of(version).metrics_note if version else None,
            version=VersionOut.build(version, active_id=version.id) if version else None,
            created_at=model.created_at, updated_at=model.updated_at,
        )


MAX_MODELS_PER_PAGE = 200


class ModelList(BaseModel):
    models: list[ModelOut] = Field(description="this page of the account's models, newest first")
    total: int = Field(description="the account's models in all")
    page: int
    per_page: int
