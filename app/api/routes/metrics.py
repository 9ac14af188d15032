from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AccountDep, SessionDep
from app.schemas.metrics import MetricsOut
from app.services.metrics import version_metrics

router = APIRouter(prefix="/models", tags=["metrics"])


@router.get("/{model_id}/metrics", response_model=MetricsOut)
def read_metrics(model_id: str, session: SessionDep, account: AccountDep) -> MetricsOut:
    """Cross-validated metrics of the active version, the model chosen, and the learning curve."""
    return MetricsOut.build(*version_metrics(session, account=account, model_id=model_id))
