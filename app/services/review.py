"""The review of a version: what its out-of-fold predictions say about its training images.

Training keeps each version's out-of-fold probabilities in a file next to its artifact
(`data/models/<model>/<version>.oof.json`): written once, before the version's row commits,
and removed with the model's directory. The review is derived from it on request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Account, Category, Image, ImageLabel
from app.errors import Conflict, NotFound
from app.schemas.review import (
    Confusion,
    DuplicateGroup,
    HardestInCategory,
    HardImage,
    ReviewImage,
    ReviewOut,
    SuspectedMislabel,
)
from app.services.features import extract
from app.services.models import get_model, refuse_multi_label
from app.services.versions import serving_version
from app.storage import atomic_write

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.review")

OUT_OF_FOLD_FORMAT = 1


def out_of_fold_path(models_dir: Path, artifact_path: str) -> Path:
    """Return the out-of-fold file that belongs with a version's artifact."""
    return models_dir / Path(artifact_path).with_suffix(".oof.json")


def save_out_of_fold(path: Path, *, image_ids: list[int], labels: list[int],
                     probabilities: np.ndarray) -> None:
    """Write a version's out-of-fold probabilities, one row per image id, atomically."""
    rows = [[round(float(p), 6) for p in row] for row in np.asarray(probabilities)]
    if len(rows) != len(image_ids) or len(labels) != len(image_ids):
        raise ValueError("need one label and one row of probabilities per image id")
    payload = {"format": OUT_OF_FOLD_FORMAT, "image_ids": image_ids, "labels": labels,
               "probabilities": rows}
    atomic_write(path, json.dumps(payload, separators=(",", ":")).encode())


def _load_out_of_fold(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != OUT_OF_FOLD_FORMAT:
        return None
    return payload


def duplicate_backbone(version_backbone: str) -> str:
    """Return the backbone whose features find near-copies: MobileNetV2 where installed."""
    from app.ml.backbones import available_backbones
    from app.ml.review import DUPLICATE_BACKBONE

    return DUPLICATE_BACKBONE if DUPLICATE_BACKBONE in available_backbones() else version_backbone


def version_review(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                   number: int | None = None) -> ReviewOut:
    """Return the review of version `number` (default: the active one).

    Raises NotFound (model or version), Conflict (not trained, or a version without review
    data: trained before reviews existed, or without cross-validation).
    """
    from app.ml import review

    model = get_model(session, account=account, model_id=model_id)
    refuse_multi_label(model, "The review")
    version = serving_version(session, model=model, number=number)
    stored = _load_out_of_fold(out_of_fold_path(runtime.settings.models_dir,
                                                version.artifact_path))
    if stored is None:
        advice = ("it was trained with a category of fewer than 2 images, so no image was "
                  "predicted out of fold. Give every category at least 2 images and retrain"
                  if version.metrics is None else
                  "it was trained before reviews existed. Retrain the model")
        raise Conflict(f"Version {version.number} has no review data: {advice} to review its "
                       "images.", code="review_unavailable")

    names = list(version.labels)
    ids = [int(i) for i in stored["image_ids"]]
    labels = np.asarray(stored["labels"], dtype=np.int64)
    probs = np.asarray(stored["probabilities"], dtype=np.float64)
    # Every image of the model, not `IN (ids)`: no bound-parameter limit on large versions.
    images = {image.id: image for image in session.scalars(
        select(Image).where(Image.model_id == model.id))}
    present = np.array([i in images for i in ids], dtype=bool)

    def name_of(row: int) -> str:
        return images[ids[row]].filename

    # Confident learning estimates noise rates from the whole training set as trained; only
    # then are deleted images dropped.
    issues = [issue for issue in review.suspected_mislabels(labels, probs) if present[issue.row]]
    kept_as_labelled = _kept_as_labelled(session, images.values())
    now = _category_names(session, model.id, [ids[i.row] for i in issues])
    # A suspect a person has moved since training is counted as fixed, not listed again.
    fixed = {i.row for i in issues if now.get(ids[i.row]) != names[i.label]}
    mislabels = [SuspectedMislabel(image_id=ids[i.row], file_name=name_of(i.row),
                                   category=names[i.label], suggested_category=names[i.suggested],
                                   confidence=round(i.confidence, 4))
                 for i in issues if ids[i.row] not in kept_as_labelled and i.row not in fixed]

    kept = np.flatnonzero(present)
    kept_labels, kept_probs = labels[kept], probs[kept]
    flagged = {int(np.searchsorted(kept, issue.row)) for issue in issues}
    hardest = [
        HardestInCategory(category=names[label], images=[
            HardImage(image_id=ids[kept[h.row]], file_name=name_of(kept[h.row]),
                      probability=round(h.probability, 4)) for h in rows])
        for label, rows in review.hardest(kept_labels, kept_probs, exclude=flagged).items()
    ]
    confusions = [
        Confusion(category=names[c.label], predicted=names[c.predicted], count=c.count,
                  image_ids=[ids[kept[r]] for r in c.rows])
        for c in review.confusions(kept_labels, kept_probs)
    ]

    duplicates: list[DuplicateGroup] = []
    if len(kept) >= 2:
        digests = [images[ids[row]].sha256 for row in kept]
        backbone = duplicate_backbone(version.chosen[0])
        features = extract(runtime, digests, backbones=[backbone], views=1)
        for group in review.duplicate_groups(features[backbone][:, 0]):
            members = [ReviewImage(image_id=ids[kept[r]], file_name=name_of(kept[r]),
                                   category=names[kept_labels[r]]) for r in group.rows]
            if all(m.image_id in kept_as_labelled for m in members):
                continue  # a person kept every one of them as they are
            across = len({m.category for m in members}) > 1
            duplicates.append(DuplicateGroup(
                kind="across_categories" if across else "within_category",
                identical=len({digests[r] for r in group.rows}) == 1,
                similarity=round(group.similarity, 4), images=members))
        duplicates.sort(key=lambda g: g.kind != "across_categories")

    return ReviewOut(model_id=model.id, version=version.number, backbone=version.chosen[0],
                     n_images=len(kept), n_deleted=len(ids) - len(kept), n_fixed=len(fixed),
                     duplicate_threshold=review.DUPLICATE_COSINE,
                     suspected_mislabels=mislabels, duplicates=duplicates, hardest=hardest,
                     confusions=confusions)


def _category_names(session: Session, model_id: str,
                    image_ids: list[int]) -> dict[int, str | None]:
    """{image id: its category's name now, None in the pool} for these images of the model."""
    if not image_ids:
        return {}
    rows = session.execute(
        select(ImageLabel.image_id, Category.name)
        .join(Category, Category.id == ImageLabel.category_id)
        .where(Category.model_id == model_id, ImageLabel.image_id.in_(set(image_ids))))
    return {image_id: None for image_id in image_ids} | {image_id: name for image_id, name in rows}


def _kept_as_labelled(session: Session, images: Iterable[Image]) -> set[int]:
    """Ids of the images a person kept that still carry the label they were kept with."""
    kept = {image.id: image.kept_category_id for image in images
            if image.kept_category_id is not None}
    if not kept:
        return set()
    labels = session.execute(select(ImageLabel.image_id, ImageLabel.category_id)
                             .where(ImageLabel.image_id.in_(kept)))
    return {image_id for image_id, category_id in labels if kept[image_id] == category_id}


def keep_images(session: Session, *, account: Account, model_id: str,
                image_ids: list[int]) -> list[int]:
    """Mark the images as checked by a person, all or none: not suspected of a wrong label
    again until their label changes. Return their ids; raises NotFound naming missing ids."""
    model = get_model(session, account=account, model_id=model_id)
    wanted = set(image_ids)
    rows = session.execute(
        select(Image, ImageLabel.category_id)
        .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id == model.id, Image.id.in_(wanted)).order_by(Image.id)).all()
    missing = sorted(wanted - {image.id for image, _ in rows})
    if missing:
        listed = ", ".join(str(image_id) for image_id in missing)
        raise NotFound(f"No image {listed} in this model; nothing was changed.",
                       code="image_not_found", details={"missing": missing})
    for image, category_id in rows:
        image.kept_category_id = category_id
    session.commit()
    log.info("review.kept model=%s images=%d", model.id, len(rows))
    return [image.id for image, _ in rows]
