"""NanoNets: create, list, read, delete; every query is scoped to one account."""

from __future__ import annotations

import logging
import shutil

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import Account, Category, Image, ImageLabel, NanoNet
from app.errors import InvalidInput, NotFound
from app.runtime import Runtime

log = logging.getLogger("nanonet.models")

MAX_CATEGORIES = 100
MAX_NAME_LENGTH = 200
RESERVED_LABELS = frozenset({"unknown"})


def clean_categories(names: list[str]) -> list[str]:
    """Return trimmed category names; raises InvalidInput for empty, reserved or duplicate ones."""
    cleaned = [name.strip() for name in names]
    if len(cleaned) < 2:
        raise InvalidInput("A NanoNet needs at least 2 categories.", code="too_few_categories")
    if len(cleaned) > MAX_CATEGORIES:
        raise InvalidInput(f"A NanoNet can have at most {MAX_CATEGORIES} categories.",
                           code="too_many_categories")
    seen: set[str] = set()
    for name in cleaned:
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"Category names must be 1 to {MAX_NAME_LENGTH} characters long.",
                               code="invalid_category")
        if name.lower() in RESERVED_LABELS:
            raise InvalidInput(f"{name!r} is reserved for images unlike every category.",
                               code="reserved_category")
        if name.lower() in seen:
            raise InvalidInput(f"Category {name!r} is given twice.", code="duplicate_category")
        seen.add(name.lower())
    return cleaned


def create_nanonet(session: Session, *, account: Account, name: str,
                   categories: list[str]) -> NanoNet:
    """Create a NanoNet with its categories; raises InvalidInput."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"The name must be 1 to {MAX_NAME_LENGTH} characters long.",
                           code="invalid_name")
    nanonet = NanoNet(account_id=account.id, name=name, state="created")
    nanonet.categories = [Category(name=category, position=index)
                          for index, category in enumerate(clean_categories(categories))]
    session.add(nanonet)
    session.commit()
    return nanonet


def get_nanonet(session: Session, *, account: Account, nanonet_id: str) -> NanoNet:
    """Return the account's NanoNet; raises NotFound for a missing or foreign one."""
    nanonet = session.get(NanoNet, nanonet_id)
    if nanonet is None or nanonet.account_id != account.id:
        raise NotFound(f"No NanoNet with id {nanonet_id!r}.", code="model_not_found")
    return nanonet


def list_nanonets(session: Session, *, account: Account) -> list[NanoNet]:
    return list(session.scalars(select(NanoNet).where(NanoNet.account_id == account.id)
                                .order_by(NanoNet.created_at.desc())))


def category_counts(session: Session, *, nanonet_ids: list[str]) -> dict[int, int]:
    """Return {category id: number of images} for the given NanoNets."""
    if not nanonet_ids:
        return {}
    rows = session.execute(
        select(Category.id, func.count(ImageLabel.image_id))
        .outerjoin(ImageLabel, ImageLabel.category_id == Category.id)
        .where(Category.nanonet_id.in_(nanonet_ids)).group_by(Category.id)
    )
    return {category_id: count for category_id, count in rows}


def delete_nanonet(session: Session, runtime: Runtime, *, account: Account,
                   nanonet_id: str) -> None:
    """Delete a NanoNet, its rows, its model files and images no other NanoNet uses."""
    nanonet = get_nanonet(session, account=account, nanonet_id=nanonet_id)
    digests = set(session.scalars(select(Image.sha256).where(Image.nanonet_id == nanonet.id)))
    session.delete(nanonet)
    session.commit()
    # Files go only after the commit: a failed delete must not leave rows pointing at nothing.
    shutil.rmtree(runtime.settings.models_dir / nanonet_id, ignore_errors=True)
    still_used = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(digests))))
    for digest in digests - still_used:
        runtime.blobs.delete(digest)
    log.info("models.deleted id=%s images_removed=%d", nanonet_id, len(digests - still_used))


def training_set(session: Session, *, nanonet_id: str) -> list[tuple[int, str, int]]:
    """Return (image id, sha256, category position) for every labelled image, by image id."""
    rows = session.execute(
        select(Image.id, Image.sha256, Category.position)
        .join(ImageLabel, ImageLabel.image_id == Image.id)
        .join(Category, Category.id == ImageLabel.category_id)
        .where(Image.nanonet_id == nanonet_id).order_by(Image.id)
    )
    return [(image_id, digest, position) for image_id, digest, position in rows]
