"""Prediction: the same decode path as training, the version's backbone, its head."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.tables import Account, ModelVersion
from app.errors import Conflict, InvalidInput
from app.ml.imaging import ImageRejected, decode_image
from app.runtime import Runtime
from app.services.images import Upload, raise_if_nothing_accepted, rejection
from app.services.nanonets import RESERVED_LABELS, get_nanonet

UNKNOWN_LABEL = "unknown"
assert UNKNOWN_LABEL in RESERVED_LABELS


def predict(session: Session, runtime: Runtime, *, account: Account, nanonet_id: str,
            uploads: list[Upload], reject_unknown: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Return the version number and one result per upload: label, probability, all labels.

    With reject_unknown, an image unlike every category is labelled "unknown" (its
    probabilities are still listed); raises Conflict if the version has no calibrated detector.
    """
    nanonet = get_nanonet(session, account=account, nanonet_id=nanonet_id)
    version = session.get(ModelVersion, nanonet.active_version_id) \
        if nanonet.active_version_id else None
    if version is None:
        raise Conflict("This NanoNet has no trained version yet; train it first.",
                       code="model_not_trained")
    if not uploads:
        raise InvalidInput("Send at least one image as a `files` part.", code="no_files", status=400)
    settings = runtime.settings
    results: list[dict[str, Any]] = []
    accepted: list[tuple[int, Any]] = []
    for upload in uploads:
        try:
            decoded = decode_image(upload.data, max_bytes=settings.max_file_bytes,
                                   max_pixels=settings.max_image_pixels)
        except ImageRejected as exc:
            results.append(rejection(upload.filename, exc))
            continue
        accepted.append((len(results), decoded.image))
        results.append({"file": upload.filename, "status": "ok"})
    raise_if_nothing_accepted(results)

    from app.ml.predict import classify, top_predictions

    head, meta = runtime.heads.get(settings.models_dir / version.artifact_path)
    if reject_unknown and meta.get("unknown") is None:
        raise Conflict("This version cannot tell unknown images apart: it was trained with fewer "
                       "than 2 images in some category. Add images and train again.",
                       code="unknown_not_calibrated")
    # The detector may use another backbone than the head; skip its pass when not asked for.
    used = meta if reject_unknown else {**meta, "unknown": None}
    probabilities, unknown = classify(head, used, [image for _, image in accepted],
                                      batch_size=settings.feature_batch_size,
                                      device=runtime.device)
    ranked = top_predictions(probabilities, meta["labels"])
    for (index, _), predictions, is_unknown in zip(accepted, ranked, unknown, strict=True):
        label, probability = predictions[0]
        results[index].update(
            label=UNKNOWN_LABEL if is_unknown else label,
            probability=round(float(probability), 6),
            predictions=[{"label": name, "probability": round(float(p), 6)}
                         for name, p in predictions])
    return version.number, results
