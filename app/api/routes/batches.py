from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import AccountDep, RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import limit_predictions
from app.schemas.batches import (
    MAX_BATCHES_PER_PAGE,
    MAX_RESULTS_PER_PAGE,
    BatchAccepted,
    BatchDetail,
    BatchOut,
    BatchPage,
    BatchRejection,
    BatchRequest,
    BatchResult,
    batch_fields,
)
from app.schemas.bounds import MAX_INT64, MAX_PAGE
from app.services import batches as batch_service

router = APIRouter(prefix="/models", tags=["batch predictions"])

JSON_BODY = {"requestBody": {"content": {"application/json": {
    "schema": BatchRequest.model_json_schema()}}}}


async def pool_request(request: Request) -> BatchRequest | None:
    """The JSON body naming pool images; None for multipart (files) or no body."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return None
    try:
        return BatchRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from exc


@router.post("/{model_id}/batch-predictions", status_code=status.HTTP_202_ACCEPTED,
             response_model=BatchAccepted, openapi_extra=JSON_BODY,
             dependencies=[Depends(limit_predictions)])
def create_batch(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                 body: Annotated[BatchRequest | None, Depends(pool_request)],
                 files: Annotated[list[UploadFile] | None, File()] = None,
                 version: Annotated[int | None, Query(
                     ge=1, le=MAX_INT64,
                     description="a ready version's number; default the active one")] = None,
                 reject_unknown: bool = False) -> BatchAccepted:
    """Label many images in a job: `files` parts (multipart), or a JSON body
    `{"image_ids": [...]}` or `{"pool": true}` naming images of the unlabelled pool.

    The version is fixed now. Files are checked now: refused ones are listed (and keep their
    place in the results), the others run. Poll GET .../batch-predictions/{batch_id}.
    """
    job, rejected = batch_service.request_batch(
        session, runtime, account=account, model_id=model_id,
        uploads=read_uploads(files, runtime) if body is None else None,
        image_ids=body.image_ids if body is not None else None,
        pool=body is not None and body.pool, number=version, reject_unknown=reject_unknown)
    params = job.params or {}
    return BatchAccepted(batch_id=job.id, job_id=job.id, status=job.status,
                         version=params["version"], count=params["count"],
                         accepted=params["count"] - len(rejected),
                         rejected=[BatchRejection.model_validate(r) for r in rejected])


@router.get("/{model_id}/batch-predictions", response_model=BatchPage)
def list_batches(model_id: str, session: SessionDep, account: AccountDep,
                 page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
                 per_page: Annotated[int, Query(ge=1, le=MAX_BATCHES_PER_PAGE)] = 50
                 ) -> BatchPage:
    """The model's batches, newest first, without their results."""
    jobs, total = batch_service.list_batches(session, account=account, model_id=model_id,
                                             page=page, per_page=per_page)
    return BatchPage(items=[BatchOut.build(job) for job in jobs], total=total, page=page,
                     per_page=per_page)


@router.get("/{model_id}/batch-predictions/{batch_id}", response_model=BatchDetail)
def read_batch(model_id: str, batch_id: str, session: SessionDep, runtime: RuntimeDep,
               account: AccountDep, page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
               per_page: Annotated[int, Query(ge=1, le=MAX_RESULTS_PER_PAGE)] = 100
               ) -> BatchDetail:
    """Status and progress; once succeeded, a page of results in input order (`count` in
    all): label, probability and every label's probability, or the input's rejection."""
    job, results = batch_service.batch_results(session, runtime, account=account,
                                               model_id=model_id, batch_id=batch_id,
                                               page=page, per_page=per_page)
    return BatchDetail(**batch_fields(job), page=page, per_page=per_page,
                       results=None if results is None
                       else [BatchResult.model_validate(r) for r in results])


@router.get("/{model_id}/batch-predictions/{batch_id}/results.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
def read_batch_csv(model_id: str, batch_id: str, session: SessionDep, runtime: RuntimeDep,
                   account: AccountDep) -> Response:
    """Every result as CSV: `file,image_id,label,probability`, one probability column per
    category, then `error` (the code of a refused input, whose other cells are empty).
    409 `batch_not_finished` until the batch has succeeded."""
    text = batch_service.results_csv(session, runtime, account=account, model_id=model_id,
                                     batch_id=batch_id)
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"',
        "X-Content-Type-Options": "nosniff"})
