"""Batch prediction: many files, or pool images, labelled by a job; results as JSON or CSV.

A batch is a Job of kind "batch_predict". Its params fix, at request time, the version (number
and id), `reject_unknown` and the inputs in order: an uploaded file kept under
data/batches/<job id>/inputs/, a pool image read from the blob store, or a file refused at
request time (with its error). The job writes data/batches/<job id>/results.json.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import new_id
from app.db.tables import Account, Image, ImageLabel, Job, JobStatus, Model, ModelVersion
from app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from app.runtime import Runtime
from app.schemas.batches import MAX_BATCH_IMAGES
from app.services import jobs as job_service
from app.services import webhooks
from app.services.images import Upload, decode_uploads, raise_if_nothing_accepted
from app.services.models import get_model
from app.services.predictions import label_images
from app.services.versions import load_head, serving_version
from app.storage import atomic_write

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger("nanonet.batches")

BATCH_JOB = "batch_predict"
FINISHED_EVENT = "batch_prediction.finished"
# Rows per IN (...) list: far below SQLite's bound-parameter limit.
_ID_CHUNK = 500
CSV_FIXED_COLUMNS = ("file", "image_id", "label", "probability")
# A cell starting with one of these is a formula to a spreadsheet; names come from users.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def batch_dir(settings: Settings, batch_id: str) -> Path:
    """Where a batch keeps its input files while it runs, and its results after."""
    return settings.data_dir / "batches" / batch_id


def request_batch(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                  uploads: list[Upload] | None = None, image_ids: list[int] | None = None,
                  pool: bool = False, number: int | None = None,
                  reject_unknown: bool = False) -> tuple[Job, list[dict[str, Any]]]:
    """Queue a batch of uploaded files, or of pool images (`image_ids`, or the whole `pool`),
    labelled by version `number` (default: the active one); return the job and the files
    refused now ({"index", "file", "error"}).

    Raises NotFound (the model, a version, image ids: named), Conflict (no ready version,
    reject_unknown without a detector), InvalidInput (labelled images, an empty pool, no
    input), PayloadTooLarge (too many images), the uploads' own 4xx when every file is refused.
    """
    model = get_model(session, account=account, model_id=model_id)
    version = serving_version(session, model=model, number=number)
    _check_usable(runtime, version, reject_unknown=reject_unknown)
    batch_id = new_id()
    folder = batch_dir(runtime.settings, batch_id)
    rejected: list[dict[str, Any]] = []
    if image_ids is not None or pool:
        inputs = _pool_inputs(session, model, image_ids)
        files: list[tuple[Path, Upload]] = []
    elif uploads:
        inputs, files, rejected = _file_inputs(uploads, runtime.settings, folder)
    else:
        raise InvalidInput('Send images as `files` parts, or a JSON body {"image_ids": [...]} '
                           'or {"pool": true} naming images of the unlabelled pool.',
                           code="no_files", status=400)
    job = Job(id=batch_id, account_id=account.id, model_id=model.id, kind=BATCH_JOB,
              params={"version": version.number, "version_id": version.id,
                      "reject_unknown": reject_unknown, "count": len(inputs), "inputs": inputs})
    try:
        for path, upload in files:
            upload.save(path)
        session.add(job)
        session.commit()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # Only after the commit: a worker must never see a job that could still roll back.
    try:
        job_service.dispatch(session, runtime.queue, job)
    except Unavailable:  # the job is failed: its files are not needed
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("batches.queued batch=%s model=%s version=%d inputs=%d rejected=%d", batch_id,
             model.id, version.number, len(inputs), len(rejected))
    return job, rejected


def refused_inputs(job: Job) -> list[dict[str, Any]]:
    """The files refused when the batch was sent, with their errors: known before the batch
    has results (they are kept in its params with the inputs)."""
    inputs: list[dict[str, Any]] = (job.params or {}).get("inputs", [])
    return [{"file": item["file"], "error": item["error"]} for item in inputs if "error" in item]


def _check_usable(runtime: Runtime, version: ModelVersion, *, reject_unknown: bool) -> None:
    """Raise now, not in the job, the Conflicts label_images would raise for this version."""
    _, meta = load_head(runtime, version)
    if reject_unknown and meta.get("unknown") is None:
        raise Conflict("This version cannot tell unknown images apart: it was trained with fewer "
                       "than 2 images in some category. Add images and train again, or send "
                       "the batch without reject_unknown.", code="unknown_not_calibrated")


def _file_inputs(uploads: list[Upload], settings: Settings, folder: Path) -> tuple[
        list[dict[str, Any]], list[tuple[Path, Upload]], list[dict[str, Any]]]:
    """Decode each upload now; return (inputs, the (path, upload) to keep, the rejections)."""
    results: list[dict[str, Any]] = []
    kept: dict[int, Upload] = {}
    for result, upload, _ in decode_uploads(uploads, settings, results):
        kept[len(results) - 1] = upload
        result["status"] = "ok"
    raise_if_nothing_accepted(results)
    inputs: list[dict[str, Any]] = []
    files: list[tuple[Path, Upload]] = []
    rejected: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        if index in kept:
            name = f"inputs/{index:05d}"
            inputs.append({"file": result["file"], "path": name})
            files.append((folder / name, kept[index]))
        else:
            inputs.append({"file": result["file"], "error": result["error"]})
            rejected.append({"index": index, "file": result["file"], "error": result["error"]})
    return inputs, files, rejected


def _pool_inputs(session: Session, model: Model,
                 image_ids: list[int] | None) -> list[dict[str, Any]]:
    """Return an input per pool image, in the order asked (by id for the whole pool).

    Raises NotFound naming ids that are not this model's, InvalidInput naming labelled ones.
    """
    if image_ids is None:
        total = session.scalar(
            select(func.count()).select_from(Image)
            .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
            .where(Image.model_id == model.id, ImageLabel.image_id.is_(None))) or 0
        if total > MAX_BATCH_IMAGES:
            raise PayloadTooLarge(f"The unlabelled pool has {total} images; a batch takes at most "
                                  f"{MAX_BATCH_IMAGES}. Name them with image_ids, a part at once.",
                                  code="too_many_images")
        rows = list(session.scalars(
            select(Image).outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
            .where(Image.model_id == model.id, ImageLabel.image_id.is_(None))
            .order_by(Image.id)))
        if not rows:
            raise InvalidInput("The unlabelled pool of this model is empty.", code="pool_empty")
        return [_pool_input(image) for image in rows]
    if len(image_ids) > MAX_BATCH_IMAGES:
        raise PayloadTooLarge(f"A batch takes at most {MAX_BATCH_IMAGES} images; this one names "
                              f"{len(image_ids)}. Send them in several batches.",
                              code="too_many_images")
    wanted = sorted(set(image_ids))
    found: dict[int, Image] = {}
    labelled: set[int] = set()
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start:start + _ID_CHUNK]
        found.update((image.id, image) for image in session.scalars(
            select(Image).where(Image.model_id == model.id, Image.id.in_(chunk))))
        labelled.update(session.scalars(
            select(ImageLabel.image_id).where(ImageLabel.image_id.in_(chunk))))
    missing = [image_id for image_id in wanted if image_id not in found]
    if missing:
        raise NotFound(f"No image {_listed(missing)} in this model; nothing was queued.",
                       code="image_not_found", details={"missing": missing})
    in_categories = [image_id for image_id in wanted if image_id in labelled]
    if in_categories:
        raise InvalidInput(f"Image {_listed(in_categories)} is labelled, not in the unlabelled "
                           "pool; a batch labels pool images (send labelled ones as files).",
                           code="image_labelled", details={"labelled": in_categories})
    return [_pool_input(found[image_id]) for image_id in image_ids]


def _pool_input(image: Image) -> dict[str, Any]:
    return {"file": image.filename, "image_id": image.id, "sha256": image.sha256}


def _listed(ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(image_id) for image_id in ids[:shown])
    return text + (f" (and {len(ids) - shown} more)" if len(ids) > shown else "")


def run_batch_job(runtime: Runtime, job_id: str) -> None:
    """Job handler of kind "batch_predict": label the inputs a backbone batch at a time, write
    results.json, drop the kept files, succeed; then tell the webhooks. A failure (cancelled
    and timed out included) is the runner's to record, which then calls on_batch_failed.

    Redoes everything when run again after a crash: the files go only after the commit.
    """
    finished = _label_batch(runtime, job_id)
    if finished is not None:
        _emit(runtime, finished, status=JobStatus.SUCCEEDED)


def _label_batch(runtime: Runtime, job_id: str) -> Job | None:
    """Do the work; return the succeeded job, or None when its model went meanwhile."""
    settings = runtime.settings
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.model_id is None or job.params is None:
            raise NotFound("The model of this batch was deleted.", code="model_not_found")
        params = job.params
        version = session.get(ModelVersion, params["version_id"])
    if version is None or version.model_id != job.model_id:
        raise Conflict(f"Version {params['version']} was deleted before this batch ran; start "
                       "the batch again with a ready version.", code="version_deleted")
    folder = batch_dir(settings, job_id)
    inputs: list[dict[str, Any]] = params["inputs"]
    results: list[dict[str, Any] | None] = [
        _rejected(item, item["error"]) if "error" in item else None for item in inputs]
    pending = [index for index, result in enumerate(results) if result is None]
    step = settings.feature_batch_size
    for start in range(0, len(pending), step):
        chunk = pending[start:start + step]
        uploads: list[tuple[int, Upload]] = []
        for index in chunk:
            data = _input_bytes(runtime, folder, inputs[index])
            if data is None:
                results[index] = _rejected(inputs[index], {
                    "code": "image_not_found", "http_status": 404,
                    "message": f"Image {inputs[index]['image_id']} was deleted before the "
                               "batch ran."})
            else:
                uploads.append((index, Upload.of_bytes(inputs[index]["file"], data)))
        if uploads:
            _label_chunk(runtime, version, inputs, uploads, results,
                         reject_unknown=params["reject_unknown"])
        with runtime.session_factory() as session:
            job_service.set_progress(session, job_id=job_id, stage="predicting",
                                     progress=0.98 * (start + len(chunk)) / len(pending))
    done = [result for result in results if result is not None]
    assert len(done) == len(inputs)
    atomic_write(folder / "results.json", json.dumps({
        "batch_id": job_id, "model_id": job.model_id, "version": params["version"],
        "labels": list(version.labels), "reject_unknown": params["reject_unknown"],
        "results": done}).encode())
    summary = {"count": len(done), "labelled": sum(r["status"] == "ok" for r in done),
               "rejected": sum(r["status"] == "rejected" for r in done),
               "labels": dict(Counter(r["label"] for r in done
                                      if r["status"] == "ok" and r["label"] is not None))}
    with runtime.session_factory() as session:
        succeeded = job_service.succeed_job(session, job_id=job_id, result=summary)
        finished = session.get(Job, job_id)
    if finished is None:  # the model was deleted while the batch ran: leave nothing behind
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if not succeeded:  # cancelled or timed out since the last report
        raise job_service.JobLost("This batch was ended before its results were recorded.")
    shutil.rmtree(folder / "inputs", ignore_errors=True)
    log.info("batches.run.succeeded batch=%s version=%d inputs=%d", job_id, params["version"],
             len(done))
    return finished


def _label_chunk(runtime: Runtime, version: ModelVersion, inputs: list[dict[str, Any]],
                 uploads: list[tuple[int, Upload]], results: list[dict[str, Any] | None], *,
                 reject_unknown: bool) -> None:
    """Decode the uploads, (input index, upload) pairs, and fill in their results."""
    decoded: list[dict[str, Any]] = []
    images: dict[int, PILImage.Image] = {}
    for _, _, image in decode_uploads([upload for _, upload in uploads], runtime.settings,
                                      decoded):
        images[uploads[len(decoded) - 1][0]] = image.image
    for (index, _), result in zip(uploads, decoded, strict=True):
        if index not in images:  # a pool image refused now (files were decoded at request time)
            results[index] = _rejected(inputs[index], result["error"])
    accepted = [index for index, _ in uploads if index in images]
    if not accepted:
        return
    labelled = label_images(runtime, version, [images[index] for index in accepted],
                            reject_unknown=reject_unknown)
    for index, answer in zip(accepted, labelled, strict=True):
        results[index] = {"file": inputs[index]["file"], "image_id": inputs[index].get("image_id"),
                          "status": "ok", **answer}


def _input_bytes(runtime: Runtime, folder: Path, item: dict[str, Any]) -> bytes | None:
    """The bytes of one input; None for a pool image deleted since the request."""
    if "path" in item:
        try:
            return (folder / item["path"]).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound("The files of this batch are gone; its model was deleted.",
                           code="batch_files_missing") from exc
    try:
        return runtime.blobs.read(item["sha256"])
    except FileNotFoundError:
        return None


def _rejected(item: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    return {"file": item["file"], "image_id": item.get("image_id"), "status": "rejected",
            "error": error}


def on_batch_failed(runtime: Runtime, job_id: str) -> None:
    """After a batch job ended failed, whoever ended it (its run, a cancel, the reconciler):
    drop its files and tell the webhooks."""
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
    shutil.rmtree(batch_dir(runtime.settings, job_id), ignore_errors=True)
    if job is not None and job.status == JobStatus.FAILED:
        _emit(runtime, job, status=JobStatus.FAILED)


def _emit(runtime: Runtime, job: Job, *, status: str) -> None:
    params = job.params or {}
    data: dict[str, Any] = {"batch_id": job.id, "model_id": job.model_id, "status": status,
                            "version": params.get("version"), "count": params.get("count")}
    if status == JobStatus.SUCCEEDED:
        data.update(summary=job.result,
                    url=f"/api/v1/models/{job.model_id}/batch-predictions/{job.id}")
    else:
        data["error"] = job.error
    with runtime.session_factory() as session:
        webhooks.emit(session, runtime, account_id=job.account_id, model_id=job.model_id,
                      event=FINISHED_EVENT, data=data)


def get_batch(session: Session, *, account: Account, model_id: str, batch_id: str) -> Job:
    """Return the batch of the account's model; raises NotFound for a missing or foreign one."""
    model = get_model(session, account=account, model_id=model_id)
    job = session.get(Job, batch_id)
    if job is None or job.kind != BATCH_JOB or job.model_id != model.id:
        raise NotFound(f"No batch with id {batch_id!r} in this model.", code="batch_not_found")
    return job


def list_batches(session: Session, *, account: Account, model_id: str, page: int,
                 per_page: int) -> tuple[list[Job], int]:
    """Return (one page of the model's batches, newest first; how many in all); raises
    NotFound."""
    model = get_model(session, account=account, model_id=model_id)
    where = (Job.model_id == model.id, Job.kind == BATCH_JOB)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    jobs = list(session.scalars(select(Job).where(*where)
                                .order_by(Job.created_at.desc(), Job.id.desc())
                                .offset((page - 1) * per_page).limit(per_page)))
    return jobs, total


def batch_results(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                  batch_id: str, page: int,
                  per_page: int) -> tuple[Job, list[dict[str, Any]] | None]:
    """Return the batch and, once it has succeeded, one page of its results in input order
    (None before). Raises NotFound."""
    job = get_batch(session, account=account, model_id=model_id, batch_id=batch_id)
    if job.status != JobStatus.SUCCEEDED:
        return job, None
    results = _stored_results(runtime, job)["results"]
    return job, results[(page - 1) * per_page:page * per_page]


def results_csv(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                batch_id: str) -> str:
    """Return the results as CSV: file, image_id, label, probability, one probability column
    per category of the version, then error (the code, for a refused input).

    Raises NotFound, Conflict (batch_not_finished, batch_failed).
    """
    job = get_batch(session, account=account, model_id=model_id, batch_id=batch_id)
    if job.status == JobStatus.FAILED:
        raise Conflict(f"This batch failed, so it has no results: {job.error}",
                       code="batch_failed")
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"This batch is {job.status} ({round(100 * job.progress)}% done); "
                       "fetch its results once it has succeeded.", code="batch_not_finished",
                       details={"status": job.status, "progress": round(job.progress, 4)})
    stored = _stored_results(runtime, job)
    labels: list[str] = stored["labels"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*CSV_FIXED_COLUMNS, *(_cell(label) for label in labels), "error"])
    for result in stored["results"]:
        image_id = "" if result["image_id"] is None else str(result["image_id"])
        if result["status"] != "ok":
            writer.writerow([_cell(result["file"]), image_id, "", "", *([""] * len(labels)),
                             result["error"]["code"]])
            continue
        probabilities = {p["label"]: p["probability"] for p in result["predictions"]}
        writer.writerow([_cell(result["file"]), image_id, result["label"],
                         _number(result["probability"]),
                         *(_number(probabilities[label]) for label in labels), ""])
    return out.getvalue()


def _stored_results(runtime: Runtime, job: Job) -> dict[str, Any]:
    try:
        data = (batch_dir(runtime.settings, job.id) / "results.json").read_bytes()
    except FileNotFoundError as exc:
        raise NotFound("The results of this batch are no longer on the server.",
                       code="batch_results_missing") from exc
    stored: dict[str, Any] = json.loads(data)
    return stored


def _number(value: float) -> str:
    return format(value, ".6f")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
