from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.db.tables import ACTIVE_JOB_STATUSES
from app.schemas.jobs import JobOut
from app.services.job_control import cancel_job
from app.services.jobs import get_job

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def read_job(job_id: str, session: SessionDep, account: AccountDep) -> JobOut:
    return JobOut.build(get_job(session, account=account, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut,
             responses={202: {"model": JobOut, "description": "Running: asked to stop"}})
def cancel(job_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
           response: Response) -> JobOut:
    """Cancel a job. Queued: ended at once (200, `failed` at stage `cancelled`). Running: it
    stops at its next progress report (202, `cancel_requested_at` set); a training's version
    is then failed and the active version stays. 409 `job_finished` once it has ended."""
    job = cancel_job(session, runtime, account=account, job_id=job_id)
    if job.status in ACTIVE_JOB_STATUSES:
        response.status_code = status.HTTP_202_ACCEPTED
    return JobOut.build(job)
