from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.review import ReviewOut
from app.services.review import version_review

router = APIRouter(prefix="/models", tags=["review"])


@router.get("/{model_id}/review", response_model=ReviewOut)
def read_review(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                version: Annotated[int | None, Query(ge=1)] = None) -> ReviewOut:
    """Suspected mislabels, duplicates, hardest images and confusions of a version."""
    return version_review(session, runtime, account=account, model_id=model_id, number=version)
