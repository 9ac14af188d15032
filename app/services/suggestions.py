"""What to label next: the unlabelled pool ranked by how unsure the active version is of each."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Account, Image, ImageLabel
from app.schemas.images import ImageOut
from app.schemas.suggestions import SuggestionList, SuggestionOut
from app.services.features import extract
from app.services.models import get_model, refuse_multi_label
from app.services.review import duplicate_backbone
from app.services.versions import load_head, serving_version

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nanonet.suggestions")


def suggest(session: Session, runtime: Runtime, *, account: Account, model_id: str,
            limit: int = 20) -> SuggestionList:
    """Return up to `limit` pool images to label next, least certain first, with the reason.

    The active version predicts every pool image; near-copies of an image already suggested are
    left out (the review's duplicate rule). An empty pool gives an empty list. Raises NotFound,
    Conflict (no trained version, or one this release cannot load).
    """
    from app.ml import suggest as ranking

    model = get_model(session, account=account, model_id=model_id)
    refuse_multi_label(model, "Suggesting images to label")
    version = serving_version(session, model=model, number=None)
    rows = list(session.execute(
        select(Image, ImageLabel.category_id)
        .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id == model.id).order_by(Image.id)))
    pool = [image for image, category_id in rows if category_id is None]
    labelled = [image for image, category_id in rows if category_id is not None]
    if not pool:
        return SuggestionList(model_id=model.id, version=version.number, pool_size=0, items=[])

    head, meta = load_head(runtime, version)
    backbone, copies = meta["backbone"], duplicate_backbone(meta["backbone"])
    pool_digests = [image.sha256 for image in pool]
    features = extract(runtime, pool_digests, backbones=sorted({backbone, copies}), views=1)
    # The labelled images are only a centre for the duplicate cosine, as in the review.
    context = extract(runtime, [image.sha256 for image in labelled], backbones=[copies],
                      views=1)[copies][:, 0] if labelled else None
    probabilities = head.predict_proba(features[backbone][:, 0])
    names = list(meta["labels"])
    chosen = ranking.suggestions(probabilities, features[copies][:, 0], limit=limit,
                                 context=context)
    items = [
        SuggestionOut(image_id=pool[s.row].id, file_name=pool[s.row].filename,
                      thumbnail_url=ImageOut.build(pool[s.row], None).thumbnail_url,
                      predicted=names[s.predicted], probability=round(s.probability, 4),
                      margin=round(s.margin, 4), reason=ranking.reason(names, s))
        for s in chosen
    ]
    log.info("suggestions.ranked model=%s version=%d pool=%d suggested=%d", model.id,
             version.number, len(pool), len(items))
    return SuggestionList(model_id=model.id, version=version.number, pool_size=len(pool),
                          items=items)
