from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.jobs import JobAccepted
from app.services.training import request_training

router = APIRouter(prefix="/models", tags=["training"])


@router.post("/{model_id}/train", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobAccepted)
def train_model(model_id: str, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep) -> JobAccepted:
    """Queue training; poll GET /api/v1/jobs/{job_id}.

    A second call while training returns the same job.
    """
    job = request_training(session, runtime, account=account, model_id=model_id)
    return JobAccepted(job_id=job.id, status=job.status)
