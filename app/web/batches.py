"""The web pages of batch predictions: start one from the model page, follow its job, read its
results a page at a time and download them as the same CSV the REST API serves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from app.api.deps import RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import PREDICTIONS, count
from app.db.tables import ACTIVE_JOB_STATUSES, JobStatus
from app.errors import NanoNetError
from app.schemas.batches import BatchOut
from app.services import batches as batch_service
from app.services import models as model_service
from app.web.deps import WebAccountDep, WebRoute
from app.web.routes import (
    MODELS_PATH,
    FilesForm,
    chosen_files,
    model_path,
    refused_page,
    results_of,
    see_other,
)
from app.web.templating import render

RESULTS_PER_PAGE = 50

router = APIRouter(route_class=WebRoute, include_in_schema=False)


def batch_path(model_id: str, batch_id: str) -> str:
    return f"{model_path(model_id)}/batches/{batch_id}"


@router.post(MODELS_PATH + "/{model_id}/batches")
def create_batch(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                 account: WebAccountDep, files: FilesForm = None,
                 pool: Annotated[bool, Form()] = False) -> Response:
    """Queue the chosen files, or (`pool`) every image of the unlabelled pool; then follow the
    batch on its own page. A refusal is shown on the model page, in the batch section."""
    try:
        count(request, PREDICTIONS, account.id)
        job, _ = batch_service.request_batch(
            session, runtime, account=account, model_id=model_id, pool=pool,
            uploads=None if pool else read_uploads(chosen_files(files), runtime))
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            batch_refusal={"error": exc.message, "results": results_of(exc)})
    return see_other(batch_path(model_id, job.id))


@router.get(MODELS_PATH + "/{model_id}/batches/{batch_id}")
def show_batch(model_id: str, batch_id: str, request: Request, session: SessionDep,
               runtime: RuntimeDep, account: WebAccountDep, page: int = 1) -> Response:
    """The batch's job while it runs (app.js polls it and reloads when it ends), then its
    results in input order, RESULTS_PER_PAGE at a time."""
    page = max(page, 1)
    model = model_service.get_model(session, account=account, model_id=model_id)
    job, results = batch_service.batch_results(session, runtime, account=account,
                                               model_id=model.id, batch_id=batch_id, page=page,
                                               per_page=RESULTS_PER_PAGE)
    batch = BatchOut.build(job)
    return render(request, "batch.html", {
        "signed_in": True, "model": model, "batch": batch, "results": results, "page": page,
        "first": (page - 1) * RESULTS_PER_PAGE,
        "pages": max(1, -(-batch.count // RESULTS_PER_PAGE)),
        "refused": batch_service.refused_inputs(job) if job.status != JobStatus.SUCCEEDED else [],
        "active": job.status in ACTIVE_JOB_STATUSES,
        "url": batch_path(model.id, job.id),
    })


@router.get(MODELS_PATH + "/{model_id}/batches/{batch_id}/results.csv")
def download_results(model_id: str, batch_id: str, session: SessionDep, runtime: RuntimeDep,
                     account: WebAccountDep) -> Response:
    """The API's CSV under the web form's rules: the sign-in cookie, an HTML page for a batch
    that has not succeeded, a signed-out visitor sent to sign in."""
    text = batch_service.results_csv(session, runtime, account=account, model_id=model_id,
                                     batch_id=batch_id)
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"',
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
