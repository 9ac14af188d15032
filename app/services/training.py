"""Training: queue a job for a model, and the job body that fits and saves a version."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.tables import Account, Job, JobStatus, Model, ModelState, ModelVersion, VersionStatus
from app.errors import InvalidInput, NotFound
from app.schemas.metrics import MULTI_LABEL_KIND, MultiLabelMetrics, VersionMetrics, VersionParams
from app.services import jobs as job_service
from app.services.features import extract
from app.services.models import MULTI_LABEL, get_model, smallest_category, training_set
from app.services.review import out_of_fold_path, save_out_of_fold
from app.services.versions import (
    ACTIVATE_POLICIES,
    changes_between,
    decide_activation,
    prune_versions,
    version_summary,
)
from app.services.webhooks import emit

if TYPE_CHECKING:
    from app.ml.multilabel import MultiLabelResult
    from app.ml.select import FitResult
    from app.runtime import Runtime

log = logging.getLogger("nanonet.training")

def check_trainable(model: Model, positions: list[int]) -> None:
    """Raise InvalidInput unless every category has at least one image."""
    counts = Counter(positions)
    empty = [c.name for c in model.categories if counts[c.position] == 0]
    if empty:
        names = ", ".join(repr(name) for name in empty)
        raise InvalidInput(f"Add at least one image to {names} before training.",
                           code="not_enough_images")


def request_training(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                     activate: str = "always") -> Job:
    """Queue a training job (or return the one already queued or running); raises InvalidInput.

    `activate`: "always" (the new version goes live), "if_better" (only if its cross-validated
    accuracy is at least the active version's) or "never".
    """
    if activate not in ACTIVATE_POLICIES:
        raise InvalidInput(f"activate must be one of {', '.join(ACTIVATE_POLICIES)}.",
                           code="invalid_activate")
    model = get_model(session, account=account, model_id=model_id)
    existing = job_service.active_job(session, model_id=model.id, kind="train")
    if existing is not None:
        return existing
    check_trainable(model, [position for _, _, position in training_set(session,
                                                                          model_id=model.id)])
    job = Job(account_id=account.id, model_id=model.id, kind="train",
              params={"activate": activate})
    session.add(job)
    model.state = ModelState.TRAINING
    session.commit()
    # Only after the commit: a worker must never see a job that could still roll back.
    job_service.dispatch(session, runtime.queue, job)
    return job


def run_training_job(runtime: Runtime, job_id: str) -> None:
    """Make the run's version, extract (cached) features, select and evaluate a model, save
    the version and activate it as the job's policy says; then tell the webhooks."""
    from app.ml.curve import summarize
    from app.ml.select import fit_candidate_many, fit_model

    started = time.perf_counter()
    settings = runtime.settings
    backbones = settings.candidate_backbones
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job and job.model_id else None
        if job is None or model is None:
            raise NotFound("The model of this job was deleted.")
        rows = training_set(session, model_id=model.id)
        check_trainable(model, [position for _, _, position in rows])
        labels = [category.name for category in model.categories]
        multi_label = model.kind == MULTI_LABEL
        policy = (job.params or {}).get("activate", "always")
        views = settings.views_for(smallest_category(rows))
        number = _start_version(session, job=job, model=model, labels=labels, rows=rows,
                                settings={"backbones": list(backbones), "views": views,
                                          "seed": 0, "activate": policy})

    def progress(stage: str, fraction: float) -> None:
        with runtime.session_factory() as progress_session:
            job_service.set_progress(progress_session, job_id=job_id, stage=stage,
                                     progress=fraction)

    if not backbones:
        raise InvalidInput("No backbone weights are installed; see README's install step.",
                           code="no_backbone")
    # A multi-label image is one row per category it carries: its features are needed once.
    images = list(dict.fromkeys((image_id, digest) for image_id, digest, _ in rows))
    features = extract(runtime, [digest for _, digest in images], backbones=backbones,
                       views=views,
                       progress=lambda f: progress("extracting_features", 0.02 + 0.68 * f))
    if multi_label:
        _fit_multi_label(runtime, job_id=job_id, number=number, rows=rows, images=images,
                         labels=labels, features=features, views=views, started=started,
                         progress=progress)
        return
    targets = np.array([position for _, _, position in rows])

    progress("selecting_model", 0.7)
    result = fit_model(features, targets, labels, seed=0)
    metrics = VersionMetrics.model_validate(result.metrics) if result.metrics else None
    params = VersionParams.model_validate({
        "l2": result.candidate.l2, "views": views, "metrics_note": result.metrics_note,
        "candidates": result.scores, "unknown_threshold": (result.unknown or {}).get("threshold")})
    train_seconds = time.perf_counter() - started

    progress("saving", 0.8)
    served = _serve_version(runtime, job_id=job_id, result=result, metrics=metrics,
                            params=params, image_ids=[image_id for image_id, _, _ in rows],
                            targets=[int(t) for t in targets], train_seconds=train_seconds)
    # The version answers predictions from here on; the learning curve (150 fits of the chosen
    # head, a third of a training's fitting time) is advice about collecting more images, so it
    # is measured after, and the job ends once it is stored (docs/EXPERIMENTS.md).
    curve = None
    if result.metrics is not None:
        progress("learning_curve", 0.85)
        chosen = features[result.candidate.backbone]

        def fit_predict_many(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            heads = fit_candidate_many(result.candidate, chosen, targets,
                                       [train for train, _ in pairs], n_classes=len(labels))
            return [head.predict_proba(chosen[val, 0])
                    for head, (_, val) in zip(heads, pairs, strict=True)]

        try:
            curve = summarize(targets, None, fit_predict_many=fit_predict_many,
                              accuracy=result.metrics["accuracy"])
        except Exception:  # advice missing, the version served all the same
            log.exception("training.curve.failed job=%s", job_id)
    outcome = _finish(runtime, job_id=job_id, number=number, served=served, curve=curve)
    _after_training(runtime, outcome)


def _fit_multi_label(runtime: Runtime, *, job_id: str, number: int,
                     rows: list[tuple[int, str, int]], images: list[tuple[int, str]],
                     labels: list[str], features: dict[str, np.ndarray], views: int,
                     started: float,
                     progress: Callable[[str, float], None]) -> None:
    """The multi-label job body after extraction: one-vs-rest heads, per-category thresholds
    and nested-CV metrics (app.ml.multilabel), saved and served as a single-label one is."""
    from app.ml.multilabel import select_multilabel

    progress("selecting_model", 0.7)
    row_of = {image_id: row for row, (image_id, _) in enumerate(images)}
    matrix = np.zeros((len(images), len(labels)), dtype=np.int64)
    for image_id, _, position in rows:
        matrix[row_of[image_id], position] = 1
    try:
        result = select_multilabel(features, matrix, labels, seed=0)
    except ValueError as exc:  # too few images for some category, say: the person can act
        raise InvalidInput(f"This multi-label model cannot be trained yet: {exc}",
                           code="not_enough_images") from exc
    metrics = (MultiLabelMetrics.model_validate({"kind": MULTI_LABEL_KIND, **result.metrics})
               if result.metrics else None)
    params = VersionParams.model_validate({
        "l2": result.candidate.l2, "views": views,
        "metrics_note": result.metrics_note, "candidates": [], "unknown_threshold": None})
    progress("saving", 0.9)
    served = _serve_version(runtime, job_id=job_id, result=result, metrics=metrics,
                            params=params, image_ids=[image_id for image_id, _ in images],
                            targets=[], train_seconds=time.perf_counter() - started,
                            kind=MULTI_LABEL)
    _after_training(runtime, _finish(runtime, job_id=job_id, number=number, served=served,
                                     curve=None))


def _start_version(session: Session, *, job: Job, model: Model, labels: list[str],
                   rows: list[tuple[int, str, int]], settings: dict[str, Any]) -> int:
    """Record the run as a `training` version (the one this job made before, on a retry);
    return its number."""
    hashes = [digest for _, digest, _ in rows]
    targets = [position for _, _, position in rows]
    version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    number = version.number if version is not None else (session.scalar(
        select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)) or 0) + 1
    previous = session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id,
                                   ModelVersion.number < number)
        .order_by(ModelVersion.number.desc()).limit(1))
    fields: dict[str, Any] = {
        "status": VersionStatus.TRAINING, "error": None, "labels": labels,
        "image_ids": [image_id for image_id, _, _ in rows], "image_hashes": hashes,
        "image_labels": targets, "params": {"settings": settings},
        "changes": changes_between(previous, labels=labels, hashes=hashes, targets=targets)}
    if version is None:
        version = ModelVersion(model_id=model.id, number=number, job_id=job.id,
                               artifact_path="", train_seconds=0.0, **fields)
        session.add(version)
    else:
        for name, value in fields.items():
            setattr(version, name, value)
    job.result = {"version": version.number}
    session.commit()
    return version.number


@dataclass(frozen=True)
class TrainingOutcome:
    account_id: str
    model_id: str
    version: int
    activated: bool
    active_version: int | None
    previous_version: int | None  # the one active before
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Served:
    """What _serve_version made active, for the job's end to report."""

    activated: bool
    previous_version: int | None  # the one active before
    backbone: str
    head: str
    images: int
    train_seconds: float


def _serve_version(runtime: Runtime, *, job_id: str, result: FitResult | MultiLabelResult,
                   metrics: VersionMetrics | MultiLabelMetrics | None, params: VersionParams,
                   image_ids: list[int], targets: list[int], train_seconds: float,
                   kind: str = "single_label") -> _Served:
    """Save the head and make the version ready (and active, as the job's policy says) in one
    commit, the job still running: from here on it answers predictions."""
    from app.ml.artifacts import save_artifact

    candidate = result.candidate
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job else None
        version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        if job is None or model is None or version is None:
            raise NotFound("The model of this job was deleted.")
        if job.status != JobStatus.RUNNING:  # cancelled or timed out since the last report
            raise job_service.JobLost("This training was ended before it could be saved.")
        relative = f"{model.id}/{version.id}.pt"
        save_artifact(runtime.settings.models_dir / relative, head=result.head, meta={
            "labels": version.labels, "backbone": candidate.backbone, "head": candidate.head,
            "version_id": version.id, "model_id": model.id, "kind": kind,
            "unknown": getattr(result, "unknown", None)})
        if kind != MULTI_LABEL and result.out_of_fold is not None:  # GET /review's input
            save_out_of_fold(out_of_fold_path(runtime.settings.models_dir, relative),
                             image_ids=image_ids, labels=targets,
                             probabilities=result.out_of_fold)
        version.backbone, version.head = candidate.backbone, candidate.head
        version.metrics = metrics.model_dump(mode="json") if metrics else None
        version.params = {**params.model_dump(mode="json"), **(version.params or {})}
        version.artifact_path = relative
        version.train_seconds = round(train_seconds, 3)
        version.status, version.finished_at = VersionStatus.READY, utcnow()
        policy = (job.params or {}).get("activate", "always")
        previous = model.active_version.number if model.active_version else None
        activated, reason = decide_activation(policy, new=version, active=model.active_version)
        version.activation = {"policy": policy, "activated": activated, "reason": reason}
        if activated:
            model.active_version_id = version.id
        # The model stays `training` until the job ends; it predicts with its active version.
        # Fenced: a run the reconciler failed meanwhile (timed out, say) stays failed.
        still_running = session.scalar(select(Job.id).where(
            Job.id == job_id, Job.status == JobStatus.RUNNING).with_for_update())
        if still_running is None:
            session.rollback()
            raise job_service.JobLost("This training was ended before it could be saved.")
        session.commit()
    return _Served(activated=activated, previous_version=previous, backbone=candidate.backbone,
                   head=candidate.head, images=len(image_ids), train_seconds=train_seconds)


def _finish(runtime: Runtime, *, job_id: str, number: int, served: _Served,
            curve: dict[str, Any] | None) -> TrainingOutcome:
    """Store the learning curve in the served version's metrics and end the job succeeded."""
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job else None
        version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        if job is None or model is None or version is None:
            raise NotFound("The model of this job was deleted.")
        measured = VersionMetrics.of(version)
        if curve is not None and measured is not None:
            version.metrics = VersionMetrics.model_validate(
                {**measured.model_dump(mode="json"), "learning_curve": curve}
            ).model_dump(mode="json")
        model.state = ModelState.READY if model.active_version_id else ModelState.CREATED
        if not job_service.mark_succeeded(session, job_id=job_id, result={
                "version_id": version.id, "version": number, "activated": served.activated}):
            session.rollback()
            raise job_service.JobLost("This training was ended before it could be saved.")
        session.commit()
        active = model.active_version.number if model.active_version else None
        outcome = TrainingOutcome(
            account_id=model.account_id, model_id=model.id, version=number,
            activated=served.activated, active_version=active,
            previous_version=served.previous_version, summary=version_summary(version))
    log.info("training.run.succeeded job=%s version=%d backbone=%s head=%s images=%d "
             "seconds=%.1f activated=%s", job_id, number, served.backbone, served.head,
             served.images, served.train_seconds, served.activated)
    return outcome


def _after_training(runtime: Runtime, outcome: TrainingOutcome) -> None:
    """After the commit: prune old versions, then tell the webhooks (never inside the commit,
    never able to fail the training)."""
    with runtime.session_factory() as session:
        try:
            prune_versions(session, runtime, model_id=outcome.model_id,
                           keep=runtime.settings.keep_versions)
        except Exception:  # a prune that fails leaves extra versions, not a failed training
            log.exception("versions.prune.failed model=%s", outcome.model_id)
            session.rollback()
        data = {"model_id": outcome.model_id, "version": outcome.summary,
                "activated": outcome.activated, "active_version": outcome.active_version}
        emit(session, runtime, account_id=outcome.account_id, model_id=outcome.model_id,
             event="training.succeeded", data=data)
        if outcome.activated:
            emit(session, runtime, account_id=outcome.account_id, model_id=outcome.model_id,
                 event="version.activated",
                 data={"model_id": outcome.model_id, "version": outcome.summary,
                       "previous_version": outcome.previous_version,
                       "reason": "training"})


def on_training_failed(runtime: Runtime, job_id: str) -> None:
    """After a training job was marked failed (its version with it): tell the webhooks."""
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.model_id is None:
            return
        version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        emit(session, runtime, account_id=job.account_id, model_id=job.model_id,
             event="training.failed",
             data={"model_id": job.model_id, "job_id": job_id, "error": job.error,
                   "version": version_summary(version) if version is not None else None})
