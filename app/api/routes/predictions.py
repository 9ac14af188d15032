from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import RuntimeDep, VersionQuery, account_for, read_uploads
from app.api.rate_limits import PREDICTIONS, count
from app.schemas.predictions import PredictResponse, PredictResult
from app.services.predictions import predict

router = APIRouter(prefix="/models", tags=["predict"])


@router.post("/{model_id}/predict", response_model=PredictResponse)
async def predict_images(model_id: str, request: Request, runtime: RuntimeDep,
                         files: Annotated[list[UploadFile] | None, File()] = None,
                         reject_unknown: bool = False,
                         version: VersionQuery = None) -> PredictResponse:
    """Classify each file with the model's active version (or `?version=n`); probabilities
    for every label, and the number of the version that answered.

    With `reject_unknown=true`, images unlike every category get the label `unknown`.
    """
    uploads = read_uploads(files, runtime)

    # The key, the rate count and the prediction in one worker-thread call: as sync
    # dependencies (session, account, rate limit) and a sync route they were five hand-offs
    # between the event loop and the thread pool, about 1 ms of a MobileNetV2 predict's 15
    # (docs/EXPERIMENTS.md, "Serving overhead"). The same checks, in the same order.
    def work() -> tuple[int, list[dict[str, Any]]]:
        with runtime.session_factory() as session:
            account = account_for(request, session)
            count(request, PREDICTIONS, account.id)
            return predict(session, runtime, account=account, model_id=model_id,
                           uploads=uploads, reject_unknown=reject_unknown, number=version)

    number, results = await run_in_threadpool(work)
    return PredictResponse(model_id=model_id, version=number,
                           results=[PredictResult.model_validate(r) for r in results])
