from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.suggestions import MAX_SUGGESTIONS, SuggestionList
from app.services.suggestions import suggest

router = APIRouter(prefix="/models", tags=["suggestions"])


@router.get("/{model_id}/suggestions", response_model=SuggestionList)
def read_suggestions(model_id: str, session: SessionDep, runtime: RuntimeDep,
                     account: AccountDep,
                     limit: Annotated[int, Query(ge=1, le=MAX_SUGGESTIONS)] = 20) -> SuggestionList:
    """Unlabelled images to label next: least certain first, one per near-identical picture."""
    return suggest(session, runtime, account=account, model_id=model_id, limit=limit)
