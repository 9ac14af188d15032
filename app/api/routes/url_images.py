from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import AccountDep, RuntimeDep, SessionDep, VersionQuery
from app.api.rate_limits import limit_predictions, limit_uploads
from app.schemas.images import UploadResponse, UploadResult
from app.schemas.predictions import PredictResponse, PredictResult
from app.schemas.url_images import UrlPredict, UrlUpload
from app.services import url_images as url_service

router = APIRouter(prefix="/models")


@router.post("/{model_id}/images/urls", response_model=UploadResponse, tags=["images"],
             dependencies=[Depends(limit_uploads)])
def upload_urls(model_id: str, body: UrlUpload, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep) -> UploadResponse:
    """Add the images at these URLs to one category, or without `category` to the unlabelled
    pool. Each URL gets its own result (`file` is the URL): one that cannot be fetched is
    rejected with the reason, and the others are kept.

    Loopback, private, link-local and cloud-metadata addresses are refused, also through a
    redirect or a name that resolves to one (NANONET_URL_ALLOW_PRIVATE lifts this)."""
    results = url_service.add_images_from_urls(session, runtime, account=account,
                                               model_id=model_id, category=body.category,
                                               urls=body.urls)
    return UploadResponse(model_id=model_id, category=(body.category or "").strip() or None,
                          accepted=sum(r["status"] == "accepted" for r in results),
                          results=[UploadResult.model_validate(r) for r in results])


@router.post("/{model_id}/predict/urls", response_model=PredictResponse, tags=["predict"],
             dependencies=[Depends(limit_predictions)])
def predict_urls(model_id: str, body: UrlPredict, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep, reject_unknown: bool = False,
                 version: VersionQuery = None) -> PredictResponse:
    """Classify the image at each URL as `/predict` classifies a file; a URL that cannot be
    fetched gets its own rejection (`file` is the URL)."""
    number, results = url_service.predict_urls(session, runtime, account=account,
                                               model_id=model_id, urls=body.urls,
                                               reject_unknown=reject_unknown, number=version)
    return PredictResponse(model_id=model_id, version=number,
                           results=[PredictResult.model_validate(r) for r in results])
