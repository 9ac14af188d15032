from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)

from app.api.deps import AccountDep, RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import limit_uploads
from app.schemas.bounds import MAX_INT64, MAX_PAGE, MIN_INT64
from app.schemas.images import (
    MAX_PER_PAGE,
    BulkRequest,
    BulkResult,
    ImageOut,
    ImagePage,
    ImageUpdate,
    UploadResponse,
    UploadResult,
)
from app.services import images as image_service

ImageId = Annotated[int, Path(ge=MIN_INT64, le=MAX_INT64)]

router = APIRouter(prefix="/models", tags=["images"])

MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
               "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
               "TIFF": "image/tiff"}
# A thumbnail URL names its content hash (?v=), so the browser may keep it; without it, or with
# a stale one (SQLite may reuse a deleted image's id), it must ask again.
CACHE_FOREVER = "private, max-age=31536000, immutable"
CACHE_REVALIDATE = "private, no-cache"


@router.post("/{model_id}/images", response_model=UploadResponse,
             dependencies=[Depends(limit_uploads)])
def upload_images(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                  category: Annotated[str | None, Form()] = None,
                  labels: Annotated[list[str] | None, Form()] = None,
                  files: Annotated[list[UploadFile] | None, File()] = None) -> UploadResponse:
    """Add images to one category, or without `category` to the unlabelled pool; each file gets
    its own result (accepted/duplicate/rejected).

    Multi-label models take `labels` instead: comma-separated category names, one entry per
    file in order (or one entry for every file)."""
    results = image_service.add_images(session, runtime, account=account, model_id=model_id,
                                       category=category, uploads=read_uploads(files, runtime),
                                       labels=labels)
    return UploadResponse(model_id=model_id, category=(category or "").strip() or None,
                          accepted=sum(r["status"] == "accepted" for r in results),
                          results=[UploadResult.model_validate(r) for r in results])


@router.get("/{model_id}/images", response_model=ImagePage)
def list_images(model_id: str, session: SessionDep, account: AccountDep,
                category: str | None = None, labelled: bool | None = None,
                page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
                per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50) -> ImagePage:
    """The model's images in upload order, by category or labelled/unlabelled, a page at once."""
    rows, total = image_service.list_images(session, account=account, model_id=model_id,
                                            category=category, labelled=labelled, page=page,
                                            per_page=per_page)
    labels = image_service.page_labels(session, model_id=model_id, rows=rows)
    return ImagePage(items=[ImageOut.build(image, name, labels.get(image.id, [])
                                           if labels is not None else None)
                            for image, name in rows],
                     total=total, page=page, per_page=per_page)


@router.post("/{model_id}/images/bulk", response_model=BulkResult)
def bulk_images(model_id: str, body: BulkRequest, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep) -> BulkResult:
    """Delete or move many images in one transaction: if any id is not this model's, a 404
    names the missing ids and nothing changes."""
    if body.action == "delete":
        ids = image_service.delete_images(session, runtime, account=account, model_id=model_id,
                                          image_ids=body.image_ids)
        return BulkResult(action="delete", image_ids=ids)
    moved = image_service.move_images(session, account=account, model_id=model_id,
                                      image_ids=body.image_ids, category=body.category)
    return BulkResult(action="move", image_ids=[image.id for image, _ in moved],
                      category=moved[0][1])


@router.get("/{model_id}/images/{image_id}", response_model=ImageOut)
def get_image(model_id: str, image_id: ImageId, session: SessionDep,
              account: AccountDep) -> ImageOut:
    image, name = image_service.get_image(session, account=account, model_id=model_id,
                                          image_id=image_id)
    return ImageOut.build(image, name)


@router.patch("/{model_id}/images/{image_id}", response_model=ImageOut)
def update_image(model_id: str, image_id: ImageId, body: ImageUpdate, session: SessionDep,
                 account: AccountDep) -> ImageOut:
    """Move the image to another category, or with `"category": null` back to the pool."""
    [(image, name)] = image_service.move_images(session, account=account, model_id=model_id,
                                                image_ids=[image_id], category=body.category)
    return ImageOut.build(image, name)


@router.delete("/{model_id}/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(model_id: str, image_id: ImageId, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep) -> Response:
    image_service.delete_images(session, runtime, account=account, model_id=model_id,
                                image_ids=[image_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{model_id}/images/{image_id}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def get_thumbnail(model_id: str, image_id: ImageId, request: Request, session: SessionDep,
                  runtime: RuntimeDep, account: AccountDep,
                  v: Annotated[str | None, Query(description="the content version that "
                                                 "`thumbnail_url` carries")] = None) -> Response:
    """A JPEG of at most 256 px on its longest side, as decoded for training."""
    image, thumbnail = image_service.image_thumbnail(session, runtime, account=account,
                                                     model_id=model_id, image_id=image_id)
    etag = f'"{image.sha256[:32]}"'
    headers = {"ETag": etag, "X-Content-Type-Options": "nosniff",
               "Cache-Control": CACHE_FOREVER if v == image.sha256[:16] else CACHE_REVALIDATE}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(thumbnail, media_type="image/jpeg", headers=headers)


@router.get("/{model_id}/images/{image_id}/original", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_original(model_id: str, image_id: ImageId, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep) -> Response:
    """The file exactly as uploaded, as a download."""
    image, data = image_service.image_original(session, runtime, account=account,
                                               model_id=model_id, image_id=image_id)
    return Response(data, media_type=MEDIA_TYPES.get(image.format, "application/octet-stream"),
                    headers={"Content-Disposition": attachment(image.filename),
                             "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "default-src 'none'; sandbox",
                             "Cache-Control": "private, no-cache"})


def attachment(file_name: str) -> str:
    """Return a Content-Disposition naming the file: an ASCII fallback and the RFC 5987 form."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1].strip() or "image"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"%;\\' else "_"
                       for c in base)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"
