"""Training: queue a job for a model, and the job body that fits and saves a version."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.tables import Account, Job, JobStatus, Model, ModelState, ModelVersion
from app.errors import InvalidInput, NotFound
from app.schemas.metrics import VersionMetrics, VersionParams
from app.services import jobs as job_service
from app.services.features import extract
from app.services.models import get_model, training_set
from app.services.review import out_of_fold_path, save_out_of_fold

if TYPE_CHECKING:
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


def request_training(session: Session, runtime: Runtime, *, account: Account,
                     model_id: str) -> Job:
    """Queue a training job (or return the one already queued or running); raises InvalidInput."""
    model = get_model(session, account=account, model_id=model_id)
    existing = job_service.active_job(session, model_id=model.id, kind="train")
    if existing is not None:
        return existing
    check_trainable(model, [position for _, _, position in training_set(session,
                                                                          model_id=model.id)])
    job = Job(account_id=account.id, model_id=model.id, kind="train")
    session.add(job)
    model.state = ModelState.TRAINING
    session.commit()
    # Only after the commit: a worker must never see a job that could still roll back.
    job_service.dispatch(session, runtime.queue, job)
    return job


def run_training_job(runtime: Runtime, job_id: str) -> None:
    """Extract (cached) features, select and evaluate a model, save the version, activate it."""
    from app.ml.curve import summarize
    from app.ml.select import fit_candidate, fit_model

    started = time.perf_counter()
    settings = runtime.settings
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job and job.model_id else None
        if job is None or model is None:
            raise NotFound("The model of this job was deleted.")
        rows = training_set(session, model_id=model.id)
        check_trainable(model, [position for _, _, position in rows])
        labels = [category.name for category in model.categories]

    def progress(stage: str, fraction: float) -> None:
        with runtime.session_factory() as progress_session:
            job_service.set_progress(progress_session, job_id=job_id, stage=stage,
                                     progress=fraction)

    backbones = settings.candidate_backbones
    if not backbones:
        raise InvalidInput("No backbone weights are installed; see README's install step.",
                           code="no_backbone")
    features = extract(runtime, [digest for _, digest, _ in rows], backbones=backbones,
                       views=settings.views,
                       progress=lambda f: progress("extracting_features", 0.02 + 0.68 * f))
    targets = np.array([position for _, _, position in rows])

    progress("selecting_model", 0.7)
    result = fit_model(features, targets, labels, seed=0)
    metrics = None
    if result.metrics is not None:
        progress("learning_curve", 0.85)
        chosen = features[result.candidate.backbone]

        def fit_predict(train_rows: np.ndarray, val_rows: np.ndarray) -> np.ndarray:
            head = fit_candidate(result.candidate, chosen[train_rows], targets[train_rows],
                                 n_classes=len(labels))
            return head.predict_proba(chosen[val_rows, 0])

        curve = summarize(targets, fit_predict, accuracy=result.metrics["accuracy"])
        metrics = VersionMetrics.model_validate({**result.metrics, "learning_curve": curve})
    params = VersionParams.model_validate({
        "l2": result.candidate.l2, "views": settings.views, "metrics_note": result.metrics_note,
        "candidates": result.scores, "unknown_threshold": (result.unknown or {}).get("threshold")})
    train_seconds = time.perf_counter() - started

    progress("saving", 0.97)
    _save_version(runtime, job_id=job_id, labels=labels, result=result, metrics=metrics,
                  params=params, image_ids=[image_id for image_id, _, _ in rows],
                  targets=[int(t) for t in targets], train_seconds=train_seconds)


def _save_version(runtime: Runtime, *, job_id: str, labels: list[str], result: FitResult,
                  metrics: VersionMetrics | None, params: VersionParams, image_ids: list[int],
                  targets: list[int], train_seconds: float) -> None:
    from app.ml.artifacts import save_artifact

    candidate = result.candidate
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job else None
        if job is None or model is None:
            raise NotFound("The model of this job was deleted.")
        number = (session.scalar(select(func.max(ModelVersion.number))
                                 .where(ModelVersion.model_id == model.id)) or 0) + 1
        version = ModelVersion(
            model_id=model.id, number=number, backbone=candidate.backbone,
            head=candidate.head, labels=labels,
            metrics=metrics.model_dump(mode="json") if metrics else None,
            params=params.model_dump(mode="json"), image_ids=image_ids, artifact_path="",
            train_seconds=round(train_seconds, 3))
        session.add(version)
        session.flush()
        relative = f"{model.id}/{version.id}.pt"
        save_artifact(runtime.settings.models_dir / relative, head=result.head, meta={
            "labels": labels, "backbone": candidate.backbone, "head": candidate.head,
            "version_id": version.id, "model_id": model.id, "unknown": result.unknown})
        if result.out_of_fold is not None:  # what GET /review derives from, with no refit
            save_out_of_fold(out_of_fold_path(runtime.settings.models_dir, relative),
                             image_ids=image_ids, labels=targets,
                             probabilities=result.out_of_fold)
        version.artifact_path = relative
        model.active_version_id = version.id
        model.state = ModelState.READY
        job.status, job.stage, job.progress = JobStatus.SUCCEEDED, "done", 1.0
        job.finished_at = utcnow()
        job.result = {"version_id": version.id, "version": number}
        session.commit()
    log.info("training.run.succeeded job=%s version=%s backbone=%s head=%s images=%d "
             "seconds=%.1f", job_id, version.id, candidate.backbone, candidate.head,
             len(image_ids), train_seconds)
