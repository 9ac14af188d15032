"""Prediction: the same decode path as training, the version's backbone, its head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.tables import Account, ModelVersion
from app.errors import Conflict
from app.runtime import Runtime
from app.services.images import Upload, decode_uploads, raise_if_nothing_accepted
from app.services.models import RESERVED_LABELS, get_model

if TYPE_CHECKING:
    from PIL import Image as PILImage

UNKNOWN_LABEL = "unknown"
assert UNKNOWN_LABEL in RESERVED_LABELS


def predict(session: Session, runtime: Runtime, *, account: Account, model_id: str,
            uploads: list[Upload],
            reject_unknown: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Return the version number and one result per upload: label, probability, all labels.

    With reject_unknown, an image unlike every category is labelled "unknown" (its
    probabilities are still listed); raises Conflict if the version has no calibrated detector.
    """
    model = get_model(session, account=account, model_id=model_id)
    version = session.get(ModelVersion, model.active_version_id) \
        if model.active_version_id else None
    if version is None:
        raise Conflict("This model has no trained version yet; train it first.",
                       code="model_not_trained")
    settings = runtime.settings
    results: list[dict[str, Any]] = []
    accepted: list[tuple[dict[str, Any], PILImage.Image]] = []
    for result, _, decoded in decode_uploads(uploads, settings, results):
        result["status"] = "ok"
        accepted.append((result, decoded.image))
    raise_if_nothing_accepted(results)

    from app.ml.predict import classify, top_predictions

    try:
        head, meta = runtime.heads.get(settings.models_dir / version.artifact_path)
    except ValueError as exc:  # a head kind this release no longer has, or a damaged file
        raise Conflict(f"Version {version.number} cannot be loaded: {exc}. Train the model "
                       "again to make a new version.", code="version_unusable") from exc
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
    for (result, _), predictions, is_unknown in zip(accepted, ranked, unknown, strict=True):
        label, probability = predictions[0]
        result.update(
            label=UNKNOWN_LABEL if is_unknown else label,
            probability=round(float(probability), 6),
            predictions=[{"label": name, "probability": round(float(p), 6)}
                         for name, p in predictions])
    return version.number, results
