from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AccountDep, SessionDep
from app.schemas.metrics import MetricsOut
from app.services.metrics import version_metrics

router = APIRouter(prefix="/models", tags=["metrics"])


@router.get("/{model_id}/metrics", response_model=MetricsOut)
def read_metrics(model_id: str, session: SessionDep, account: AccountDep,
                 version: Annotated[int | None, Query(ge=1)] = None) -> MetricsOut:
    """Cross-validated metrics of the active version (or `?version=n`), the model chosen, and
    the learning curve."""
    return MetricsOut.build(*version_metrics(session, account=account, model_id=model_id,
                                             number=version))
