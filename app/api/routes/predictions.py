from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile

from app.api.deps import AccountDep, RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import limit_predictions
from app.schemas.predictions import PredictResponse, PredictResult
from app.services.predictions import predict

router = APIRouter(prefix="/models", tags=["predict"])


@router.post("/{model_id}/predict", response_model=PredictResponse,
             dependencies=[Depends(limit_predictions)])
def predict_images(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                   files: Annotated[list[UploadFile] | None, File()] = None,
                   reject_unknown: bool = False,
                   version: Annotated[int | None, Query(ge=1)] = None) -> PredictResponse:
    """Classify each file with the model's active version (or `?version=n`); probabilities
    for every label, and the number of the version that answered.

    With `reject_unknown=true`, images unlike every category get the label `unknown`.
    """
    number, results = predict(session, runtime, account=account, model_id=model_id,
                              uploads=read_uploads(files, runtime),
                              reject_unknown=reject_unknown, number=version)
    return PredictResponse(model_id=model_id, version=number,
                           results=[PredictResult.model_validate(r) for r in results])
