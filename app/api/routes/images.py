from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.api.deps import AccountDep, RuntimeDep, SessionDep, check_request_size, read_uploads
from app.schemas.images import UploadResponse, UploadResult
from app.services.images import add_images

router = APIRouter(prefix="/models", tags=["images"])


@router.post("/{model_id}/images", response_model=UploadResponse,
             dependencies=[Depends(check_request_size)])
def upload_images(model_id: str, category: Annotated[str, Form(min_length=1)],
                  session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                  files: Annotated[list[UploadFile] | None, File()] = None) -> UploadResponse:
    """Add images to one category; each file gets its own result (accepted/duplicate/rejected)."""
    results = add_images(session, runtime, account=account, model_id=model_id,
                         category=category, uploads=read_uploads(files, runtime))
    return UploadResponse(model_id=model_id, category=category.strip(),
                          accepted=sum(r["status"] == "accepted" for r in results),
                          results=[UploadResult.model_validate(r) for r in results])
