from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.db.tables import ModelVersion, NanoNet


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
    backbone: str | None
    metrics: dict[str, Any] | None
    metrics_note: str | None = None
    version: VersionOut | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def build(cls, nanonet: NanoNet, counts: dict[int, int]) -> ModelOut:
        version = nanonet.active_version
        return cls(
            id=nanonet.id, name=nanonet.name, kind=nanonet.kind, state=nanonet.state,
            categories=[CategoryOut(name=c.name, count=counts.get(c.id, 0))
                        for c in nanonet.categories],
            backbone=version.backbone if version else None,
            metrics=version.metrics if version else None,
            metrics_note=version.params.get("metrics_note") if version else None,
            version=VersionOut.build(version) if version else None,
            created_at=nanonet.created_at, updated_at=nanonet.updated_at,
        )


class ModelList(BaseModel):
    models: list[ModelOut]
