from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.bounds import MAX_PAGE
from app.schemas.models import MAX_MODELS_PER_PAGE, ModelCreate, ModelList, ModelOut
from app.services import models as model_service

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
def create_model(body: ModelCreate, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep) -> ModelOut:
    model = model_service.create_model(session, settings=runtime.settings, account=account,
                                      name=body.name, categories=body.categories,
                                      kind=body.kind)
    return ModelOut.build(model, {})


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, account: AccountDep,
                page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
                per_page: Annotated[int, Query(ge=1, le=MAX_MODELS_PER_PAGE)] = 50
                ) -> ModelList:
    """The account's models, newest first, a page at once."""
    items, total = model_service.page_of_models(session, account=account, page=page,
                                                per_page=per_page)
    ids = [n.id for n in items]
    counts = model_service.category_counts(session, model_ids=ids)
    unlabelled = model_service.unlabelled_counts(session, model_ids=ids)
    return ModelList(models=[ModelOut.build(n, counts, unlabelled) for n in items],
                     total=total, page=page, per_page=per_page)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: SessionDep, account: AccountDep) -> ModelOut:
    model = model_service.get_model(session, account=account, model_id=model_id)
    return ModelOut.build(model, model_service.category_counts(session, model_ids=[model.id]),
                          model_service.unlabelled_counts(session, model_ids=[model.id]))


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model_id: str, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep) -> Response:
    model_service.delete_model(session, runtime, account=account, model_id=model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
