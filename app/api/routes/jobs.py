from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AccountDep, SessionDep
from app.schemas.jobs import JobOut
from app.services.jobs import get_job

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def read_job(job_id: str, session: SessionDep, account: AccountDep) -> JobOut:
    return JobOut.build(get_job(session, account=account, job_id=job_id))
