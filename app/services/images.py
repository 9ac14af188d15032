"""Training images: decode-check each upload, store it content-addressed, label it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.tables import Account, Image, ImageLabel
from app.errors import InvalidInput, NanoNetError
from app.ml.imaging import DecodedImage, ImageRejected, decode_image
from app.runtime import Runtime
from app.services.features import request_extraction
from app.services.models import get_model

log = logging.getLogger("nanonet.images")


@dataclass(frozen=True)
class Upload:
    """One file of a multipart request; `data` holds at most max_file_bytes + 1 bytes."""

    filename: str
    data: bytes


def rejection(filename: str, exc: ImageRejected) -> dict[str, Any]:
    return {"file": filename, "status": "rejected",
            "error": {"code": exc.code, "message": exc.message, "http_status": exc.status}}


def raise_if_nothing_accepted(results: list[dict[str, Any]]) -> None:
    """A batch where every file was refused is a 4xx, with each file's reason in details."""
    errors = [result["error"] for result in results if result["status"] == "rejected"]
    if not results or len(errors) < len(results):
        return
    statuses = {error["http_status"] for error in errors}
    codes = {error["code"] for error in errors}
    if len(errors) == 1:
        raise NanoNetError(errors[0]["message"], code=errors[0]["code"],
                           status=errors[0]["http_status"], details={"results": results})
    raise NanoNetError(
        f"None of the {len(errors)} files could be used as an image.",
        code=codes.pop() if len(codes) == 1 else "no_acceptable_file",
        status=statuses.pop() if len(statuses) == 1 else 422,
        details={"results": results},
    )


def decode_uploads(uploads: list[Upload], settings: Settings,
                   results: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Upload,
                                                                   DecodedImage]]:
    """Decode each upload through the one decode path, appending one result per file to `results`.

    Yields (its result, to be completed by the caller; the upload; the decoded image) for each
    file that decodes; a file that does not gets its rejection. Raises InvalidInput for none.
    """
    if not uploads:
        raise InvalidInput("Send at least one image as a `files` part.", code="no_files",
                           status=400)
    for upload in uploads:
        try:
            decoded = decode_image(upload.data, max_bytes=settings.max_file_bytes,
                                   max_pixels=settings.max_image_pixels)
        except ImageRejected as exc:
            results.append(rejection(upload.filename, exc))
            continue
        result: dict[str, Any] = {"file": upload.filename}
        results.append(result)
        yield result, upload, decoded


def add_images(session: Session, runtime: Runtime, *, account: Account, model_id: str,
               category: str, uploads: list[Upload]) -> list[dict[str, Any]]:
    """Store and label each acceptable upload; return one result per file, in order.

    Two requests adding the same image at once both read it as new; the second to commit hits
    the (model, sha256) unique key, rolls back and runs again, now finding the image there.
    """
    try:
        return _add_images(session, runtime, account=account, model_id=model_id,
                           category=category, uploads=uploads)
    except IntegrityError:
        session.rollback()
        return _add_images(session, runtime, account=account, model_id=model_id,
                           category=category, uploads=uploads)


def _add_images(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                category: str, uploads: list[Upload]) -> list[dict[str, Any]]:
    model = get_model(session, account=account, model_id=model_id)
    target = next((c for c in model.categories if c.name == category.strip()), None)
    if target is None:
        names = ", ".join(repr(c.name) for c in model.categories)
        raise InvalidInput(f"No category {category!r} in this model; it has {names}.",
                           code="unknown_category")
    existing = _labels_by_digest(session, model.id)
    results: list[dict[str, Any]] = []
    added: list[tuple[dict[str, Any], Image]] = []
    for result, upload, decoded in decode_uploads(uploads, runtime.settings, results):
        digest = runtime.blobs.put(upload.data)
        if digest in existing:
            image_id, category_id = existing[digest]
            if category_id == target.id:
                result.update(status="duplicate", image_id=image_id, sha256=digest)
            else:
                other = next(c.name for c in model.categories if c.id == category_id)
                result.update(rejection(upload.filename, ImageRejected(
                    "label_conflict", f"This image is already in category {other!r}.",
                    status=409)))
            continue
        image = Image(model_id=model.id, sha256=digest, filename=upload.filename[:500],
                      format=decoded.format, width=decoded.width, height=decoded.height,
                      size_bytes=len(upload.data))
        existing[digest] = (None, target.id)  # a repeat later in this batch is a duplicate
        result.update(status="accepted", sha256=digest, width=decoded.width,
                      height=decoded.height)
        added.append((result, image))
    raise_if_nothing_accepted(results)
    # Rows are written only now: decoding is the slow part, and SQLite's write lock, taken by
    # the first flush, should not be held while it runs.
    session.add_all([image for _, image in added])
    session.flush()
    session.add_all([ImageLabel(image_id=image.id, category_id=target.id) for _, image in added])
    session.commit()
    ids = {image.sha256: image.id for _, image in added}
    for result in results:
        if result["status"] in ("accepted", "duplicate") and result.get("image_id") is None:
            result["image_id"] = ids[result["sha256"]]
    if added:
        request_extraction(session, runtime, account=account, model=model)
    log.info("images.added model=%s category=%s accepted=%d of %d", model.id, target.name,
             len(added), len(results))
    return results


def _labels_by_digest(session: Session, model_id: str) -> dict[str, tuple[int | None, int]]:
    rows = session.execute(
        select(Image.sha256, Image.id, ImageLabel.category_id)
        .join(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id == model_id)
    )
    return {digest: (image_id, category_id) for digest, image_id, category_id in rows}
