"""Prediction: the same decode path as training, the version's backbone, its head."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.tables import Account, ModelVersion
from app.errors import Conflict
from app.runtime import Runtime
from app.services.images import Upload, decode_uploads, raise_if_nothing_accepted
from app.services.models import MULTI_LABEL, RESERVED_LABELS, get_model
from app.services.versions import load_head, serving_version

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from app.ml.heads import Head

UNKNOWN_LABEL = "unknown"
assert UNKNOWN_LABEL in RESERVED_LABELS


def predict(session: Session, runtime: Runtime, *, account: Account, model_id: str,
            uploads: list[Upload], reject_unknown: bool = False,
            number: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Return the number of the version that answered (`number`, default the active one) and
    one result per upload: label, probability, all labels.

    With reject_unknown, an image unlike every category is labelled "unknown" (its
    probabilities are still listed); raises Conflict if the version has no calibrated detector,
    and Busy (503) when no inference slot frees up within settings.inference_wait_seconds.

    The database is read first (model, version, and the head from its file) and the session's
    transaction ends before any file is decoded: decoding and the backbone take seconds, and a
    request holding a pooled connection that long lets a burst of predicts take the whole pool
    and stall every other request, /health and sign-in included. Decoding and the backbone
    then run in one of runtime.inference's slots, which bounds the requests holding decoded
    images at once; their backbone passes are merged per backbone by runtime.runner
    (micro-batching, app.ml.batching), so the cores run one pass at a time, not one each.
    """
    model = get_model(session, account=account, model_id=model_id,
                      with_active_version=number is None)
    version = serving_version(session, model=model, number=number)
    head, meta = usable_head(runtime, version, reject_unknown=reject_unknown)
    session.commit()  # ends the read: the connection goes back to the pool before the work
    settings = runtime.settings
    results: list[dict[str, Any]] = []
    accepted: list[tuple[dict[str, Any], PILImage.Image]] = []
    # Announced to the micro-batcher while decoding: a lone request then skips its window.
    announce = getattr(runtime.runner, "preparing", nullcontext)
    with runtime.inference.hold(), announce():
        for result, _, decoded in decode_uploads(uploads, settings, results):
            result["status"] = "ok"
            accepted.append((result, decoded.image))
        raise_if_nothing_accepted(results)
        labelled = label_with(runtime, head, meta, [image for _, image in accepted],
                              reject_unknown=reject_unknown)
    for (result, _), answer in zip(accepted, labelled, strict=True):
        result.update(answer)
    return version.number, results


def usable_head(runtime: Runtime, version: ModelVersion, *,
                reject_unknown: bool = False) -> tuple[Head, dict[str, Any]]:
    """Return the version's head and meta; raises Conflict: a version this server cannot run,
    or reject_unknown without a detector."""
    head, meta = load_head(runtime, version)
    if reject_unknown and meta.get("kind") == MULTI_LABEL:
        raise Conflict("A multi-label model has no `unknown` answer: an image unlike every "
                       "category is predicted with no category (`labels` is empty).",
                       code="unknown_not_calibrated")
    if reject_unknown and meta.get("unknown") is None:
        raise Conflict("This version cannot tell unknown images apart: it was trained with fewer "
                       "than 2 images in some category. Add images and train again.",
                       code="unknown_not_calibrated")
    return head, meta


def label_images(runtime: Runtime, version: ModelVersion, images: list[PILImage.Image], *,
                 reject_unknown: bool = False) -> list[dict[str, Any]]:
    """Return {"label", "probability", "predictions"} per decoded image, from `version`.

    Raises Conflict: a version this server cannot run, or reject_unknown without a detector.
    """
    head, meta = usable_head(runtime, version, reject_unknown=reject_unknown)
    return label_with(runtime, head, meta, images, reject_unknown=reject_unknown)


def _multi_labelled(head: Head, meta: dict[str, Any],
                    probabilities: np.ndarray) -> list[dict[str, Any]]:
    """A multi-label head's answer per image: every category with its probability, threshold
    and whether it is predicted (at or above its threshold); `labels` lists those predicted,
    and `label` is the most probable of them (None when no category is)."""
    from app.ml.multilabel import ranked_predictions

    thresholds = head.thresholds  # type: ignore[union-attr]  # a multi-label head
    position = {name: index for index, name in enumerate(meta["labels"])}
    answers = []
    for ranked in ranked_predictions(probabilities, thresholds, meta["labels"]):
        chosen = [(name, p) for name, p, selected in ranked if selected]
        answers.append({
            "label": chosen[0][0] if chosen else None,
            "probability": round(chosen[0][1], 6) if chosen else None,
            "labels": [name for name, _ in chosen],
            "predictions": [{"label": name, "probability": round(p, 6), "selected": selected,
                             "threshold": round(float(thresholds[position[name]]), 6)}
                            for name, p, selected in ranked]})
    return answers


def label_with(runtime: Runtime, head: Head, meta: dict[str, Any],
               images: list[PILImage.Image], *,
               reject_unknown: bool = False) -> list[dict[str, Any]]:
    """Return {"label", "probability", "predictions"} per decoded image from a loaded head."""
    from app.ml.predict import classify, top_predictions

    # The detector may use another backbone than the head; skip its pass when not asked for.
    used = meta if reject_unknown else {**meta, "unknown": None}
    probabilities, unknown = classify(head, used, images,
                                      batch_size=runtime.settings.feature_batch_size,
                                      runner=runtime.runner)
    if meta.get("kind") == MULTI_LABEL:
        return _multi_labelled(head, meta, probabilities)
    labelled = []
    for predictions, is_unknown in zip(top_predictions(probabilities, meta["labels"]), unknown,
                                       strict=True):
        label, probability = predictions[0]
        labelled.append({
            "label": UNKNOWN_LABEL if is_unknown else label,
            "probability": round(float(probability), 6),
            "predictions": [{"label": name, "probability": round(float(p), 6)}
                            for name, p in predictions]})
    return labelled
