from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from app.db.tables import Image
from app.schemas.bounds import Int64

MAX_PER_PAGE = 200
MAX_BULK_IMAGES = 1000


class FileError(BaseModel):
    code: str
    message: str
    http_status: int


class UploadResult(BaseModel):
    file: str
    status: str  # accepted | duplicate | rejected
    image_id: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    also_in: list[str] | None = Field(
        default=None, description="accepted bytes that are in these categories too: a label "
        "conflict, listed among the review's duplicates")
    labels: list[str] | None = Field(
        default=None, description="multi-label models: the categories the upload gave it")
    error: FileError | None = None


class UploadResponse(BaseModel):
    model_id: str
    category: str | None = Field(description="null: the images went to the unlabelled pool")
    accepted: int
    results: list[UploadResult]


class ImageOut(BaseModel):
    id: int
    category: str | None = Field(description="null while the image is in the unlabelled pool")
    file_name: str
    width: int
    height: int
    bytes: int
    sha256: str
    created_at: datetime
    thumbnail_url: str = Field(description="carries the content hash, so it may be cached long")
    labels: list[str] | None = Field(default=None, description="multi-label models: every "
                                     "category of the image (`category` is the first of them)")

    @classmethod
    def build(cls, image: Image, category: str | None,
              labels: list[str] | None = None) -> ImageOut:
        return cls(id=image.id, category=category, labels=labels, file_name=image.filename,
                   width=image.width,
                   height=image.height, bytes=image.size_bytes, sha256=image.sha256,
                   created_at=image.created_at,
                   thumbnail_url=f"/api/v1/models/{image.model_id}/images/{image.id}/thumbnail"
                                 f"?v={image.sha256[:16]}")


class ImagePage(BaseModel):
    items: list[ImageOut]
    total: int
    page: int
    per_page: int


class ImageUpdate(BaseModel):
    category: str | None = Field(description="a category name, or null for the unlabelled pool")


class BulkRequest(BaseModel):
    action: Literal["delete", "move"]
    image_ids: list[Int64] = Field(min_length=1, max_length=MAX_BULK_IMAGES)
    category: str | None = Field(default=None,
                                 description="move only: a category name, or null for the pool")

    @model_validator(mode="after")
    def _category_goes_with_move(self) -> BulkRequest:
        given = "category" in self.model_fields_set
        if self.action == "move" and not given:
            raise ValueError("`move` needs `category`: a category name, or null for the pool")
        if self.action == "delete" and given:
            raise ValueError("`category` goes with `move` only")
        return self


class BulkResult(BaseModel):
    action: Literal["delete", "move"]
    image_ids: list[int]
    category: str | None = None
