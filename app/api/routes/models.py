from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.models import ModelCreate, ModelList, ModelOut
from app.services import nanonets

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
def create_model(body: ModelCreate, session: SessionDep, account: AccountDep) -> ModelOut:
    nanonet = nanonets.create_nanonet(session, account=account, name=body.name,
                                      categories=body.categories)
    return ModelOut.build(nanonet, {})


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, account: AccountDep) -> ModelList:
    items = nanonets.list_nanonets(session, account=account)
    counts = nanonets.category_counts(session, nanonet_ids=[n.id for n in items])
    return ModelList(models=[ModelOut.build(n, counts) for n in items])


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: SessionDep, account: AccountDep) -> ModelOut:
    nanonet = nanonets.get_nanonet(session, account=account, nanonet_id=model_id)
    return ModelOut.build(nanonet, nanonets.category_counts(session, nanonet_ids=[nanonet.id]))


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model_id: str, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep) -> Response:
    nanonets.delete_nanonet(session, runtime, account=account, nanonet_id=model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
