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
from app.services.images import add_images
from app.services.jobs import get_job
from app.web.csrf import check_csrf
from app.web.deps import ScriptAccountDep

SCRIPTS_PATH = "/web/json"

router = APIRouter(prefix=SCRIPTS_PATH, include_in_schema=False,
                   dependencies=[Depends(check_csrf)])


@router.post("/models/{model_id}/images", response_model=UploadResponse)
def upload_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  account: ScriptAccountDep, category: Annotated[str, Form()] = "",
                  files: Annotated[list[UploadFile] | None, File()] = None) -> UploadResponse:
    """One drop zone's batch of files ("" for the unlabelled pool): a result per file, as
    POST /api/v1/models/{id}/images."""
    count(request, UPLOADS, account.id)
    results = add_images(session, runtime, account=account, model_id=model_id,
                         category=category.strip() or None, uploads=read_uploads(files, runtime))
    return UploadResponse(model_id=model_id, category=category.strip() or None,
                          accepted=sum(r["status"] == "accepted" for r in results),
                          results=[UploadResult.model_validate(r) for r in results])


@router.get("/jobs/{job_id}", response_model=JobOut)
def read_job(job_id: str, session: SessionDep, account: ScriptAccountDep) -> JobOut:
    """A training's or a batch's progress, as GET /api/v1/jobs/{id}."""
    return JobOut.build(get_job(session, account=account, job_id=job_id))
