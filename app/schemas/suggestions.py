"""Which pool images to label next, least certain first."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_SUGGESTIONS = 100


class SuggestionOut(BaseModel):
    image_id: int
    file_name: str
    thumbnail_url: str
    predicted: str  # the active version's most probable category
    probability: float  # of `predicted`
    margin: float = Field(description="top minus second probability; smaller is less certain")
    reason: str


class SuggestionList(BaseModel):
    model_id: str
    version: int
    pool_size: int = Field(description="how many images the unlabelled pool holds")
    items: list[SuggestionOut]
