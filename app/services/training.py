"""Training: queue a job for a NanoNet, and the job body that fits and saves a version."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.tables import Account, Job, ModelVersion, NanoNet
from app.errors import InvalidInput, NotFound
from app.services import jobs as job_service
from app.services.images import training_set
from app.services.nanonets import get_nanonet

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.training")

FEATURE_CHUNK = 32


def check_trainable(nanonet: NanoNet, positions: list[int]) -> None:
    """Raise InvalidInput unless every category has at least one image."""
    counts = Counter(positions)
    empty = [c.name for c in nanonet.categories if counts[c.position] == 0]
    if empty:
        names = ", ".join(repr(name) for name in empty)
        raise InvalidInput(f"Add at least one image to {names} before training.",
                           code="not_enough_images")


def request_training(session: Session, runtime: Runtime, *, account: Account,
                     nanonet_id: str) -> Job:
    """Queue a training job (or return the one already queued or running); raises InvalidInput."""
    nanonet = get_nanonet(session, account=account, nanonet_id=nanonet_id)
    existing = job_service.active_job(session, nanonet_id=nanonet.id, kind="train")
    if existing is not None:
        return existing
    check_trainable(nanonet, [position for _, _, position in training_set(session,
                                                                          nanonet_id=nanonet.id)])
    job = Job(account_id=account.id, nanonet_id=nanonet.id, kind="train")
    session.add(job)
    nanonet.state = "training"
    session.commit()
    # Only after the commit: a worker must never see a job that could still roll back.
    assert runtime.queue is not None, "the runtime has no job queue"
    runtime.queue.submit(job.id)
    return job


def run_training_job(runtime: Runtime, job_id: str) -> None:
    """Extract (cached) features, fit and evaluate the head, save the version, activate it."""
    from app.ml.evaluate import train_head
    from app.ml.imaging import decode_image

    started = time.perf_counter()
    settings = runtime.settings
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        nanonet = session.get(NanoNet, job.nanonet_id) if job and job.nanonet_id else None
        if job is None or nanonet is None:
            raise NotFound("The NanoNet of this job was deleted.")
        rows = training_set(session, nanonet_id=nanonet.id)
        check_trainable(nanonet, [position for _, _, position in rows])
        labels = [category.name for category in nanonet.categories]
        backbone = settings.default_backbone

    def progress(stage: str, fraction: float) -> None:
        with runtime.session_factory() as progress_session:
            job_service.set_progress(progress_session, job_id=job_id, stage=stage,
                                     progress=fraction)

    def loader(digest: str):  # type: ignore[no-untyped-def]
        return lambda: decode_image(runtime.blobs.read(digest), max_bytes=settings.max_file_bytes,
                                    max_pixels=settings.max_image_pixels).image

    parts = []
    for start in range(0, len(rows), FEATURE_CHUNK):
        progress("extracting_features", 0.05 + 0.8 * start / len(rows))
        chunk = rows[start:start + FEATURE_CHUNK]
        parts.append(runtime.features.features_for(
            backbone, [(digest, loader(digest)) for _, digest, _ in chunk],
            batch_size=settings.feature_batch_size, device=runtime.device))
    features = np.concatenate(parts)
    targets = np.array([position for _, _, position in rows])

    progress("fitting", 0.85)
    result = train_head(features, targets, labels, seed=0)
    train_seconds = time.perf_counter() - started

    progress("saving", 0.95)
    _save_version(runtime, job_id=job_id, backbone=backbone, labels=labels, result=result,
                  image_ids=[image_id for image_id, _, _ in rows], train_seconds=train_seconds)


def _save_version(runtime: Runtime, *, job_id: str, backbone: str, labels: list[str],
                  result, image_ids: list[int], train_seconds: float) -> None:  # type: ignore[no-untyped-def]
    from app.ml.artifacts import save_artifact

    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        nanonet = session.get(NanoNet, job.nanonet_id) if job else None
        if job is None or nanonet is None:
            raise NotFound("The NanoNet of this job was deleted.")
        number = (session.scalar(select(func.max(ModelVersion.number))
                                 .where(ModelVersion.nanonet_id == nanonet.id)) or 0) + 1
        version = ModelVersion(nanonet_id=nanonet.id, number=number, backbone=backbone,
                               head="logistic", labels=labels, metrics=result.metrics,
                               params={"l2": result.l2, "metrics_note": result.metrics_note},
                               image_ids=image_ids, artifact_path="",
                               train_seconds=round(train_seconds, 3))
        session.add(version)
        session.flush()
        relative = f"{nanonet.id}/{version.id}.pt"
        save_artifact(runtime.settings.models_dir / relative, head=result.head, meta={
            "labels": labels, "backbone": backbone, "head": "logistic", "version_id": version.id,
            "nanonet_id": nanonet.id})
        version.artifact_path = relative
        nanonet.active_version_id = version.id
        nanonet.state = "ready"
        job.status, job.stage, job.progress = "succeeded", "done", 1.0
        job.finished_at = utcnow()
        job.result = {"version_id": version.id, "version": number}
        session.commit()
    log.info("training.run.succeeded job=%s version=%s images=%d seconds=%.1f", job_id,
             version.id, len(image_ids), train_seconds)
