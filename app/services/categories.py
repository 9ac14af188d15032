"""Categories after creation: add, rename, delete (with their images).

Trained versions keep their own `labels`, so none of this changes what an existing version
answers; the next training uses the categories as they are then. `Category.position` is the
class index training uses, so positions stay 0..n-1 in order after a delete.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.tables import Account, Category, Image, ImageLabel, Model
from app.errors import Conflict, NotFound
from app.runtime import Runtime
from app.services.jobs import active_job
from app.services.models import (
    MAX_CATEGORIES,
    clean_category_name,
    get_model,
    remove_unused_images,
)

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

log = logging.getLogger("nanonet.categories")

MIN_CATEGORIES = 2


def list_categories(session: Session, *, account: Account, model_id: str) -> list[Category]:
    """Return the model's categories by position; raises NotFound."""
    return list(get_model(session, account=account, model_id=model_id).categories)


def add_category(session: Session, *, account: Account, model_id: str, name: str) -> Category:
    """Add an empty category after the last one; raises NotFound, InvalidInput, Conflict."""
    cleaned = clean_category_name(name)
    model = get_model(session, account=account, model_id=model_id)
    categories = _locked_categories(session, model)
    _refuse_collision(categories, cleaned)
    if len(categories) >= MAX_CATEGORIES:
        raise Conflict(f"A model can have at most {MAX_CATEGORIES} categories.",
                       code="too_many_categories")
    category = Category(model_id=model.id, name=cleaned, position=len(categories))
    session.add(category)
    _commit(session, cleaned)
    log.info("categories.added model=%s category=%s", model.id, category.id)
    return category


def rename_category(session: Session, *, account: Account, model_id: str, name: str,
                    new_name: str) -> Category:
    """Rename a category, keeping its images and position; raises NotFound, InvalidInput,
    Conflict."""
    cleaned = clean_category_name(new_name)
    model = get_model(session, account=account, model_id=model_id)
    categories = _locked_categories(session, model)
    category = _find(categories, name)
    _refuse_collision([c for c in categories if c.id != category.id], cleaned)
    category.name = cleaned
    _commit(session, cleaned)
    log.info("categories.renamed model=%s category=%s", model.id, category.id)
    return category


def delete_category(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                    name: str) -> int:
    """Delete a category and its images; return how many images went. Raises NotFound, Conflict.

    Blobs and cached features of those images leave the disk once no image row refers to them.
    """
    model = get_model(session, account=account, model_id=model_id)
    categories = _locked_categories(session, model)
    category = _find(categories, name)
    if len(categories) <= MIN_CATEGORIES:
        raise Conflict(f"A model needs at least {MIN_CATEGORIES} categories to train; add "
                       f"another before deleting {category.name!r}.", code="too_few_categories")
    if active_job(session, model_id=model.id, kind="train") is not None:
        # The running job reads these images' files.
        raise Conflict("This model is training; delete the category when training has ended.",
                       code="model_training")
    labelled = select(ImageLabel.image_id).where(ImageLabel.category_id == category.id)
    digests = set(session.scalars(select(Image.sha256).where(Image.id.in_(labelled))))
    result = session.execute(delete(Image).where(Image.id.in_(labelled)))
    removed = cast("CursorResult[Any]", result).rowcount
    session.delete(category)
    for position, remaining in enumerate(c for c in categories if c.id != category.id):
        remaining.position = position
    session.commit()
    # Files go only after the commit: a failed delete must not leave rows pointing at nothing.
    freed = remove_unused_images(session, runtime, digests=digests)
    log.info("categories.deleted model=%s category=%s images=%d blobs_removed=%d", model.id,
             category.id, removed, freed)
    return int(removed)


def _locked_categories(session: Session, model: Model) -> list[Category]:
    """The model's categories, read after taking the model row's write lock, so two changes to
    one model's categories run one after the other (SQLite and PostgreSQL alike)."""
    session.execute(update(Model).where(Model.id == model.id).values(updated_at=utcnow()))
    return list(session.scalars(
        select(Category).where(Category.model_id == model.id).order_by(Category.position)
        .execution_options(populate_existing=True)))


def _find(categories: list[Category], name: str) -> Category:
    wanted = name.strip()
    found = next((c for c in categories if c.name == wanted), None)
    if found is None:
        raise NotFound(f"No category {wanted!r} in this model.", code="category_not_found")
    return found


def _refuse_collision(others: list[Category], name: str) -> None:
    clash = next((c for c in others if c.name.lower() == name.lower()), None)
    if clash is not None:
        raise Conflict(f"This model already has a category {clash.name!r}.",
                       code="duplicate_category")


def _commit(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:  # the unique (model, name) key, hit by a concurrent request
        session.rollback()
        raise Conflict(f"This model already has a category {name!r}.",
                       code="duplicate_category") from exc
