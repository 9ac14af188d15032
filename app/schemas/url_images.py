"""What the by-URL routes take; they answer with the shapes of file uploads and predictions."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

MAX_URLS_PER_REQUEST = 100
# app.services.outbound.MAX_URL_LENGTH (a test keeps them equal): schemas import no services.
MAX_URL_LENGTH = 2000

Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]


class UrlUpload(BaseModel):
    urls: list[Url] = Field(min_length=1, max_length=MAX_URLS_PER_REQUEST,
                            examples=[["https://example.com/photos/ant.jpg"]],
                            description="http(s) URLs of image files, each fetched on its own")
    category: str | None = Field(default=None,
                                 description="a category name; null or absent: the unlabelled "
                                             "pool")


class UrlPredict(BaseModel):
    urls: list[Url] = Field(min_length=1, max_length=MAX_URLS_PER_REQUEST,
                            examples=[["https://example.com/photos/ant.jpg"]],
                            description="http(s) URLs of image files, each fetched on its own")
