"""Count and disk limits checked before something new is stored: models per account, images
per model, free space in the data dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.tables import Account, Image, Model
from app.errors import InsufficientStorage, QuotaExceeded


def check_new_model(session: Session, settings: Settings, account: Account) -> None:
    """Return if the account may create one more model; raises QuotaExceeded
    (model_quota_exceeded) at settings.max_models_per_account."""
    limit = settings.max_models_per_account
    count = session.scalar(select(func.count(Model.id)).where(Model.account_id == account.id))
    if (count or 0) >= limit:
        raise QuotaExceeded(
            f"This account has {count} models, the limit (NANONET_MAX_MODELS_PER_ACCOUNT) is "
            f"{limit}. Delete a model to create another.", code="model_quota_exceeded",
            details={"limit": limit, "count": count})


def check_new_images(session: Session, settings: Settings, model: Model, adding: int) -> None:
    """Return if the model may hold `adding` more images; raises QuotaExceeded
    (image_quota_exceeded) past settings.max_images_per_model, storing none of them."""
    limit = settings.max_images_per_model
    count = session.scalar(select(func.count(Image.id)).where(Image.model_id == model.id)) or 0
    if count + adding > limit:
        raise QuotaExceeded(
            f"This model has {count} images and this request adds {adding}; the limit "
            f"(NANONET_MAX_IMAGES_PER_MODEL) is {limit} per model. Delete images or send at "
            f"most {max(0, limit - count)}.", code="image_quota_exceeded",
            details={"limit": limit, "count": count, "adding": adding})


def check_disk(settings: Settings, needed_bytes: int) -> None:
    """Return if the data dir keeps settings.min_free_disk_bytes free after `needed_bytes`
    more; raises InsufficientStorage (507 insufficient_storage)."""
    free = shutil.disk_usage(settings.data_dir).free
    minimum = settings.min_free_disk_bytes
    if free - needed_bytes < minimum:
        raise InsufficientStorage(
            f"The server's disk is nearly full: {free // (1024 * 1024)} MiB free, this upload "
            f"needs {needed_bytes // (1024 * 1024) + 1} MiB and "
            f"{minimum // (1024 * 1024)} MiB must stay free (NANONET_MIN_FREE_DISK_BYTES). "
            "Nothing was stored; ask the operator to free space.",
            details={"free_bytes": free, "needed_bytes": needed_bytes,
                     "min_free_bytes": minimum})


def size_of(files: Iterable[BinaryIO]) -> int:
    """Return the bytes of seekable files in all (each left at its start), for check_disk."""
    total = 0
    for file in files:
        total += file.seek(0, os.SEEK_END)
        file.seek(0)
    return total
