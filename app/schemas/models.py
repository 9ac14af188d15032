from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.db.tables import Model, ModelVersion
from app.schemas.metrics import VersionMetrics, VersionParams


class ModelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["ants vs bees"])
    categories: list[str] = Field(examples=[["ants", "bees"]], description="2 to 100 names")


class CategoryOut(BaseModel):
    name: str
    count: int


class VersionOut(BaseModel):
    id: str
    number: int
    backbone: str
    head: str
    image_count: int
    train_seconds: float
    created_at: datetime

    @classmethod
    def build(cls, version: ModelVersion) -> VersionOut:
        return cls(id=version.id, number=version.number, backbone=version.backbone,
                   head=version.head, image_count=len(version.image_ids),
                   train_seconds=version.train_seconds, created_at=version.created_at)


class ModelOut(BaseModel):
    id: str
    name: str
    kind: str
    state: str
    categories: list[CategoryOut]
    unlabelled: int = Field(description="images in the unlabelled pool, which training ignores")
    backbone: str | None
    metrics: VersionMetrics | None
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
            metrics=VersionMetrics.of(version) if version else None,
            metrics_note=VersionParams.of(version).metrics_note if version else None,
            version=VersionOut.build(version) if version else None,
            created_at=model.created_at, updated_at=model.updated_at,
        )


class ModelList(BaseModel):
    models: list[ModelOut]
