from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.jobs import JobAccepted
from app.schemas.models import TrainRequest
from app.services.training import request_training

router = APIRouter(prefix="/models", tags=["training"])


@router.post("/{model_id}/train", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobAccepted)
def train_model(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                body: Annotated[TrainRequest | None, Body()] = None) -> JobAccepted:
    """Queue training; poll GET /api/v1/jobs/{job_id}. Each run makes a new version.

    A second call while training returns the same job. The optional body says whether the new
    version goes live: `{"activate": "always" | "if_better" | "never"}` (default always).
    """
    job = request_training(session, runtime, account=account, model_id=model_id,
                           activate=(body or TrainRequest()).activate)
    return JobAccepted(job_id=job.id, status=job.status)
