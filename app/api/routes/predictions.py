from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile

from app.api.deps import AccountDep, RuntimeDep, SessionDep, check_request_size, read_uploads
from app.schemas.predictions import PredictResponse, PredictResult
from app.services.predictions import predict

router = APIRouter(prefix="/models", tags=["predict"])


@router.post("/{model_id}/predict", response_model=PredictResponse,
             dependencies=[Depends(check_request_size)])
def predict_images(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                   files: Annotated[list[UploadFile] | None, File()] = None,
                   reject_unknown: bool = False) -> PredictResponse:
    """Classify each file with the NanoNet's active version; probabilities for every label.

    With `reject_unknown=true`, images unlike every category get the label `unknown`.
    """
    version, results = predict(session, runtime, account=account, model_id=model_id,
                               uploads=read_uploads(files, runtime),
                               reject_unknown=reject_unknown)
    return PredictResponse(model_id=model_id, version=version,
                           results=[PredictResult.model_validate(r) for r in results])
