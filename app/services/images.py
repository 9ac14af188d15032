"""Training images: decode-check each upload, store it content-addressed, label it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Account, Image, ImageLabel
from app.errors import InvalidInput, NanoNetError
from app.ml.imaging import ImageRejected, decode_image
from app.runtime import Runtime
from app.services.features import request_extraction
from app.services.nanonets import get_nanonet

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


def add_images(session: Session, runtime: Runtime, *, account: Account, nanonet_id: str,
               category: str, uploads: list[Upload]) -> list[dict[str, Any]]:
    """Store and label each acceptable upload; return one result per file, in order."""
    nanonet = get_nanonet(session, account=account, nanonet_id=nanonet_id)
    target = next((c for c in nanonet.categories if c.name == category.strip()), None)
    if target is None:
        names = ", ".join(repr(c.name) for c in nanonet.categories)
        raise InvalidInput(f"No category {category!r} in this NanoNet; it has {names}.",
                           code="unknown_category")
    if not uploads:
        raise InvalidInput("Send at least one image as a `files` part.", code="no_files",
                           status=400)
    settings = runtime.settings
    existing = _labels_by_digest(session, nanonet.id)
    results: list[dict[str, Any]] = []
    for upload in uploads:
        try:
            decoded = decode_image(upload.data, max_bytes=settings.max_file_bytes,
                                   max_pixels=settings.max_image_pixels)
        except ImageRejected as exc:
            results.append(rejection(upload.filename, exc))
            continue
        digest = runtime.blobs.put(upload.data)
        if digest in existing:
            image_id, category_id = existing[digest]
            if category_id == target.id:
                results.append({"file": upload.filename, "status": "duplicate",
                                "image_id": image_id, "sha256": digest})
            else:
                other = next(c.name for c in nanonet.categories if c.id == category_id)
                results.append(rejection(upload.filename, ImageRejected(
                    "label_conflict", f"This image is already in category {other!r}.",
                    status=409)))
            continue
        image = Image(nanonet_id=nanonet.id, sha256=digest, filename=upload.filename[:500],
                      format=decoded.format, width=decoded.width, height=decoded.height,
                      size_bytes=len(upload.data))
        session.add(image)
        session.flush()
        session.add(ImageLabel(image_id=image.id, category_id=target.id))
        existing[digest] = (image.id, target.id)
        results.append({"file": upload.filename, "status": "accepted", "image_id": image.id,
                        "sha256": digest, "width": decoded.width, "height": decoded.height})
    raise_if_nothing_accepted(results)
    session.commit()
    if any(result["status"] == "accepted" for result in results):
        request_extraction(session, runtime, account=account, nanonet=nanonet)
    log.info("images.added model=%s category=%s accepted=%d of %d", nanonet.id, target.name,
             sum(r["status"] == "accepted" for r in results), len(results))
    return results


def _labels_by_digest(session: Session, nanonet_id: str) -> dict[str, tuple[int, int]]:
    rows = session.execute(
        select(Image.sha256, Image.id, ImageLabel.category_id)
        .join(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.nanonet_id == nanonet_id)
    )
    return {digest: (image_id, category_id) for digest, image_id, category_id in rows}
