"""Versions: one per training run, immutable once done; pick, activate, delete, prune, diff."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Account, Model, ModelState, ModelVersion, VersionStatus
from app.errors import Conflict, NotFound
from app.runtime import Runtime
from app.services.models import get_model

if TYPE_CHECKING:
    from app.ml.heads import Head

log = logging.getLogger("nanonet.versions")

ACTIVATE_POLICIES = ("always", "if_better", "never")


def versions_of(session: Session, *, account: Account, model_id: str) -> list[ModelVersion]:
    """The model's versions, newest first; raises NotFound."""
    model = get_model(session, account=account, model_id=model_id)
    return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                .order_by(ModelVersion.number.desc())))


def find_version(session: Session, *, model: Model, number: int) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                        ModelVersion.number == number))
    if version is None:
        raise NotFound(f"This model has no version {number}.", code="version_not_found")
    return version


def get_version(session: Session, *, account: Account, model_id: str,
                number: int) -> tuple[Model, ModelVersion]:
    """Return the model and its version `number`; raises NotFound."""
    model = get_model(session, account=account, model_id=model_id)
    return model, find_version(session, model=model, number=number)


def serving_version(session: Session, *, model: Model, number: int | None) -> ModelVersion:
    """Version `number` of the model, or its active one, ready to answer.

    Raises NotFound (no such version), Conflict (not trained yet, or that version is still
    training or failed).
    """
    if number is None:
        if model.active_version is None:
            trained = session.scalar(select(ModelVersion.number).where(
                ModelVersion.model_id == model.id, ModelVersion.status == VersionStatus.READY)
                .order_by(ModelVersion.number.desc()).limit(1))
            if trained is not None:
                raise Conflict(f"No version of this model is active; activate one (version "
                               f"{trained} is ready) or train again.", code="no_active_version")
            raise Conflict("This model has no trained version yet; train it first.",
                           code="model_not_trained")
        return model.active_version
    version = find_version(session, model=model, number=number)
    if version.status != VersionStatus.READY:
        why = ("is still training" if version.status == VersionStatus.TRAINING
               else f"failed: {version.error}")
        raise Conflict(f"Version {number} {why}; choose a ready version.",
                       code="version_not_ready")
    return version


def load_head(runtime: Runtime, version: ModelVersion) -> tuple[Head, dict[str, Any]]:
    """Return the version's head and its meta, ready to run here.

    Raises Conflict: a head this release cannot read (version_unusable), or one trained on a
    backbone whose weights this server no longer has (backbone_unavailable): retrain, do not 500.
    """
    from app.ml.backbones import BackboneUnavailable, available_backbones, components

    try:
        head, meta = runtime.heads.get(runtime.settings.models_dir / version.artifact_path)
    except (ValueError, FileNotFoundError) as exc:  # a head kind this release lacks, or damage
        # The reason names paths of the data dir: the log has it, the caller gets the remedy.
        log.warning("versions.unusable version_id=%s reason=%s", version.id, exc)
        why = "its file is missing" if isinstance(exc, FileNotFoundError) else (
            "its file is damaged or was made by a release this one cannot read")
        raise Conflict(f"Version {version.number} cannot be loaded: {why}. Train the model "
                       "again to make a new version.", code="version_unusable") from exc
    detector = meta.get("unknown")
    needed = [meta["backbone"]] + ([detector["backbone"]] if detector else [])
    installed = set(available_backbones())
    try:
        missing = sorted({part for name in needed for part in components(name)} - installed)
    except BackboneUnavailable:  # a backbone this release does not even know
        missing = sorted(set(needed))
    if missing:
        raise Conflict(
            f"Version {version.number} was trained on {', '.join(missing)}, whose weights are "
            "not installed on this server. Train the model again to make a version on an "
            "installed backbone, or install the weights.", code="backbone_unavailable",
            details={"missing_backbones": missing})
    return head, meta


def activate_version(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                     number: int) -> tuple[Model, ModelVersion, bool]:
    """Make version `number` the one that answers, at once (no retraining); return (model,
    version, whether it changed anything). Raises NotFound, Conflict for a version not ready."""
    model = get_model(session, account=account, model_id=model_id)
    version = serving_version(session, model=model, number=number)
    previous = model.active_version.number if model.active_version is not None else None
    changed = model.active_version_id != version.id
    if changed:
        model.active_version_id = version.id
        model.state = ModelState.READY if model.state != ModelState.TRAINING else model.state
        session.commit()
        log.info("versions.activated model=%s version=%d", model.id, version.number)
        from app.services.webhooks import emit

        emit(session, runtime, account_id=model.account_id, model_id=model.id,
             event="version.activated",
             data={"model_id": model.id, "version": version_summary(version),
                   "previous_version": previous, "reason": "activated by request"})
    return model, version, changed


def delete_version(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                   number: int) -> None:
    """Delete a version and its files; raises Conflict for the active one or one training."""
    model, version = get_version(session, account=account, model_id=model_id, number=number)
    if version.id == model.active_version_id:
        raise Conflict(f"Version {number} is the active one; activate another version first.",
                       code="version_active")
    if version.status == VersionStatus.TRAINING:
        raise Conflict(f"Version {number} is still training; delete it once it has finished.",
                       code="version_training")
    artifact = version.artifact_path
    session.delete(version)
    session.commit()
    remove_version_files(runtime, artifact)
    log.info("versions.deleted model=%s version=%d", model.id, number)


def prune_versions(session: Session, runtime: Runtime, *, model_id: str, keep: int) -> list[int]:
    """Delete the oldest versions beyond `keep`, never the active one or one training; return
    the numbers deleted. Commits; files go after the commit."""
    model = session.get(Model, model_id)
    if model is None:
        return []
    versions = list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id)
                                    .order_by(ModelVersion.number.desc())))
    excess = len(versions) - keep
    doomed = [v for v in reversed(versions)
              if v.id != model.active_version_id and v.status != VersionStatus.TRAINING
              ][:max(excess, 0)]
    if not doomed:
        return []
    artifacts = [v.artifact_path for v in doomed]
    numbers = sorted(v.number for v in doomed)
    for version in doomed:
        session.delete(version)
    session.commit()
    for artifact in artifacts:
        remove_version_files(runtime, artifact)
    log.info("versions.pruned model=%s versions=%s", model_id, numbers)
    return numbers


def remove_version_files(runtime: Runtime, artifact_path: str) -> None:
    """Delete a version's head and the files that go with it (its out-of-fold review data, the
    ONNX files services.exports built of it)."""
    if not artifact_path:
        return
    base = runtime.settings.models_dir / artifact_path
    exports = base.parent.glob(f"{base.stem}.*.onnx")
    for path in (base, base.with_suffix(".oof.json"), *exports):
        Path(path).unlink(missing_ok=True)
    runtime.heads.forget(base)


def changes_between(previous: ModelVersion | None, *, labels: list[str], hashes: list[str],
                    targets: list[int]) -> dict[str, Any]:
    """What a new training set changed since `previous`: per category the images added and
    removed (by content: a moved image counts as removed from one and added to the other), and
    the categories added and removed."""
    now = Counter((labels[t], h) for t, h in zip(targets, hashes, strict=True))
    before: Counter[tuple[str, str]] = Counter()
    if previous is not None and previous.image_hashes is not None \
            and previous.image_labels is not None:
        before = Counter((previous.labels[t], h)
                         for t, h in zip(previous.image_labels, previous.image_hashes,
                                         strict=True))
    old_labels = list(previous.labels) if previous is not None else []
    per_category = []
    for name in dict.fromkeys([*labels, *old_labels]):
        added = sum(n for (label, _), n in (now - before).items() if label == name)
        removed = sum(n for (label, _), n in (before - now).items() if label == name)
        count = sum(n for (label, _), n in now.items() if label == name)
        if added or removed or name not in old_labels:
            per_category.append({"category": name, "added": added, "removed": removed,
                                 "count": count})
    return {
        "since_version": previous.number if previous is not None else None,
        "known": previous is None or previous.image_hashes is not None,
        "images_added": sum((now - before).values()),
        "images_removed": sum((before - now).values()),
        "categories_added": [name for name in labels if name not in old_labels]
        if previous is not None else [],
        "categories_removed": [name for name in old_labels if name not in labels],
        "per_category": per_category,
    }


def decide_activation(policy: str, *, new: ModelVersion,
                      active: ModelVersion | None) -> tuple[bool, str]:
    """Whether a just-trained version goes live under `policy`, and why, in words."""
    if policy == "never":
        return False, "activate=never: kept inactive; activate it when you choose"
    if policy == "always" or active is None:
        return True, ("activate=always" if policy == "always"
                      else "activate=if_better: no version was active")
    # A multi-label version is scored by its micro-F1, as a single-label one by its accuracy.
    new_accuracy = _headline(new)
    old_accuracy = _headline(active)
    if old_accuracy is None:
        return True, (f"activate=if_better: version {active.number} has no cross-validated "
                      "accuracy to beat")
    if new_accuracy is None:
        return False, ("activate=if_better: this version has no cross-validated accuracy (a "
                       f"category has fewer than 2 images); version {active.number} stays")
    if new_accuracy >= old_accuracy:
        return True, (f"activate=if_better: accuracy {new_accuracy:.3f} >= "
                      f"{old_accuracy:.3f} of version {active.number}")
    return False, (f"activate=if_better: accuracy {new_accuracy:.3f} < {old_accuracy:.3f} of "
                   f"version {active.number}, which stays active")


def _headline(version: ModelVersion) -> float | None:
    metrics = version.metrics or {}
    return metrics.get("accuracy", metrics.get("micro_f1"))


def version_summary(version: ModelVersion) -> dict[str, Any]:
    """What events say about a version: its number, model and headline metrics."""
    metrics = version.metrics or {}
    return {"number": version.number, "status": version.status, "backbone": version.backbone,
            "head": version.head, "train_seconds": version.train_seconds,
            "metrics": {key: metrics[key] for key in
                        ("accuracy", "balanced_accuracy", "log_loss", "micro_f1",
                         "macro_f1", "n_images")
                        if key in metrics} or None}
