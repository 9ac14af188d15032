"""Backbone features of a NanoNet's images: extracted once per (image, backbone, view), cached."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Account, Image, Job, Model
from app.errors import Unavailable
from app.services import jobs as job_service
from app.services.models import smallest_category, training_set

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from app.runtime import Runtime

log = logging.getLogger("nanonet.features")

Progress = Callable[[float], None]


def request_extraction(session: Session, runtime: Runtime, *, account: Account,
                       model: Model) -> Job | None:
    """Queue a background extraction for the model unless one is already waiting."""
    if not runtime.settings.extract_on_upload:
        return None
    waiting = job_service.queued_job(session, model_id=model.id, kind="extract")
    if waiting is not None:
        return waiting
    job = Job(account_id=account.id, model_id=model.id, kind="extract")
    session.add(job)
    session.commit()
    try:
        job_service.dispatch(session, runtime.queue, job)
    except Unavailable:
        # The images are stored; training extracts whatever is missing, so the upload stands.
        return None
    return job


def image_loader(runtime: Runtime, digest: str) -> Callable[[], PILImage.Image]:
    """Return a loader that decodes a stored image through the one shared decode path."""
    from app.ml.imaging import decode_image

    settings = runtime.settings
    return lambda: decode_image(runtime.blobs.read(digest), max_bytes=settings.max_file_bytes,
                                max_pixels=settings.max_image_pixels).image


def extract(runtime: Runtime, digests: list[str], *, backbones: list[str], views: int,
            progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Return {backbone: (N, views, dim)} for the images, computing only what is not cached.

    Each missing image is decoded once per view for every backbone that lacks it, a batch at a
    time (FeatureCache.views_for); `progress` follows the missing extractions.
    """
    settings = runtime.settings
    items = [(digest, image_loader(runtime, digest)) for digest in digests]
    features = runtime.features.views_for(
        backbones, items, views=range(views), batch_size=settings.feature_batch_size,
        runner=runtime.runner, progress=progress)
    if progress is not None:
        progress(1.0)
    return features


def run_extraction_job(runtime: Runtime, job_id: str) -> None:
    """Job body: cache every candidate backbone's features of every view of a NanoNet's images,
    labelled and unlabelled alike, so training and suggestions find them cached."""
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.model_id is None:
            return
        digests = list(session.scalars(select(Image.sha256).where(Image.model_id == job.model_id)
                                       .order_by(Image.id)))
        # The views the next training will use: it decides them by the smallest category.
        smallest = smallest_category(training_set(session, model_id=job.model_id))
    settings = runtime.settings

    def progress(fraction: float) -> None:
        with runtime.session_factory() as session:
            job_service.set_progress(session, job_id=job_id, stage="extracting_features",
                                     progress=0.99 * fraction)

    views = settings.views_for(smallest)
    extract(runtime, digests, backbones=settings.candidate_backbones, views=views,
            progress=progress)
    with runtime.session_factory() as session:
        job_service.succeed_job(session, job_id=job_id, result={"images": len(digests)})
    log.info("features.extracted job=%s images=%d", job_id, len(digests))
