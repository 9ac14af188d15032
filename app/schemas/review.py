"""The review of a version: suspected mislabels, duplicates, hardest images, confusions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.bounds import Int64


class SuspectedMislabel(BaseModel):
    image_id: int
    file_name: str
    category: str  # the label the version was trained with
    suggested_category: str
    confidence: float  # out-of-fold probability of suggested_category


class ReviewImage(BaseModel):
    image_id: int
    file_name: str
    category: str


class DuplicateGroup(BaseModel):
    # across_categories: one picture under two labels; within_category: a repeat, which lets
    # cross-validation score an image with its own copy in the training folds.
    kind: Literal["across_categories", "within_category"]
    identical: bool  # the very same bytes, uploaded more than once
    similarity: float  # the lowest cosine between two members
    images: list[ReviewImage]


class HardImage(BaseModel):
    image_id: int
    file_name: str
    probability: float  # out-of-fold probability of its own (correct) category


class HardestInCategory(BaseModel):
    category: str
    images: list[HardImage]


class Confusion(BaseModel):
    category: str
    predicted: str
    count: int
    image_ids: list[int]  # examples, the most confidently wrong first


class ReviewOut(BaseModel):
    model_id: str
    version: int
    backbone: str
    n_images: int  # images of the version still present, the ones reviewed
    n_deleted: int  # images of the version deleted since, left out
    n_fixed: int  # suspects moved to another category since, no longer listed
    duplicate_threshold: float
    suspected_mislabels: list[SuspectedMislabel]
    duplicates: list[DuplicateGroup]
    hardest: list[HardestInCategory]
    confusions: list[Confusion]


class KeepRequest(BaseModel):
    image_ids: list[Int64] = Field(min_length=1, max_length=1000)


class KeepResult(BaseModel):
    image_ids: list[int]  # kept: not suspected of a wrong label again until it changes
