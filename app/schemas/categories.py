from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.models import CategoryOut


class CategoryCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["wasps"],
                      description="unique in the model (case-insensitive), no '/', not 'unknown'")


class CategoryRename(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["honey bees"],
                      description="the new name; the category keeps its images and position")


class CategoryList(BaseModel):
    categories: list[CategoryOut]


__all__ = ["CategoryCreate", "CategoryList", "CategoryOut", "CategoryRename"]
