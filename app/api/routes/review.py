from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AccountDep, RuntimeDep, SessionDep, VersionQuery
from app.schemas.review import KeepRequest, KeepResult, ReviewOut
from app.services.review import keep_images, version_review

router = APIRouter(prefix="/models", tags=["review"])


@router.get("/{model_id}/review", response_model=ReviewOut)
def read_review(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                version: VersionQuery = None) -> ReviewOut:
    """Suspected mislabels, duplicates, hardest images and confusions of a version."""
    return version_review(session, runtime, account=account, model_id=model_id, number=version)


@router.post("/{model_id}/review/keep", response_model=KeepResult)
def keep(model_id: str, body: KeepRequest, session: SessionDep,
         account: AccountDep) -> KeepResult:
    """Keep images as labelled: they are not suspected mislabels again until their label
    changes. All or none: an id not of this model is a 404 and nothing changes."""
    return KeepResult(image_ids=keep_images(session, account=account, model_id=model_id,
                                            image_ids=body.image_ids))
