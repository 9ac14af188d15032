"""Categories of a model. `{name}` is URL-encoded (`honey%20bees`); `:path` keeps names made
before '/' was refused addressable."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.db.tables import Category
from app.schemas.categories import CategoryCreate, CategoryList, CategoryOut, CategoryRename
from app.services import categories as category_service
from app.services.models import category_counts

router = APIRouter(prefix="/models", tags=["categories"])


def _out(session: SessionDep, category: Category) -> CategoryOut:
    counts = category_counts(session, model_ids=[category.model_id])
    return CategoryOut(name=category.name, count=counts.get(category.id, 0))


@router.get("/{model_id}/categories", response_model=CategoryList)
def list_categories(model_id: str, session: SessionDep, account: AccountDep) -> CategoryList:
    """The model's categories in class order, with their image counts."""
    categories = category_service.list_categories(session, account=account, model_id=model_id)
    counts = category_counts(session, model_ids=[model_id])
    return CategoryList(categories=[CategoryOut(name=c.name, count=counts.get(c.id, 0))
                                    for c in categories])


@router.post("/{model_id}/categories", status_code=status.HTTP_201_CREATED,
             response_model=CategoryOut)
def add_category(model_id: str, body: CategoryCreate, session: SessionDep,
                 account: AccountDep) -> CategoryOut:
    """Add an empty category; 409 if the name is taken (case-insensitive)."""
    category = category_service.add_category(session, account=account, model_id=model_id,
                                             name=body.name)
    return _out(session, category)


@router.patch("/{model_id}/categories/{name:path}", response_model=CategoryOut)
def rename_category(model_id: str, name: str, body: CategoryRename, session: SessionDep,
                    account: AccountDep) -> CategoryOut:
    """Rename a category; it keeps its images. Trained versions keep answering their labels."""
    category = category_service.rename_category(session, account=account, model_id=model_id,
                                                name=name, new_name=body.name)
    return _out(session, category)


@router.delete("/{model_id}/categories/{name:path}", status_code=status.HTTP_204_NO_CONTENT)
def delete_category(model_id: str, name: str, session: SessionDep, runtime: RuntimeDep,
                    account: AccountDep) -> Response:
    """Delete a category with its images; 409 if fewer than two categories would remain."""
    category_service.delete_category(session, runtime, account=account, model_id=model_id,
                                     name=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
