"""The JSON routes app.js fetches: the drop zones' uploads and the job poller. The same services
as the REST API, but signed in by the web session (which the API refuses) and, for uploads, with
the page's CSRF token in X-CSRF-Token; errors in the API's JSON shape."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from app.api.deps import RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import UPLOADS, count
from app.schemas.images import UploadResponse, UploadResult
from app.schemas.jobs import JobOut
from app.schemas.models import CategoryOut
from app.services import models as model_service
from app.services.images import add_images
from app.services.jobs import get_job
from app.web.csrf import check_csrf
from app.web.deps import ScriptAccountDep

SCRIPTS_PATH = "/web/json"

router = APIRouter(prefix=SCRIPTS_PATH, include_in_schema=False,
                   dependencies=[Depends(check_csrf)])


def ticked_labels(ticked: list[str] | None) -> list[str] | None:
    """A multi-label upload form's ticked categories as the one `labels` entry add_images takes
    for every file (comma-separated names); None when none is ticked (the unlabelled pool, or
    a single-label model's `category`)."""
    names = [name.strip() for name in ticked or [] if name.strip()]
    return [",".join(names)] if names else None


class DropzoneUpload(UploadResponse):
    """An upload's results with the model's counts after it: a multi-label upload changes
    several categories' counts at once, which the page cannot work out from the results."""

    categories: list[CategoryOut]
    unlabelled: int


@router.post("/models/{model_id}/images", response_model=DropzoneUpload)
def upload_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  account: ScriptAccountDep, category: Annotated[str, Form()] = "",
                  files: Annotated[list[UploadFile] | None, File()] = None,
                  label: Annotated[list[str] | None, Form()] = None) -> DropzoneUpload:
    """One drop zone's batch of files ("" for the unlabelled pool): a result per file, as
    POST /api/v1/models/{id}/images. A multi-label model's zone sends its ticked categories
    as `label`, repeated: every file gets all of them."""
    count(request, UPLOADS, account.id)
    results = add_images(session, runtime, account=account, model_id=model_id,
                         category=category.strip() or None, uploads=read_uploads(files, runtime),
                         labels=ticked_labels(label))
    model = model_service.get_model(session, account=account, model_id=model_id)
    counts = model_service.category_counts(session, model_ids=[model.id])
    unlabelled = model_service.unlabelled_counts(session, model_ids=[model.id])
    return DropzoneUpload(model_id=model_id, category=category.strip() or None,
                          accepted=sum(r["status"] == "accepted" for r in results),
                          results=[UploadResult.model_validate(r) for r in results],
                          categories=[CategoryOut(name=c.name, count=counts.get(c.id, 0))
                                      for c in model.categories],
                          unlabelled=unlabelled.get(model.id, 0))


@router.get("/jobs/{job_id}", response_model=JobOut)
def read_job(job_id: str, session: SessionDep, account: ScriptAccountDep) -> JobOut:
    """A training's or a batch's progress, as GET /api/v1/jobs/{id}."""
    return JobOut.build(get_job(session, account=account, job_id=job_id))
