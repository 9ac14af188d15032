from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AccountDep, SessionDep, VersionQuery
from app.schemas.metrics import MetricsOut
from app.services.metrics import version_metrics

router = APIRouter(prefix="/models", tags=["metrics"])


@router.get("/{model_id}/metrics", response_model=MetricsOut)
def read_metrics(model_id: str, session: SessionDep, account: AccountDep,
                 version: VersionQuery = None) -> MetricsOut:
    """Cross-validated metrics of the active version (or `?version=n`), the model chosen, and
    the learning curve."""
    return MetricsOut.build(*version_metrics(session, account=account, model_id=model_id,
                                             number=version))
