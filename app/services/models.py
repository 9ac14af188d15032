"""NanoNets: create, list, read, delete; every query is scoped to one account."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from functools import cache, partial

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session, joinedload

from app.config import Settings
from app.db.tables import Account, Category, Image, ImageLabel, Job, Model
from app.errors import Conflict, InvalidInput, NotFound
from app.runtime import Runtime
from app.services.quotas import check_new_model
from app.services.thumbnails import discard_thumbnail

log = logging.getLogger("nanonet.models")

MAX_CATEGORIES = 100
MODEL_KINDS = ("single_label", "multi_label")
MULTI_LABEL = "multi_label"
MAX_NAME_LENGTH = 200
RESERVED_LABELS = frozenset({"unknown"})


def clean_category_name(name: str) -> str:
    """Return the trimmed name; raises InvalidInput for an empty, long, reserved one or a "/".

    A "/" is refused because names are folder names for `nanonet import` and `export-images`.
    """
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidInput(f"Category names must be 1 to {MAX_NAME_LENGTH} characters long.",
                           code="invalid_category")
    if "/" in cleaned:
        raise InvalidInput(f"Category names cannot contain '/': {cleaned!r}.",
                           code="invalid_category")
    if cleaned.lower() in RESERVED_LABELS:
        raise InvalidInput(f"{cleaned!r} is reserved for images unlike every category.",
                           code="reserved_category")
    return cleaned


def clean_categories(names: list[str]) -> list[str]:
    """Return trimmed category names; raises InvalidInput for empty, reserved or duplicate ones."""
    if len(names) < 2:
        raise InvalidInput("A model needs at least 2 categories.", code="too_few_categories")
    if len(names) > MAX_CATEGORIES:
        raise InvalidInput(f"A model can have at most {MAX_CATEGORIES} categories.",
                           code="too_many_categories")
    cleaned = [clean_category_name(name) for name in names]
    seen: set[str] = set()
    for name in cleaned:
        if name.lower() in seen:
            raise InvalidInput(f"Category {name!r} is given twice.", code="duplicate_category")
        seen.add(name.lower())
    return cleaned


def create_model(session: Session, *, settings: Settings, account: Account, name: str,
                   categories: list[str], kind: str = "single_label") -> Model:
    """Create a model with its categories; raises InvalidInput, QuotaExceeded."""
    if kind not in MODEL_KINDS:
        raise InvalidInput(f"The kind must be one of {', '.join(MODEL_KINDS)}.",
                           code="invalid_kind")
    check_new_model(session, settings, account)
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"The name must be 1 to {MAX_NAME_LENGTH} characters long.",
                           code="invalid_name")
    model = Model(account_id=account.id, name=name, kind=kind)
    model.categories = [Category(name=category, position=index)
                          for index, category in enumerate(clean_categories(categories))]
    session.add(model)
    session.commit()
    return model


def refuse_multi_label(model: Model, feature: str) -> None:
    """Raise Conflict for a feature single-label models have and multi-label ones lack yet."""
    if model.kind == MULTI_LABEL:
        raise Conflict(f"{feature} is not available for multi-label models yet; it is for "
                       "single-label ones.", code="not_for_multi_label")


def get_model(session: Session, *, account: Account, model_id: str,
              with_active_version: bool = False) -> Model:
    """Return the account's NanoNet; raises NotFound for a missing or foreign one.
    `with_active_version` loads its active version in the same query (a predict needs it)."""
    model = (session.execute(_model_with_active_version(), {"id": model_id}).scalar()
             if with_active_version else session.get(Model, model_id))
    if model is None or model.account_id != account.id:
        raise NotFound(f"No model with id {model_id!r}.", code="model_not_found")
    return model


@cache
def _model_with_active_version() -> Select[Model]:
    """A model and its active version in one query, built once: a predict runs it, and
    `session.get` with a joinedload option composed its statement anew each time, 0.11 ms more
    on SQLite (docs/EXPERIMENTS.md, "Serving overhead")."""
    return select(Model).options(joinedload(Model.active_version)).where(
        Model.id == bindparam("id"))


def list_models(session: Session, *, account: Account) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.account_id == account.id)
                                .order_by(Model.created_at.desc(), Model.id)))


def page_of_models(session: Session, *, account: Account, page: int,
                   per_page: int) -> tuple[list[Model], int]:
    """One page of the account's models, newest first, and how many it has in all."""
    total = session.scalar(select(func.count()).select_from(Model)
                           .where(Model.account_id == account.id)) or 0
    rows = session.scalars(select(Model).where(Model.account_id == account.id)
                           .order_by(Model.created_at.desc(), Model.id)
                           .offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def category_counts(session: Session, *, model_ids: list[str]) -> dict[int, int]:
    """Return {category id: number of images} for the given models."""
    if not model_ids:
        return {}
    rows = session.execute(
        select(Category.id, func.count(ImageLabel.image_id))
        .outerjoin(ImageLabel, ImageLabel.category_id == Category.id)
        .where(Category.model_id.in_(model_ids)).group_by(Category.id)
    )
    return {category_id: count for category_id, count in rows}


def unlabelled_counts(session: Session, *, model_ids: list[str]) -> dict[str, int]:
    """Return {model id: number of images in its unlabelled pool} for the given models."""
    if not model_ids:
        return {}
    rows = session.execute(
        select(Image.model_id, func.count(Image.id))
        .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id.in_(model_ids), ImageLabel.image_id.is_(None))
        .group_by(Image.model_id)
    )
    return {model_id: count for model_id, count in rows}


def delete_model(session: Session, runtime: Runtime, *, account: Account,
                   model_id: str) -> None:
    """Delete a model, its rows, its model files, and images (with their cached features) that
    no other model uses."""
    model = get_model(session, account=account, model_id=model_id)
    digests = set(session.scalars(select(Image.sha256).where(Image.model_id == model.id)))
    batch_ids = list(session.scalars(select(Job.id).where(Job.model_id == model.id,
                                                          Job.kind == "batch_predict")))
    session.delete(model)
    session.commit()
    # Files go only after the commit: a failed delete must not leave rows pointing at nothing.
    shutil.rmtree(runtime.settings.models_dir / model_id, ignore_errors=True)
    for batch_id in batch_ids:
        shutil.rmtree(runtime.settings.data_dir / "batches" / batch_id, ignore_errors=True)
    removed = remove_unused_images(session, runtime, digests=digests)
    log.info("models.deleted id=%s images_removed=%d", model_id, removed)


def remove_unused_images(session: Session, runtime: Runtime, *, digests: set[str]) -> int:
    """Delete the stored bytes, cached features and thumbnails of digests no image row refers to.

    Call after the commit that dropped the rows; return how many images left the disk.
    """
    still_used = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(digests))))
    removed = 0
    for digest in digests - still_used:
        # Asked again under the blob's lock: an upload may have stored the same bytes since.
        if runtime.blobs.delete(digest, in_use=partial(_has_image_row, session, digest)):
            runtime.features.discard(digest)
            discard_thumbnail(runtime, digest)
            removed += 1
    return removed


def _has_image_row(session: Session, digest: str) -> bool:
    return session.scalar(select(Image.id).where(Image.sha256 == digest).limit(1)) is not None


def smallest_category(rows: list[tuple[int, str, int]]) -> int:
    """How many images the smallest labelled category of training_set rows has (0: none)."""
    counts = Counter(position for _, _, position in rows)
    return min(counts.values(), default=0)


def training_set(session: Session, *, model_id: str) -> list[tuple[int, str, int]]:
    """Return (image id, sha256, category position) for every labelled image, by image id."""
    rows = session.execute(
        select(Image.id, Image.sha256, Category.position)
        .join(ImageLabel, ImageLabel.image_id == Image.id)
        .join(Category, Category.id == ImageLabel.category_id)
        .where(Image.model_id == model_id).order_by(Image.id)
    )
    return [(image_id, digest, position) for image_id, digest, position in rows]
