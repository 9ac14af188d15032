from __future__ import annotations

from pydantic import BaseModel


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
    error: FileError | None = None


class UploadResponse(BaseModel):
    model_id: str
    category: str
    accepted: int
    results: list[UploadResult]
